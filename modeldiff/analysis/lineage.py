"""The lineage index: a cheap fingerprint per model, and the shortlist of registered models worth a full check.

Screening a new version against every registered one with the full Model-diff check costs O(N) chains. A fingerprint
costs one pass over the weights and one forward pass over a few probe inputs, and comparing two fingerprints costs
microseconds, so a new version is compared with every fingerprint and the full check runs only against the few
nearest (the shortlist).

A fingerprint has two parts:
- a weight sketch per tensor shape: for every floating parameter, its top singular values (a matrix) or the quantiles
  of its values (a vector), grouped by shape in parameter order. Both are unchanged by every permutation of a
  tensor's rows and columns, so relabelled hidden units, heads or a permuted residual axis leave the sketch as it
  was; weight noise moves it by about σ, a fine-tune by how far it trained; two independently trained models differ
  by their initialisations. Only models with the same shapes (the same architecture) compare by weights.
- the per-token NLLs of a fixed probe set: `probes` sequences drawn uniformly from the input space with a seed
  derived from the vocabulary key, the same for every model of that vocabulary. Random inputs are far from any
  training data, where independently trained models disagree most and a copy still follows its parent.

The shortlist interleaves the two rankings (nearest by weights, nearest by probes, next by weights, ...) so a model
near by either criterion is on it. No MLflow here: the platform stores fingerprints with the versions.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from modeldiff.method.scoring import Scorer
from modeldiff.method.space import InputSpace

SKETCH_SIZE = 32  # singular values (matrices) or quantiles (vectors) kept per tensor
FORMAT = 1  # bumped when the fingerprint's definition changes (older ones are recomputed)


def probe_inputs(space: InputSpace, vocabulary_key: str, n: int) -> np.ndarray:
    """The fixed probe set of a vocabulary: `n` token-id sequences [n, L], uniform over the input space, drawn with a
    seed derived from the vocabulary key and the space (so every model of that vocabulary sees the same probes)."""
    if n < 1:
        raise ValueError(f"the lineage index needs at least one probe input (screening.probes >= 1), got {n}")
    text = f"{vocabulary_key}|{space.length}|{space.bos_token_id}|{','.join(map(str, space.token_ids))}"
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    slots = np.random.default_rng(seed).integers(space.n_tokens, size=(n, space.length))
    return np.asarray(space.token_ids, dtype=np.int64)[slots]


def probe_key(probes: np.ndarray, bos_token_id: int) -> str:
    """What two fingerprints' probe NLLs must share to be compared."""
    return hashlib.sha256(np.ascontiguousarray(probes, dtype=np.int64).tobytes() + str(bos_token_id).encode()).hexdigest()[
        :16
    ]


def _sketch(t: torch.Tensor, k: int = SKETCH_SIZE) -> np.ndarray:
    """A tensor's permutation-invariant sketch: top-k singular values of a matrix (higher ranks as matrices of their
    first axis), or k quantiles of a vector's values; float64, length k (padded with NaN)."""
    x = t.detach().to("cpu", torch.float64)
    if x.ndim >= 2:
        m = x.reshape(x.shape[0], -1)
        s = torch.linalg.svdvals(m).numpy()[:k]
    else:
        s = np.quantile(x.reshape(-1).numpy(), np.linspace(0, 1, k)) if x.numel() else np.zeros(0)
    out = np.full(k, np.nan)
    out[: len(s)] = s
    return out


def shape_key(shape) -> str:
    return "x".join(map(str, shape)) or "scalar"


@dataclass
class Fingerprint:
    """A model's fingerprint: weight sketches by shape ({shape: [tensors of that shape, SKETCH_SIZE]}) and its
    per-token NLLs on the probe set ([probes, L])."""

    sketches: dict[str, np.ndarray]
    probe_nll: np.ndarray
    probe_key: str
    format: int = FORMAT
    meta: dict = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        arrays = {f"sketch/{k}": v for k, v in self.sketches.items()}
        np.savez_compressed(
            buf,
            probe_nll=self.probe_nll,
            probe_key=np.array(self.probe_key),
            format=np.array(self.format),
            **arrays,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Fingerprint:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                sketches = {k.removeprefix("sketch/"): z[k] for k in z.files if k.startswith("sketch/")}
                return cls(sketches, z["probe_nll"], str(z["probe_key"]), int(z["format"]))
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"not a lineage fingerprint ({e}): recompute it (screen the version again)") from None


@torch.no_grad()
def weight_sketches(model: torch.nn.Module) -> dict[str, np.ndarray]:
    groups: dict[str, list[np.ndarray]] = {}
    for _, p in model.named_parameters():  # tied weights appear once
        if p.is_floating_point():
            groups.setdefault(shape_key(p.shape), []).append(_sketch(p))
    return {k: np.stack(v) for k, v in groups.items()}


