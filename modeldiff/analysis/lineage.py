"""The lineage index: a cheap fingerprint per model, and the shortlist of registered models worth a full check.

Screening a new version against every registered one with the full Model-diff check costs O(N) chains. A fingerprint
costs one pass over the weights and one forward pass over a few probe inputs, and comparing two fingerprints costs
microseconds, so a new version is compared with every fingerprint of its vocabulary and the full check runs only
against the few nearest (the shortlist).

A fingerprint has two parts:
- **a weight sketch per matrix**, grouped by shape: for W [m, n] (higher ranks as [shape[0], -1]), the two Gram
  matrices W^T W and W W^T, centred (their mean diagonal taken off) and projected to k × k by a fixed random
  projection Ω per axis length (Ω_n^T W^T W Ω_n = (W Ω_n)^T (W Ω_n), cost m·n·k), seeded by the length, so every
  model with that shape uses the same projection. W^T W is unchanged when W's rows are permuted and W W^T when its
  columns are, so a copy whose hidden units or attention heads were relabelled (one axis of each tensor) keeps one of
  the two exactly; a tensor's distance is the smaller of the two Grams' relative distances, and the weight distance
  their mean over matrices. Weight noise of relative size σ moves a centred Gram by about σ relative to its own
  spread, an independently initialised model by about √2; vectors (norm gains, biases) are left out: they
  initialise to constants, so independent models share them. Only models with the same shapes compare by weights.
  Not covered by this part: a copy whose residual axis was relabelled too (both axes of most tensors move); the
  probes see it, as any relabelling computes the same function.
- **the per-token NLLs of a fixed probe set**: `probes` sequences drawn uniformly from the input space with a seed
  derived from the vocabulary key, the same for every model of that vocabulary. Random inputs are far from any
  training data, where independently trained models disagree most and a copy still follows its parent.

The shortlist interleaves the two rankings (nearest by weights, nearest by probes, next by weights, ...) so a model
near by either criterion is on it. No MLflow here: the platform stores fingerprints with the versions.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
from dataclasses import dataclass

import numpy as np
import torch

from modeldiff.method.scoring import Scorer
from modeldiff.method.space import InputSpace

SKETCH_SIZE = 16  # k: each Gram matrix is projected to k × k (stored as its k(k+1)/2 upper triangle)
FORMAT = 2  # bumped when the fingerprint's definition changes (older ones are recomputed)


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
    data = np.ascontiguousarray(probes, dtype=np.int64).tobytes() + str(bos_token_id).encode()
    return hashlib.sha256(data).hexdigest()[:16]


@functools.lru_cache(maxsize=256)
def projection(length: int, k: int = SKETCH_SIZE) -> torch.Tensor:
    """The fixed random projection [length, k] of an axis of this length (the same in every process and model)."""
    seed = int.from_bytes(hashlib.sha256(f"modeldiff.lineage|{length}|{k}".encode()).digest()[:8], "little")
    omega = np.random.default_rng(seed).standard_normal((length, k)) / math.sqrt(k)
    return torch.from_numpy(omega).float()


def _centred_gram_sketch(w: torch.Tensor, k: int) -> np.ndarray:
    """Ω^T (W^T W − tr(W^T W)/n · I) Ω for W [m, n] and Ω = projection(n): its upper triangle, float64."""
    omega = projection(w.shape[1], k).to(w.device)
    a = (w @ omega).double()
    s = a.T @ a - (w.double().square().sum() / w.shape[1]) * (omega.double().T @ omega.double())
    return s.cpu().numpy()[np.triu_indices(k)]


def matrix_sketch(t: torch.Tensor, k: int = SKETCH_SIZE) -> np.ndarray:
    """[2, k(k+1)/2]: the centred, projected Gram of the columns (invariant to permuting rows) and of the rows."""
    w = t.detach().float().reshape(t.shape[0], -1)
    return np.stack([_centred_gram_sketch(w, k), _centred_gram_sketch(w.T, k)])


def shape_key(shape) -> str:
    return "x".join(map(str, shape))


@torch.no_grad()
def weight_sketches(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """{shape: [matrices of that shape in parameter order, 2, k(k+1)/2]} (tied weights appear once)."""
    groups: dict[str, list[np.ndarray]] = {}
    for _, p in model.named_parameters():
        if p.is_floating_point() and p.ndim >= 2 and p.numel():
            groups.setdefault(shape_key(p.shape), []).append(matrix_sketch(p))
    return {key: np.stack(v) for key, v in groups.items()}


@dataclass
class Fingerprint:
    """A model's fingerprint: weight sketches by shape and its per-token NLLs on the probe set ([probes, L]) of its
    vocabulary (`vocabulary`: the key models must share to be compared)."""

    sketches: dict[str, np.ndarray]
    probe_nll: np.ndarray
    probe_key: str
    vocabulary: str
    format: int = FORMAT

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            probe_nll=self.probe_nll.astype(np.float32),
            probe_key=np.array(self.probe_key),
            vocabulary=np.array(self.vocabulary),
            format=np.array(self.format),
            **{f"sketch/{key}": v for key, v in self.sketches.items()},
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Fingerprint:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                fmt = int(z["format"])
                if fmt != FORMAT:
                    raise ValueError(f"format {fmt}, this version of modeldiff reads {FORMAT}")
                sketches = {k.removeprefix("sketch/"): z[k] for k in z.files if k.startswith("sketch/")}
                return cls(sketches, z["probe_nll"].astype(np.float64), str(z["probe_key"]), str(z["vocabulary"]))
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise ValueError(
                f"not a usable lineage fingerprint ({e}): recompute it (screen the version again)"
            ) from None


def fingerprint(model: torch.nn.Module, space: InputSpace, vocabulary_key: str, n_probes: int, **scorer) -> Fingerprint:
    """The fingerprint of a model over its input space (`scorer`: Scorer's keyword arguments, e.g. batch_size)."""
    probes = probe_inputs(space, vocabulary_key, n_probes)
    lp = Scorer(model, space.bos_token_id, **scorer).token_logprobs(torch.from_numpy(probes))
    nll = -lp.double().numpy()
    if not np.isfinite(nll).all():
        raise FloatingPointError("the model gives non-finite log-probabilities on the probe inputs: check its weights")
    return Fingerprint(weight_sketches(model), nll, probe_key(probes, space.bos_token_id), vocabulary_key)


def _relative(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """‖a − b‖ / RMS(‖a‖, ‖b‖) over the last axis (0 where both are 0)."""
    norm = np.sqrt(((a - b) ** 2).sum(-1))
    scale = np.sqrt(((a**2).sum(-1) + (b**2).sum(-1)) / 2)
    return np.where(scale > 0, norm / np.where(scale > 0, scale, 1.0), 0.0)


def weight_distance(a: Fingerprint, b: Fingerprint) -> float:
    """Mean over matrices of the smaller of their two Grams' relative sketch distances (0: same weights up to
    relabelled units/heads; about √2 for independent initialisations); NaN unless both have the same matrix shapes."""
    if not a.sketches or set(a.sketches) != set(b.sketches):
        return math.nan
    if any(a.sketches[k].shape != b.sketches[k].shape for k in a.sketches):
        return math.nan
    parts = [_relative(a.sketches[k], b.sketches[k]).min(axis=-1) for k in sorted(a.sketches)]
    return float(np.concatenate(parts).mean())


def probe_distance(a: Fingerprint, b: Fingerprint) -> float:
    """Root-mean-square difference of the per-token probe NLLs, relative to their spread; NaN for different probes."""
    if a.probe_key != b.probe_key or a.probe_nll.shape != b.probe_nll.shape:
        return math.nan
    d = a.probe_nll - b.probe_nll
    spread = math.sqrt((a.probe_nll.var() + b.probe_nll.var()) / 2)
    rms = math.sqrt(float((d**2).mean()))
    return rms / spread if spread > 0 else rms


@dataclass(frozen=True)
class Candidate:
    key: str  # the caller's name for the candidate (e.g. a models:/ URI)
    weight_distance: float  # NaN: not comparable by weights (or no fingerprint)
    probe_distance: float  # NaN: other probes (or no fingerprint)
    weight_rank: int | None  # 1 = nearest by weights among comparable candidates
    probe_rank: int | None

    @property
    def known(self) -> bool:
        return self.weight_rank is not None or self.probe_rank is not None

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
    """The candidates of `index` ({key: fingerprint, None where it has none}) with their distances to `new`, in the
    shortlist's order: those without a fingerprint first (they cannot be ruled out), then the weight and probe
    rankings interleaved (nearest by weights, nearest by probes, next by weights, ...), then those comparable by
    neither part. A fingerprint of another vocabulary is left out: those models are never compared."""
    index = {k: f for k, f in index.items() if f is None or f.vocabulary == new.vocabulary}
    w = {k: (weight_distance(new, f) if f is not None else math.nan) for k, f in index.items()}
    p = {k: (probe_distance(new, f) if f is not None else math.nan) for k, f in index.items()}
    wr, pr = _ranks(w), _ranks(p)
    order = [k for k, f in index.items() if f is None]
    seen = set(order)
    by_w, by_p = sorted(wr, key=wr.get), sorted(pr, key=pr.get)
    for i in range(max(len(by_w), len(by_p))):
        for ranking in (by_w, by_p):
            if i < len(ranking) and ranking[i] not in seen:
                order.append(ranking[i])
                seen.add(ranking[i])
    order += [k for k in index if k not in seen]
    return [Candidate(k, w[k], p[k], wr.get(k), pr.get(k)) for k in order]


def shortlist(
    new: Fingerprint, index: dict[str, Fingerprint | None], size: int
) -> tuple[list[Candidate], list[Candidate]]:
    """(the candidates to check in full, the rest), both in rank order: the `size` nearest plus every candidate
    without a fingerprint (which cannot be ruled out); size 0 keeps every candidate."""
    if size < 0:
        raise ValueError(f"screening.shortlist must be >= 0 (0 = check every registered model), got {size}")
    ranked = rank(new, index)
    if size == 0:
        return ranked, []
    unknown = [c for c in ranked if math.isnan(c.weight_distance) and math.isnan(c.probe_distance)]
    known = [c for c in ranked if c not in unknown]
    return unknown + known[:size], known[size:]
