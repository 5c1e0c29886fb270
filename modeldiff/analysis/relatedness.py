"""White-box relatedness of two models' weights: are they derived from one another, or trained independently?

Two tests, each with p-values under the null hypothesis that the models were trained from independent
random initialisations (after Zhu et al. 2025, "Independence Tests for Language Models"):

- **Centred cosine** of every pair of same-named tensors with two or more dimensions. A weight-noise copy
  keeps cos ≈ 1/√(1 + σ²_rel); independent models give cos ≈ 0 ± 1/√n. The p-value is a Monte Carlo
  permutation test: under independence, permuting the rows and columns of one tensor (hidden units are
  exchangeable at initialisation and training is permutation-equivariant) gives the statistic's null
  distribution. It is fooled by a copier who permutes hidden units.
- **Hidden-unit matching**, robust to such permutations: in each MLP block, match A's hidden units to B's
  once by their input weights and once by their output weights (linear assignment on cosine similarity).
  In related models both matchings recover the same correspondence, whatever permutation was applied;
  in independent ones they are unrelated permutations, whose Spearman correlation ρ has mean 0 and
  variance 1/(h − 1). One-sided p = P(ρ_null ≥ ρ).
Per-tensor and per-block p-values are combined with Fisher's method.

Once related, *how*: a weight-noise copy differs from its parent by δ = W_B − W_A that is i.i.d. noise, whose
top singular value sits at the Marchenko–Pastur edge, s_max ≈ τ(√m + √n); a fine-tune's δ is structured
(gradient updates are low-rank), with s_max well above it. `noise_structure` tests δ against simulated
Gaussian matrices of each shape. And which is the copy: noise independent of the parent adds energy,
|W_B|² − |W_A|² = |δ|² + 2 W_A·δ with the second term N(0, 4τ²|W_A|²), so `norm_direction` is a z-score
that is large and positive when B is the noisy one (visible once σ_rel·√(weights) ≫ 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import chi2, norm

# MLP layouts by parameter-name suffix: (input weights, output weights, whether each is stored hidden-units-first).
# GPT-2's Conv1D stores [in, out], so c_fc is [d, h] and c_proj [h, d]; nn.Linear stores [out, in].
MLP_LAYOUTS = {
    "gpt2": (("mlp.c_fc.weight", False), ("mlp.c_proj.weight", True)),
    "llama": (("mlp.up_proj.weight", True), ("mlp.down_proj.weight", False)),
}
FLOOR_P = 1e-300  # p-values are floored here so Fisher's sum stays finite


@dataclass
class TensorCosine:
    name: str
    numel: int
    cosine: float
    p_value: float


@dataclass
class BlockMatch:
    block: str
    hidden: int
    spearman: float
    p_value: float
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
    cosine_median: float = float("nan")
    cosine_p_value: float = float("nan")  # Fisher over tensors
    match_p_value: float = float("nan")  # Fisher over MLP blocks
    identical_weights: bool = False  # every paired tensor equal
    structure_p_value: float = float("nan")  # Fisher over δ spectra: small = δ is not i.i.d. noise
    spectral_ratio_median: float = float("nan")
    direction_z: float = float("nan")  # > 0: B carries the extra noise energy (B is the copy); < 0: A does

    @property
    def p_value(self) -> float:
        """The smaller of the two independence tests' p-values."""
        return float(np.nanmin([self.cosine_p_value, self.match_p_value])) if self.applicable else float("nan")

    def summary(self) -> dict:
        return {
            "applicable": self.applicable,
            "reason": self.reason,
            "p_value": self.p_value,
            "cosine_median": self.cosine_median,
            "cosine_p_value": self.cosine_p_value,
            "match_p_value": self.match_p_value,
            "identical_weights": self.identical_weights,
            "structure_p_value": self.structure_p_value,
            "spectral_ratio_median": self.spectral_ratio_median,
            "direction_z": self.direction_z,
            "n_tensors": len(self.tensors or []),
            "n_blocks": len(self.blocks or []),
        }


def fisher(p_values) -> float:
    """Fisher's combination: −2 Σ ln p ~ χ²(2k) under the null."""
    p = np.clip(np.asarray(list(p_values), dtype=np.float64), FLOOR_P, 1.0)
    if len(p) == 0:
        return float("nan")
    return float(max(chi2.sf(-2.0 * np.log(p).sum(), df=2 * len(p)), FLOOR_P))


