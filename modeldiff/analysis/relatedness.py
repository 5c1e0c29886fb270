"""White-box relatedness of two models' weights: are they derived from one another, or trained independently?

The null hypothesis is that the two were trained independently. Initialisation and training treat some relabellings
of a transformer's weights alike and leave its function unchanged: the hidden units of an MLP block (rows of the
up/gate projections with the matching columns of the down projection), the attention heads of a layer (the head
blocks of q, k, v with the matching part of o; key/value heads with their groups of query heads), and the residual
(model) axis, permuted jointly across every tensor that reads or writes it. Under the null B's weights are then as
likely as any such image of them, so comparing A with randomly relabelled images of B gives exact p-values (after Zhu
et al. 2025, "Independence Tests for Language Models"). Token rows, position rows and the RoPE-frequency rows of q/k
are not symmetries (training gives each its own meaning) and are never permuted.

Both independence tests draw their null from random permutations of B's residual axis, with B's unit and head labels
as they are (given those, the residual labels are still uniform under the null):
- **Centred cosine**: T = Σ over tensors with a residual axis of the centred cosine between A's and B's tensor. T is
  linear in the residual permutation r, T(r) = Σ_j C[j, r(j)], so a null draw costs O(d). The Monte Carlo p-value is
  exact; when no draw reaches T it is refined by a Chernoff bound on the permutation distribution's tail (with the
  permanent of e^{λC} bounded through Sinkhorn scaling), which lets a copy's p-value fall towards 1/d!. A copier who
  permutes units or heads scrambles the tensors that carry them, not the embeddings, norms and residual biases.
- **Hidden-unit matching**: in each MLP block, A's units matched to B's once by input weights and once by output
  weights (linear assignment on cosine similarity); T = mean over blocks of the two matchings' Spearman correlation.
  Whatever permutation was applied to B's units, a copy's two matchings agree. Independent models' matchings agree
  as much as each model's input and output weights are aligned with each other, which the null keeps (the residual
  permutation acts on both weight sets): Monte Carlo p-value, floor 1/(1 + permutations).
`p_value` = min(1, 2 · the smaller of the two) (Bonferroni: either test may decide). On big models each test looks
at a subset (rows of each tensor, units of each block, residual coordinates) chosen without looking at B, so the
cost stays bounded and the p-values stay exact. Not covered: a copy whose residual axis was relabelled too. That is
the null's own relabelling, so such a copy looks independent here; catching it would need B's residual axis aligned
to A's first (through the embeddings, whose token rows both share), with some other null.

Once related, how: B's hidden units and heads are first aligned to A's (matched on input and output weights
together), then δ = W_B − W_A per tensor. A weight-noise copy's δ is i.i.d. noise, whose top singular value sits at
the Marchenko–Pastur edge, s_max ≈ τ(√m + √n); a fine-tune's δ is structured (gradient updates are low-rank), with
s_max well above it. `noise_structure` tests δ against simulated Gaussian matrices of each shape.

Weight energy: `direction_z` = Σ(|W_B|² − |W_A|²) in units of the standard deviation that difference would have if δ
were noise independent of the weights. Independent noise adds energy, so *for a pair whose δ is noise-like* z ≫ 0
says B carries the extra noise (B is the copy) and z ≪ 0 says A does. Otherwise it only says which model has more
weight energy: fine-tunes, weight decay and pruning change energy too, and of two noisy copies of a third model it
names the noisier one. Visible once σ_rel·√(weights) ≫ 1.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp
from scipy.stats import chi2

FLOOR_P = 1e-300  # p-values are floored here so Fisher's sum stays finite
RESIDUAL, UNITS, HEADS = "residual", "units", "heads"


# ---- the symmetries of a trained network ----


@dataclass(frozen=True)
class Axis:
    """What a tensor axis indexes."""

    kind: str  # RESIDUAL, UNITS or HEADS
    block: str = ""  # the MLP or attention block whose units or heads it indexes
    split: int = 1  # heads: consecutive groups of head blocks along the axis (GPT-2's c_attn holds q, k and v)
    kv: bool = False  # heads: key/value heads (each shared by a group of query heads)


# (parameter-name pattern, {axis: (kind, split, kv)}); the pattern's group `b` names the block
_R = (RESIDUAL, 1, False)
_U = (UNITS, 1, False)
FAMILIES = {
    "gpt2": [
        (r"(^|\.)(wte|wpe|lm_head)\.weight$", {1: _R}),
        (r"(^|\.)ln_(1|2|f)\.(weight|bias)$", {0: _R}),
        (r"^(?P<b>.+\.attn)\.c_attn\.weight$", {0: _R, 1: (HEADS, 3, False)}),
        (r"^(?P<b>.+\.attn)\.c_attn\.bias$", {0: (HEADS, 3, False)}),
        (r"^(?P<b>.+\.attn)\.c_proj\.weight$", {0: (HEADS, 1, False), 1: _R}),
        (r"^(?P<b>.+\.mlp)\.c_fc\.weight$", {0: _R, 1: _U}),
        (r"^(?P<b>.+\.mlp)\.c_fc\.bias$", {0: _U}),
        (r"^(?P<b>.+\.mlp)\.c_proj\.weight$", {0: _U, 1: _R}),
        (r"\.(attn|mlp)\.c_proj\.bias$", {0: _R}),
    ],
    "llama": [
        (r"(^|\.)(embed_tokens|lm_head)\.weight$", {1: _R}),
        (r"(^|\.)(input_layernorm|post_attention_layernorm|norm)\.weight$", {0: _R}),
        (r"^(?P<b>.+\.self_attn)\.q_proj\.weight$", {0: (HEADS, 1, False), 1: _R}),
        (r"^(?P<b>.+\.self_attn)\.q_proj\.bias$", {0: (HEADS, 1, False)}),
        (r"^(?P<b>.+\.self_attn)\.[kv]_proj\.weight$", {0: (HEADS, 1, True), 1: _R}),
        (r"^(?P<b>.+\.self_attn)\.[kv]_proj\.bias$", {0: (HEADS, 1, True)}),
        (r"^(?P<b>.+\.self_attn)\.o_proj\.weight$", {0: _R, 1: (HEADS, 1, False)}),
        (r"\.self_attn\.o_proj\.bias$", {0: _R}),
        (r"^(?P<b>.+\.mlp)\.(gate|up)_proj\.weight$", {0: _U, 1: _R}),
        (r"^(?P<b>.+\.mlp)\.(gate|up)_proj\.bias$", {0: _U}),
        (r"^(?P<b>.+\.mlp)\.down_proj\.weight$", {0: _R, 1: _U}),
        (r"\.mlp\.down_proj\.bias$", {0: _R}),
    ],
}
FAMILY_MARKERS = {"gpt2": ".attn.c_attn.weight", "llama": ".self_attn.q_proj.weight"}
# the MLP weights that read the residual stream (input) and write it (output), by name within the block
MLP_WEIGHTS = {
    "gpt2": (("c_fc.weight",), ("c_proj.weight",)),
    "llama": (("gate_proj.weight", "up_proj.weight"), ("down_proj.weight",)),
}


class UnknownSymmetries(ValueError):
    pass


@dataclass(frozen=True)
class Symmetries:
    family: str
    width: int  # the residual axis' size
    heads: dict[str, tuple[int, int]]  # attention block -> (query heads, key/value heads)
    units: dict[str, int]  # MLP block -> hidden units
    roles: dict[str, dict[int, Axis]]  # parameter -> {axis: what it indexes}

    @property
    def layout(self) -> tuple:
        """What two models must share for their weights to be compared."""
        return self.family, self.width, self.heads, self.units


def _parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Floating parameters by name (tied weights appear once, as named_parameters de-duplicates them)."""
    return {n: p for n, p in model.named_parameters() if p.is_floating_point()}