def fingerprint(model: torch.nn.Module, space: InputSpace, vocabulary_key: str, n_probes: int, **scorer) -> Fingerprint:
    """The fingerprint of a model over its input space (`scorer`: Scorer's batch_size)."""
    probes = probe_inputs(space, vocabulary_key, n_probes)
    lp = Scorer(model, space.bos_token_id, **scorer).token_logprobs(torch.from_numpy(probes))
    nll = -lp.double().numpy()
    if not np.isfinite(nll).all():
        raise FloatingPointError("the model gives non-finite log-probabilities on the probe inputs: check its weights")
    return Fingerprint(weight_sketches(model), nll, probe_key(probes, space.bos_token_id))


def weight_distance(a: Fingerprint, b: Fingerprint) -> float:
    """Mean over tensors of the relative distance of their sketches; NaN unless both have the same shapes (the same
    number of tensors of each shape)."""
    if set(a.sketches) != set(b.sketches) or any(a.sketches[k].shape != b.sketches[k].shape for k in a.sketches):
        return math.nan
    parts = []
    for k, sa in a.sketches.items():
        sb = b.sketches[k]
        ok = np.isfinite(sa) & np.isfinite(sb)
        diff = np.where(ok, sa - sb, 0.0)
        scale = np.sqrt(np.where(ok, sa**2 + sb**2, 0.0).sum(axis=1) / 2)
        norm = np.sqrt((diff**2).sum(axis=1))
        parts.append(np.where(scale > 0, norm / np.where(scale > 0, scale, 1.0), np.where(norm > 0, 1.0, 0.0)))
    return float(np.concatenate(parts).mean()) if parts else math.nan


def probe_distance(a: Fingerprint, b: Fingerprint) -> float:
    """Root-mean-square difference of the per-token probe NLLs, relative to their spread; NaN for different probes."""
    if a.probe_key != b.probe_key or a.probe_nll.shape != b.probe_nll.shape:
        return math.nan
    d = a.probe_nll - b.probe_nll
    spread = math.sqrt((a.probe_nll.var() + b.probe_nll.var()) / 2)
    return float(math.sqrt((d**2).mean()) / spread) if spread > 0 else float(math.sqrt((d**2).mean()))


@dataclass(frozen=True)
class Candidate:
    key: str  # the caller's name for the candidate (e.g. a models:/ URI)
    weight_distance: float  # NaN: not comparable by weights
    probe_distance: float  # NaN: other probes
    weight_rank: int | None  # 1 = nearest by weights among comparable candidates
    probe_rank: int | None

    def summary(self) -> dict:
        def num(x):
            return None if math.isnan(x) else round(x, 6)

        return {
            "version": self.key,
            "weight_distance": num(self.weight_distance),
            "probe_distance": num(self.probe_distance),
            "weight_rank": self.weight_rank,
            "probe_rank": self.probe_rank,
        }


def _ranks(values: dict[str, float]) -> dict[str, int]:
    finite = sorted((v, k) for k, v in values.items() if not math.isnan(v))
    return {k: i + 1 for i, (_, k) in enumerate(finite)}


def rank(new: Fingerprint, index: dict[str, Fingerprint | None]) -> list[Candidate]:
    """Every candidate of `index` ({key: fingerprint, None where it has none}) with its distances to `new`, in the
    shortlist's order: the weight and probe rankings interleaved (nearest by weights, nearest by probes, next by
    weights, ...); candidates without a fingerprint, or comparable by neither part, first (they cannot be ruled out)."""
    w = {k: (weight_distance(new, f) if f is not None else math.nan) for k, f in index.items()}
    p = {k: (probe_distance(new, f) if f is not None else math.nan) for k, f in index.items()}
    wr, pr = _ranks(w), _ranks(p)
    unknown = [k for k in index if k not in wr and k not in pr]
    by_w, by_p = sorted(wr, key=wr.get), sorted(pr, key=pr.get)
    order = list(unknown)
    seen = set(order)
    for i in range(max(len(by_w), len(by_p))):
        for ranking in (by_w, by_p):
            if i < len(ranking) and ranking[i] not in seen:
                order.append(ranking[i])
                seen.add(ranking[i])
    return [Candidate(k, w[k], p[k], wr.get(k), pr.get(k)) for k in order]


def shortlist(new: Fingerprint, index: dict[str, Fingerprint | None], size: int) -> tuple[list[Candidate], list]:
    """(the `size` candidates to check in full, the rest), both in rank order; size 0 keeps every candidate. A
    candidate without a fingerprint is always kept (one beyond `size` too)."""
    if size < 0:
        raise ValueError(f"screening.shortlist must be >= 0 (0 = check every registered model), got {size}")
    ranked = rank(new, index)
    if size == 0:
        return ranked, []
    unknown = [c for c in ranked if c.weight_rank is None and c.probe_rank is None]
    known = [c for c in ranked if c.weight_rank is not None or c.probe_rank is not None]
    keep = max(0, size - len(unknown))
    return unknown + known[:keep], known[keep:]