def paired_tensors(model_a: torch.nn.Module, model_b: torch.nn.Module) -> tuple[list[tuple], str]:
    """([(name, tensor_a, tensor_b)] for same-named float tensors with ≥2 dims and equal shapes, why not if none).
    Tied weights appear once (named_parameters de-duplicates them)."""

    def matrices(model):
        return {n: p.detach() for n, p in model.named_parameters() if p.ndim >= 2 and p.is_floating_point()}

    params_a, params_b = matrices(model_a), matrices(model_b)
    mismatched = sorted(set(params_a) ^ set(params_b)) + sorted(
        n for n in set(params_a) & set(params_b) if params_a[n].shape != params_b[n].shape
    )
    if mismatched:
        return [], (
            f"{len(mismatched)} weight tensors differ in name or shape (first: {mismatched[0]}): "
            "the architectures differ, so weights are not compared"
        )
    if not params_a:
        return [], "the models have no weight tensor with two or more dimensions"
    return [(n, params_a[n], params_b[n]) for n in params_a], ""


def _centred(t: torch.Tensor) -> torch.Tensor:
    t = t.to(device="cpu", dtype=torch.float64)
    return t - t.mean()


def centred_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = _centred(a).flatten(), _centred(b).flatten()
    denom = float(a.norm() * b.norm())
    return float(a @ b) / denom if denom > 0 else 0.0


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """[first dim, rest] in float64 on the CPU."""
    return t.detach().to(device="cpu", dtype=torch.float64).reshape(t.shape[0], -1)


def _row_sample(n_rows: int, max_rows: int, generator: torch.Generator) -> torch.Tensor | slice:
    """At most `max_rows` rows, the same for both models: the tests' cost stays bounded on big matrices, and a row
    subset of exchangeable (or i.i.d.) weights is exchangeable (or i.i.d.) too, so the p-values stay exact."""
    return torch.randperm(n_rows, generator=generator)[:max_rows] if n_rows > max_rows else slice(None)


def cosine_test(
    name: str, a: torch.Tensor, b: torch.Tensor, permutations: int, generator: torch.Generator, max_rows: int = 1024
) -> TensorCosine:
    """The centred cosine of the whole tensors, and a Monte Carlo permutation p-value (1 + #{null ≥ observed}) /
    (1 + T) for the cosine on (at most) `max_rows` of their rows, against the same rows with B's rows and columns
    shuffled."""
    rows = _row_sample(a.shape[0], max_rows, generator)
    a2, b2 = _centred(_as_rows(a)[rows]), _centred(_as_rows(b)[rows])
    scale = max(float(a2.norm() * b2.norm()), 1e-300)
    observed = float((a2 * b2).sum()) / scale
    exceed = 0
    for _ in range(permutations):
        shuffled = b2[torch.randperm(b2.shape[0], generator=generator)][
            :, torch.randperm(b2.shape[1], generator=generator)
        ]
        exceed += float((a2 * shuffled).sum()) / scale >= observed
    return TensorCosine(name, int(a.numel()), centred_cosine(a, b), (1 + exceed) / (1 + permutations))


def _unit_rows(weight: torch.Tensor, hidden_first: bool) -> torch.Tensor:
    """[h, d]: one row per hidden unit."""
    w = weight.detach().to(device="cpu", dtype=torch.float64)
    return w if hidden_first else w.T


def match_units(rows_a: torch.Tensor, rows_b: torch.Tensor) -> np.ndarray:
    """π with A's unit i matched to B's unit π[i], maximising the total cosine similarity (Hungarian)."""
    na = rows_a / rows_a.norm(dim=1, keepdim=True).clamp_min(1e-300)
    nb = rows_b / rows_b.norm(dim=1, keepdim=True).clamp_min(1e-300)
    _, cols = linear_sum_assignment((na @ nb.T).numpy(), maximize=True)
    return cols


def spearman_p(pi_1: np.ndarray, pi_2: np.ndarray) -> tuple[float, float]:
    """(Spearman ρ between two permutations, one-sided p under independent uniform permutations).
    Both are permutations of 0..h−1, so their ranks are themselves; ρ√(h−1) is ≈ N(0, 1) under the null."""
    h = len(pi_1)
    d = pi_1.astype(np.float64) - pi_2.astype(np.float64)
    rho = 1.0 - 6.0 * float((d**2).sum()) / (h * (h * h - 1))
    return rho, float(max(norm.sf(rho * math.sqrt(h - 1)), FLOOR_P))


def _layout(names: set[str]) -> tuple | None:
    for layout in MLP_LAYOUTS.values():
        (w_in, _), (w_out, _) = layout
        if any(n.endswith(w_in) for n in names) and any(n.endswith(w_out) for n in names):
            return layout
    return None