def symmetries(model: torch.nn.Module) -> Symmetries:
    """The unit, head and residual axes of every parameter of a GPT-2 or Llama-family model; UnknownSymmetries (with
    the reason) for any other architecture or any parameter whose symmetries are not known."""
    params = _parameters(model)
    family = next((f for f, marker in FAMILY_MARKERS.items() if any(n.endswith(marker) for n in params)), None)
    config = getattr(model, "config", None)
    if family is None or config is None:
        raise UnknownSymmetries(
            f"the architecture's symmetries are not known (known: {', '.join(FAMILIES)} families with their "
            "Hugging Face parameter names)"
        )
    n_heads = int(config.num_attention_heads)
    n_kv = int(getattr(config, "num_key_value_heads", None) or n_heads)
    width = int(config.hidden_size)
    roles, heads, units = {}, {}, {}
    for name, p in params.items():
        match = next(((m, spec) for pat, spec in FAMILIES[family] if (m := re.search(pat, name))), None)
        if match is None:
            raise UnknownSymmetries(f"parameter {name} of this {family} model has no known symmetry role")
        m, spec = match
        block = m.groupdict().get("b") or ""
        roles[name] = {
            axis: Axis(kind, block if kind != RESIDUAL else "", split, kv) for axis, (kind, split, kv) in spec.items()
        }
        for axis, role in roles[name].items():
            size = p.shape[axis]
            if role.kind == RESIDUAL and size != width:
                raise UnknownSymmetries(f"{name}: axis {axis} has {size} entries, the residual width is {width}")
            if role.kind == UNITS:
                units[block] = size
            if role.kind == HEADS:
                heads[block] = (n_heads, n_kv)
                if size % (role.split * (n_kv if role.kv else n_heads)):
                    raise UnknownSymmetries(f"{name}: axis {axis} ({size}) is not a whole number of heads")
    if n_heads % n_kv:
        raise UnknownSymmetries(f"{n_heads} query heads do not share {n_kv} key/value heads evenly")
    return Symmetries(family, width, heads, units, roles)


@dataclass
class Symmetry:
    """One relabelling, as index arrays in take form (new[i] = old[index[i]]); None or absent: unchanged."""

    residual: np.ndarray | None = None
    units: dict[str, np.ndarray] = field(default_factory=dict)  # MLP block -> unit order
    heads: dict[str, np.ndarray] = field(default_factory=dict)  # attention block -> query-head order

    def index(self, role: Axis, sym: Symmetries) -> np.ndarray | None:
        if role.kind == RESIDUAL:
            return self.residual
        if role.kind == UNITS:
            return self.units.get(role.block)
        order = self.heads.get(role.block)
        if order is None or not role.kv:
            return order
        group = sym.heads[role.block][0] // sym.heads[role.block][1]
        return order[::group] // group  # the key/value heads move with their query-head groups


def head_order(kv_order: np.ndarray, within: list[np.ndarray]) -> np.ndarray:
    """The query-head order that moves key/value head kv_order[j] (with its group of query heads, reordered by
    within[j]) to position j."""
    group = len(within[0])
    return np.concatenate([kv_order[j] * group + np.asarray(w) for j, w in enumerate(within)])


def random_symmetry(sym: Symmetries, rng: np.random.Generator, parts=(RESIDUAL, UNITS, HEADS)) -> Symmetry:
    """A uniformly random element of the symmetry group (of the parts named)."""
    g = Symmetry()
    if RESIDUAL in parts:
        g.residual = rng.permutation(sym.width)
    if UNITS in parts:
        g.units = {b: rng.permutation(h) for b, h in sym.units.items()}
    if HEADS in parts:
        g.heads = {
            b: head_order(rng.permutation(n_kv), [rng.permutation(n_q // n_kv) for _ in range(n_kv)])
            for b, (n_q, n_kv) in sym.heads.items()
        }
    return g


def _take(t: torch.Tensor, axis: int, index: np.ndarray, split: int = 1) -> torch.Tensor:
    """t reordered along `axis`, seen as (split, len(index), rest) blocks, by `index` on the middle dimension."""
    moved = t.movedim(axis, 0)
    shape = moved.shape
    blocks = moved.reshape(split, len(index), -1, *shape[1:])
    return blocks[:, torch.as_tensor(index, device=t.device)].reshape(shape).movedim(0, axis)


def transform(t: torch.Tensor, roles: dict[int, Axis], g: Symmetry, sym: Symmetries) -> torch.Tensor:
    """A parameter under the relabelling g."""
    for axis, role in roles.items():
        index = g.index(role, sym)
        if index is not None:
            t = _take(t, axis, index, role.split)
    return t


@torch.no_grad()
def apply_symmetry(model: torch.nn.Module, g: Symmetry) -> torch.nn.Module:
    """Relabels the model's weights in place (it computes exactly the same function) and returns it."""
    sym = symmetries(model)
    for name, p in _parameters(model).items():
        p.copy_(transform(p, sym.roles[name], g, sym))
    return model


# ---- the tests ----


@dataclass
class TensorCosine:
    name: str
    numel: int
    cosine: float  # centred cosine of the whole tensors
    p_value: float  # this tensor's own residual-permutation p-value (NaN: it has no residual axis)


@dataclass
class BlockMatch:
    block: str
    hidden: int
    spearman: float
    p_value: float  # this block's own residual-permutation p-value
    identity_fraction: float  # how often the input-weight matching pairs unit i with unit i (unpermuted copies)


@dataclass
class DeltaSpectrum:
    name: str
    ratio: float  # s_max(δ) / (τ̂ (√m + √n)): ≈ 1 for i.i.d. noise, > 1 for structured differences
    p_value: float  # P(ratio of a Gaussian matrix of this shape ≥ ratio): small = structured


@dataclass
class Relatedness:
    applicable: bool
    reason: str = ""
    tensors: list[TensorCosine] | None = None
    blocks: list[BlockMatch] | None = None
    deltas: list[DeltaSpectrum] | None = None
    cosine_median: float = float("nan")  # over the weight matrices (descriptive)
    cosine_p_value: float = float("nan")  # residual-permutation test of the summed centred cosines (tail-bounded)
    match_p_value: float = float("nan")  # residual-permutation test of the mean unit-matching Spearman
    permutations: int = 0
    units_moved: float = float("nan")  # share of B's hidden units the alignment to A's moved
    heads_moved: float = float("nan")  # share of B's attention heads the alignment moved
    identical_weights: bool = False  # every tensor equal once aligned
    structure_p_value: float = float("nan")  # Fisher over δ spectra: small = δ is not i.i.d. noise
    spectral_ratio_median: float = float("nan")
    direction_z: float = float("nan")  # > 0: B has the extra weight energy (the noisy copy, if δ is noise-like)

    @property
    def p_value(self) -> float:
        """Bonferroni over the two independence tests: min(1, 2 · the smaller p-value)."""
        if not self.applicable:
            return float("nan")
        return float(min(1.0, 2.0 * np.nanmin([self.cosine_p_value, self.match_p_value])))

    def summary(self) -> dict:
        return {
            "applicable": self.applicable,
            "reason": self.reason,
            "p_value": self.p_value,
            "cosine_median": self.cosine_median,
            "cosine_p_value": self.cosine_p_value,
            "match_p_value": self.match_p_value,
            "permutations": self.permutations,
            "units_moved": self.units_moved,
            "heads_moved": self.heads_moved,
            "identical_weights": self.identical_weights,
            "structure_p_value": self.structure_p_value,
            "spectral_ratio_median": self.spectral_ratio_median,
            "direction_z": self.direction_z,
            "n_tensors": len(self.tensors or []),
            "n_blocks": len(self.blocks or []),
        }


def fisher(p_values) -> float:
    """Fisher's combination of independent p-values: −2 Σ ln p ~ χ²(2k) under the null."""
    p = np.clip(np.asarray(list(p_values), dtype=np.float64), FLOOR_P, 1.0)
    if len(p) == 0:
        return float("nan")
    return float(max(chi2.sf(-2.0 * np.log(p).sum(), df=2 * len(p)), FLOOR_P))


def monte_carlo_p(null: np.ndarray, observed: float) -> float:
    """(1 + #{null ≥ observed}) / (1 + draws): exact when the null draws are exchangeable with the observation."""
    return (1 + int((np.asarray(null) >= observed).sum())) / (1 + len(null))


@dataclass
class Weights:
    """One parameter of both models (as stored) with the roles of its axes."""

    name: str
    a: torch.Tensor
    b: torch.Tensor
    roles: dict[int, Axis]

    def axis(self, kind: str) -> int | None:
        return next((axis for axis, role in self.roles.items() if role.kind == kind), None)


def paired_weights(model_a: torch.nn.Module, model_b: torch.nn.Module) -> tuple[list[Weights], Symmetries | None, str]:
    """(the parameters of both, their symmetries, "") or ([], None, why they cannot be compared)."""
    params_a, params_b = _parameters(model_a), _parameters(model_b)
    mismatched = sorted(set(params_a) ^ set(params_b)) + sorted(
        n for n in set(params_a) & set(params_b) if params_a[n].shape != params_b[n].shape
    )
    if mismatched:
        return (
            [],
            None,
            (
                f"{len(mismatched)} weight tensors differ in name or shape (first: {mismatched[0]}): "
                "the architectures differ, so weights are not compared"
            ),
        )
    try:
        sym_a, sym_b = symmetries(model_a), symmetries(model_b)
    except UnknownSymmetries as e:
        return [], None, f"{e}, so the weights cannot be tested against independent training"
    if sym_a.layout != sym_b.layout:
        return [], None, "the models' head counts differ: the architectures differ, so weights are not compared"
    pairs = [Weights(n, params_a[n].detach(), params_b[n].detach(), sym_a.roles[n]) for n in params_a]
    return pairs, sym_a, ""


def _float64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64)


def centred_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Float32 products summed in float64: rounding errors of ~1e-7 per product average out."""
    a, b = (t.detach().to(device="cpu", dtype=torch.float32).flatten() for t in (a, b))
    a, b = a - a.double().mean().float(), b - b.double().mean().float()

    def dot(x, y):
        return float((x * y).sum(dtype=torch.float64))

    denom = math.sqrt(dot(a, a) * dot(b, b))
    return dot(a, b) / denom if denom > 0 else 0.0


def _row_sample(n_rows: int, max_rows: int, rng: np.random.Generator) -> np.ndarray | slice:
    """At most `max_rows` rows, the same for both models and chosen without looking at B's labels, so the tests' cost
    stays bounded on big matrices and their p-values stay exact."""
    return np.sort(rng.choice(n_rows, max_rows, replace=False)) if n_rows > max_rows else slice(None)


def residual_rows(t: torch.Tensor, axis: int) -> torch.Tensor:
    """[rest, d]: the residual axis last."""
    return t.movedim(axis, -1).reshape(-1, t.shape[axis])


def _cross_cosine(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """C[j, k] with Σ_j C[j, r(j)] = the centred cosine of a and of b with its residual axis (last) permuted by r
    (float32 products: C only has to resolve cosines to ~1e-6)."""
    a, b = (t.detach().to(device="cpu", dtype=torch.float32) for t in (a, b))
    a, b = a - a.double().mean().float(), b - b.double().mean().float()
    scale = float(a.double().norm() * b.double().norm())
    return (a.T @ b).double().numpy() / scale if scale > 0 else np.zeros((a.shape[1], a.shape[1]))


def permutation_tail_bound(c: np.ndarray, t: float, sinkhorn_iterations: int = 30) -> float:
    """An upper bound on P(Σ_j c[j, r(j)] ≥ t) over uniformly random permutations r.

    Chernoff: P ≤ e^{−λt} E e^{λT} = e^{−λt} perm(e^{λc}) / d!, and for any scalings u, v
    perm(M) ≤ Π_i Σ_j M_ij e^{u_i + v_j} / e^{Σu + Σv} (a permanent is at most the product of its row sums); u and v
    come from Sinkhorn iterations (which make the scaled matrix nearly doubly stochastic, where the bound is
    tight within e^d), λ from a grid. Valid whatever the iterations converge to; a margin covers the rounding of
    the large, nearly cancelling terms λt and log perm at large λ."""
    c = np.asarray(c, dtype=np.float64)
    d = len(c)
    shift = float(c.mean())
    c, t = c - shift, t - d * shift  # T shifts by d·shift
    scale = float(c.std()) or 1.0
    magnitude = abs(t) + float(np.abs(c).max(axis=1).sum())
    log_bound = 0.0
    for lam in np.geomspace(1e5, 1e-2, 29) / scale:  # large λ first: a copy's bound reaches the floor at once
        m = lam * c
        u, v = np.zeros(d), np.zeros(d)
        for _ in range(sinkhorn_iterations):
            u = -logsumexp(m + v[None, :], axis=1)
            v = -logsumexp(m + u[:, None], axis=0)
        log_perm = float(logsumexp(m + u[:, None] + v[None, :], axis=1).sum() - u.sum() - v.sum())
        rounding = 1e-12 * lam * magnitude + 1e-12 * d
        log_bound = min(log_bound, -lam * t + log_perm - math.lgamma(d + 1) + rounding)
        if log_bound < math.log(FLOOR_P):
            break
    return max(math.exp(log_bound), FLOOR_P)


def cosine_test(
    pairs: list[Weights], draws: np.ndarray, rng: np.random.Generator, max_rows: int = 1024
) -> tuple[list[TensorCosine], float]:
    """Per-tensor centred cosines with their own p-values, and the p-value of their sum, against B's residual axis
    permuted by each row of `draws` (on at most `max_rows` rows of each tensor)."""
    d = draws.shape[1]
    cols = np.arange(d)
    total = np.zeros((d, d))
    tensors = []
    for w in pairs:
        axis = w.axis(RESIDUAL)
        p = float("nan")
        if axis is not None:
            a, b = residual_rows(w.a, axis), residual_rows(w.b, axis)
            rows = _row_sample(a.shape[0], max_rows, rng)
            c = _cross_cosine(a[rows], b[rows])
            total += c
            p = monte_carlo_p(c[cols, draws].sum(1), float(np.trace(c)))
        tensors.append(TensorCosine(w.name, int(w.a.numel()), centred_cosine(w.a, w.b), p))
    observed = float(np.trace(total))
    p = monte_carlo_p(total[cols, draws].sum(1), observed)
    if p <= 1 / (1 + len(draws)):  # beyond every draw: the tail bound (valid on its own) can say how far
        p = min(p, permutation_tail_bound(total, observed))
    return tensors, p


def _normalised(rows: torch.Tensor) -> np.ndarray:
    """Rows scaled to unit length, as float32 numpy (inner products are then cosines)."""
    rows = rows.detach().to(device="cpu", dtype=torch.float32)
    return (rows / rows.norm(dim=1, keepdim=True).clamp_min(1e-30)).numpy()


def _unit_rows(pairs: dict[str, Weights], names: list[str], model: str) -> np.ndarray:
    """[units, k·d]: one row per hidden unit, its residual-axis weights of the named tensors side by side."""
    return _normalised(torch.cat([getattr(w, model).movedim(w.axis(UNITS), 0) for w in map(pairs.get, names)], 1))


@dataclass
class MlpBlock:
    """One MLP block's unit rows (normalised): A's as [units, k·d], B's transposed, [k·d, units], so that a set of
    residual coordinates of B is a set of contiguous rows."""

    name: str
    a_in: np.ndarray
    a_out: np.ndarray
    b_in_t: np.ndarray
    b_out_t: np.ndarray


def mlp_blocks(pairs: list[Weights], sym: Symmetries) -> list[MlpBlock]:
    by_name = {w.name: w for w in pairs}
    inputs, outputs = MLP_WEIGHTS[sym.family]
    blocks = []
    for block in sorted(sym.units):
        names_in, names_out = [f"{block}.{n}" for n in inputs], [f"{block}.{n}" for n in outputs]
        if not all(n in by_name for n in names_in + names_out):
            continue
        a_in, a_out, b_in, b_out = (_unit_rows(by_name, n, m) for m in "ab" for n in (names_in, names_out))
        blocks.append(MlpBlock(block, a_in, a_out, np.ascontiguousarray(b_in.T), np.ascontiguousarray(b_out.T)))
    return blocks


def assign(similarity: np.ndarray) -> np.ndarray:
    """cols with row i matched to column cols[i], maximising the total similarity (rows ≤ columns). When every row's
    best column is a different one, that is the optimum; else the Hungarian algorithm."""
    best = similarity.argmax(axis=1)
    if len(np.unique(best)) == len(best):
        return best
    return linear_sum_assignment(similarity, maximize=True)[1]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's ρ of two sequences of distinct values."""
    rx, ry = np.argsort(np.argsort(x)).astype(np.float64), np.argsort(np.argsort(y)).astype(np.float64)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum()) / denom if denom > 0 else 0.0


def _columns(coords: np.ndarray, d: int, k: int) -> np.ndarray:
    """The columns of residual coordinates `coords` in k residual-axis blocks side by side."""
    return np.concatenate([coords + j * d for j in range(k)])


def _block_spearman(block: MlpBlock, units: np.ndarray, coords: np.ndarray, b_coords: np.ndarray):
    """(ρ, the input-weight matching) for A's `units` on residual coordinates `coords`, against B's units on
    `b_coords` (coords themselves, or their images under a residual permutation)."""
    d = len(block.b_out_t)
    k = len(block.b_in_t) // d
    a_in, a_out = block.a_in[units][:, _columns(coords, d, k)], block.a_out[units][:, coords]
    pi_in = assign(a_in @ block.b_in_t[_columns(b_coords, d, k)])
    pi_out = assign(a_out @ block.b_out_t[b_coords])
    return spearman(pi_in, pi_out), pi_in


def matching_test(
    blocks: list[MlpBlock], draws: np.ndarray, coords: np.ndarray, rng: np.random.Generator, max_units: int = 64
) -> tuple[list[BlockMatch], float]:
    """Per MLP block, the Spearman correlation of the input- and output-weight matchings of (at most `max_units` of)
    A's units to B's, with its own p-value, and the p-value of the mean over blocks, against B's residual axis
    permuted by each row of `draws`. The similarities use A's residual coordinates `coords` (and their images in B):
    a subset chosen without looking at B keeps the p-values exact and the cost bounded on big models. [] and NaN
    without MLP blocks."""
    if not blocks:
        return [], float("nan")
    units = [np.arange(len(b.a_in))[_row_sample(len(b.a_in), max_units, rng)] for b in blocks]
    observed = [_block_spearman(b, u, coords, coords) for b, u in zip(blocks, units)]
    null = np.array([[_block_spearman(b, u, coords, r[coords])[0] for b, u in zip(blocks, units)] for r in draws])
    out = [
        BlockMatch(b.name, len(b.a_in), rho, monte_carlo_p(null[:, i], rho), float((pi == u).mean()))
        for i, (b, u, (rho, pi)) in enumerate(zip(blocks, units, observed))
    ]
    return out, monte_carlo_p(null.mean(1), float(np.mean([rho for rho, _ in observed])))


# ---- aligning B to A, and what the difference is ----


def _cosines(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return _normalised(a) @ _normalised(b).T


def _head_rows(pairs: list[Weights], block: str, kv: bool, n: int, model: str) -> torch.Tensor | None:
    """[n heads, features]: each (query or key/value) head's weights in every tensor of the block, side by side."""
    parts = []
    for w in pairs:
        axis = w.axis(HEADS)
        if axis is None or w.roles[axis].block != block or w.roles[axis].kv != kv:
            continue
        t = getattr(w, model).movedim(axis, 0)
        parts.append(t.reshape(w.roles[axis].split, n, -1).transpose(0, 1).reshape(n, -1))
    return torch.cat(parts, dim=1) if parts else None


def align_heads(pairs: list[Weights], block: str, n_q: int, n_kv: int) -> np.ndarray:
    """The query-head order that aligns B's heads to A's: key/value heads matched on their own weights plus the best
    matching of their query-head groups, then the query heads within each matched group."""
    group = n_q // n_kv
    q = _cosines(_head_rows(pairs, block, False, n_q, "a"), _head_rows(pairs, block, False, n_q, "b"))
    kv_a, kv_b = _head_rows(pairs, block, True, n_kv, "a"), _head_rows(pairs, block, True, n_kv, "b")
    kv = _cosines(kv_a, kv_b) if kv_a is not None else np.zeros((n_kv, n_kv))
    within, score = {}, np.array(kv)
    for j in range(n_kv):
        for k in range(n_kv):
            s = q[j * group : (j + 1) * group, k * group : (k + 1) * group]
            within[j, k] = linear_sum_assignment(s, maximize=True)[1]
            score[j, k] += s[np.arange(group), within[j, k]].sum()
    kv_order = assign(score)
    return head_order(kv_order, [within[j, k] for j, k in enumerate(kv_order)])


def align(
    pairs: list[Weights], sym: Symmetries, blocks: list[MlpBlock], coords: np.ndarray
) -> tuple[Symmetry, float, float]:
    """The unit and head relabelling of B that best matches A's (units on their input and output weights together, on
    residual coordinates `coords`; orders that change nothing are left out), and the shares of units and of heads it
    moves."""

    def similarity(b: MlpBlock) -> np.ndarray:
        cols = _columns(coords, len(b.b_out_t), len(b.b_in_t) // len(b.b_out_t))
        return b.a_in[:, cols] @ b.b_in_t[cols] + b.a_out[:, coords] @ b.b_out_t[coords]

    units = {b.name: assign(similarity(b)) for b in blocks}
    heads = {block: align_heads(pairs, block, n_q, n_kv) for block, (n_q, n_kv) in sym.heads.items()}

    def moved(orders: dict[str, np.ndarray]) -> tuple[dict, float]:
        share = [(o != np.arange(len(o))).mean() for o in orders.values()]
        return {k: o for k, o, s in zip(orders, orders.values(), share) if s > 0}, float(np.mean(share or np.nan))

    (units, units_moved), (heads, heads_moved) = moved(units), moved(heads)
    return Symmetry(units=units, heads=heads), units_moved, heads_moved


def top_singular_value(m: torch.Tensor) -> float:
    """Through the smaller Gram matrix: exact, and much faster on CPU than a full SVD."""
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    return float(torch.linalg.eigvalsh(gram)[-1].clamp_min(0.0).sqrt())


def spectral_ratio(delta: torch.Tensor) -> float:
    m, n = delta.shape
    fro = float(delta.norm())
    return top_singular_value(delta) * math.sqrt(m * n) / (fro * (math.sqrt(m) + math.sqrt(n)))


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """[first dim, rest] in float64 on the CPU."""
    return _float64(t).reshape(t.shape[0], -1)


@functools.lru_cache(maxsize=32)
def gaussian_spectral_ratios(shape: tuple[int, int], simulations: int, seed: int) -> np.ndarray:
    """The spectral ratios of `simulations` Gaussian matrices of `shape` (the δ test's null depends on the shape
    only, so it is drawn once per shape, simulation count and seed, and reused across pairs)."""
    generator = torch.Generator().manual_seed(hash((seed, *shape)) % 2**63)
    return np.array(
        [spectral_ratio(torch.randn(shape, generator=generator, dtype=torch.float64)) for _ in range(simulations)]
    )


def noise_structure(
    aligned: list[tuple[str, torch.Tensor, torch.Tensor]],
    simulations: int,
    seed: int,
    rng: np.random.Generator,
    max_rows: int = 256,
) -> list[DeltaSpectrum]:
    """δ's spectral ratio per matrix that differs (on at most `max_rows` of its rows), with a Monte Carlo p-value
    against Gaussian matrices of that shape. Rows of i.i.d. noise are i.i.d. noise, and a fine-tune's low-rank δ
    stands out on a few hundred rows as on all of them (its ratio grows like √(rows·columns)/(√rows + √columns)),
    while the eigenproblems shrink to at most 256²."""
    out = []
    for name, a, b in aligned:
        if a.ndim < 2 or torch.equal(a, b):
            continue
        rows = _row_sample(a.shape[0], max_rows, rng)
        delta = _as_rows(b[rows]) - _as_rows(a[rows])
        ratio = spectral_ratio(delta)
        out.append(
            DeltaSpectrum(
                name, ratio, monte_carlo_p(gaussian_spectral_ratios(tuple(delta.shape), simulations, seed), ratio)
            )
        )
    return out


def norm_direction(aligned: list[tuple[str, torch.Tensor, torch.Tensor]]) -> float:
    """z = Σ(|W_B|² − |W_A|²) / √Σ 4τ²|M|² over the matrices (M = (W_A + W_B)/2, τ² = |δ|²/n): ≈ N(0, 1) when δ is
    noise independent of the weights with no side carrying more of it, large positive when B carries it."""
    num = var = 0.0
    for _, a, b in aligned:
        if a.ndim < 2:
            continue
        a, b = (t.detach().to(device="cpu", dtype=torch.float32) for t in (a, b))
        delta, total = b - a, a + b  # sums in float64: a small σ's energy is a small difference of large sums
        num += float((delta * total).sum(dtype=torch.float64))
        var += (
            float(delta.pow(2).sum(dtype=torch.float64)) / delta.numel() * float(total.pow(2).sum(dtype=torch.float64))
        )
    return num / math.sqrt(var) if var > 0 else 0.0


@torch.no_grad()
def weight_relatedness(
    model_a: torch.nn.Module,
    model_b: torch.nn.Module,
    permutations: int = 99,
    simulations: int = 199,
    seed: int = 0,
    max_rows: int = 1024,
    max_units: int = 64,
    max_coords: int = 128,
) -> Relatedness:
    """All tests on two models' weights (CPU); `applicable` is False, with the reason, when the architectures differ
    or their symmetries are not known."""
    if permutations < 1 or simulations < 1:
        raise ValueError(f"permutations and simulations must be >= 1, got {permutations} and {simulations}")
    pairs, sym, reason = paired_weights(model_a, model_b)
    if not pairs:
        return Relatedness(applicable=False, reason=reason)
    rng = np.random.default_rng(int(seed))
    draws = np.stack([rng.permutation(sym.width) for _ in range(permutations)])
    tensors, cosine_p = cosine_test(pairs, draws, rng, max_rows)
    mlps = mlp_blocks(pairs, sym)
    coords = np.arange(sym.width)[_row_sample(sym.width, max_coords, rng)]
    blocks, match_p = matching_test(mlps, draws, coords, rng, max_units)
    g, units_moved, heads_moved = align(pairs, sym, mlps, coords)
    aligned = [(w.name, w.a, transform(w.b, w.roles, g, sym)) for w in pairs]
    deltas = noise_structure(aligned, simulations, int(seed), rng)
    return Relatedness(
        applicable=True,
        tensors=tensors,
        blocks=blocks,
        deltas=deltas,
        cosine_median=float(np.median([t.cosine for t, w in zip(tensors, pairs) if w.a.ndim >= 2])),
        cosine_p_value=cosine_p,
        match_p_value=match_p,
        permutations=permutations,
        units_moved=units_moved,
        heads_moved=heads_moved,
        identical_weights=all(torch.equal(a, b) for _, a, b in aligned),
        structure_p_value=fisher(d.p_value for d in deltas) if deltas else 1.0,
        spectral_ratio_median=float(np.median([d.ratio for d in deltas])) if deltas else float("nan"),
        direction_z=norm_direction(aligned),
    )