def matching_test(pairs: list[tuple]) -> list[BlockMatch]:
    """One BlockMatch per MLP block of a known layout (MLP_LAYOUTS); [] for unknown architectures."""
    tensors = {name: (a, b) for name, a, b in pairs}
    layout = _layout(set(tensors))
    if layout is None:
        return []
    (w_in, in_first), (w_out, out_first) = layout
    blocks = []
    for name in sorted(n for n in tensors if n.endswith(w_in)):
        prefix = name[: -len(w_in)]
        if prefix + w_out not in tensors:
            continue
        a_in, b_in = (_unit_rows(t, in_first) for t in tensors[name])
        a_out, b_out = (_unit_rows(t, out_first) for t in tensors[prefix + w_out])
        pi_in, pi_out = match_units(a_in, b_in), match_units(a_out, b_out)
        rho, p = spearman_p(pi_in, pi_out)
        identity = float((pi_in == np.arange(len(pi_in))).mean())
        blocks.append(BlockMatch(prefix.rstrip("."), len(pi_in), rho, p, identity))
    return blocks


def top_singular_value(m: torch.Tensor) -> float:
    """Through the smaller Gram matrix: exact, and much faster on CPU than a full SVD."""
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    return float(torch.linalg.eigvalsh(gram)[-1].clamp_min(0.0).sqrt())


def spectral_ratio(delta: torch.Tensor) -> float:
    m, n = delta.shape
    fro = float(delta.norm())
    return top_singular_value(delta) * math.sqrt(m * n) / (fro * (math.sqrt(m) + math.sqrt(n)))


def noise_structure(
    pairs: list[tuple], simulations: int, generator: torch.Generator, max_rows: int = 1024
) -> list[DeltaSpectrum]:
    """δ's spectral ratio per tensor that differs (on at most `max_rows` of its rows), with a Monte Carlo p-value
    against Gaussian matrices of that shape."""
    null: dict[tuple, np.ndarray] = {}
    out = []
    for name, a, b in pairs:
        if torch.equal(a, b):
            continue
        rows = _row_sample(a.shape[0], max_rows, generator)
        delta = _as_rows(b)[rows] - _as_rows(a)[rows]
        shape = tuple(delta.shape)
        if shape not in null:  # the null depends on the shape only
            null[shape] = np.array(
                [
                    spectral_ratio(torch.randn(shape, generator=generator, dtype=torch.float64))
                    for _ in range(simulations)
                ]
            )
        ratio, sims = spectral_ratio(delta), null[shape]
        out.append(DeltaSpectrum(name, ratio, (1 + int((sims >= ratio).sum())) / (1 + len(sims))))
    return out


def norm_direction(pairs: list[tuple]) -> float:
    """z = Σ(|W_B|² − |W_A|²) / √Σ 4τ²|M|² (M = (W_A + W_B)/2, τ² = |δ|²/n): ≈ N(0, 1) when neither side carries
    extra isotropic noise energy, large positive when B does."""
    num = var = 0.0
    for _, a, b in pairs:
        a, b = a.to("cpu", torch.float64), b.to("cpu", torch.float64)
        delta = b - a
        num += float((delta * (a + b)).sum())
        var += 4.0 * float(delta.pow(2).mean()) * float(((a + b) / 2).pow(2).sum())
    return num / math.sqrt(var) if var > 0 else 0.0


@torch.no_grad()
def weight_relatedness(
    model_a: torch.nn.Module, model_b: torch.nn.Module, permutations: int = 99, simulations: int = 199, seed: int = 0
) -> Relatedness:
    """All tests on two models' weights (CPU, float64); `applicable` is False when the architectures differ."""
    if permutations < 1 or simulations < 1:
        raise ValueError(f"permutations and simulations must be >= 1, got {permutations} and {simulations}")
    pairs, reason = paired_tensors(model_a, model_b)
    if not pairs:
        return Relatedness(applicable=False, reason=reason)
    generator = torch.Generator().manual_seed(int(seed))
    tensors = [cosine_test(name, a, b, permutations, generator) for name, a, b in pairs]
    blocks = matching_test(pairs)
    deltas = noise_structure(pairs, simulations, generator)
    return Relatedness(
        applicable=True,
        tensors=tensors,
        blocks=blocks,
        deltas=deltas,
        cosine_median=float(np.median([t.cosine for t in tensors])),
        cosine_p_value=fisher(t.p_value for t in tensors),
        match_p_value=fisher(b.p_value for b in blocks) if blocks else float("nan"),
        identical_weights=not deltas,
        structure_p_value=fisher(d.p_value for d in deltas) if deltas else 1.0,
        spectral_ratio_median=float(np.median([d.ratio for d in deltas])) if deltas else float("nan"),
        direction_z=norm_direction(pairs),
    )
