"""Stage 2: evaluate one model's representative inputs on the other model.

Draw `n_draws` bins b ∝ ρ̃_src(b) among the bins inside Z; in each, pick one sampled input; score
it with both models and record D = z_A − z_B (always A minus B, whichever model sampled) and
whether the *other* model's z lies in Z.

Within a bin, `within_bin="reweight"` (default) picks inputs ∝ their WHAM weight at their exact z,
which makes the pick uniform over the bin's inputs; `"uniform"` picks a recorded sample uniformly,
as the paper states it, and carries a within-bin bias of up to exp(Δz/T) from the cold replicas.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from . import WITHIN_BIN, check_z_range
from .outdist import OutputDistribution
from .space import InputSpace
from .uncertainty import ln_bin_probabilities

ROLES = ("A", "B")


class EmptyBinsError(ValueError):
    pass


def check_no_empty_bins(od: OutputDistribution) -> list[int]:
    """Raise on bins inside Z that no sample reached. Empty bins at the bottom of Z (below the lowest bin reached)
    are accepted, and returned for the caller to log, only when the coldest replica (the lowest temperature by
    value) demonstrably went below z−: then the sampler explored there and found no input. Otherwise they may hold
    inputs it never got to, and zero mass would be a silent guess. A gap between sampled bins, or empty bins above
    them, means the sampler did not cover Z."""
    empty = od.empty_bins_in_z
    reached = np.flatnonzero(od.in_z & np.isfinite(od.ln_rho))
    if len(reached) == 0:
        raise EmptyBinsError(
            f"no sample reached z_range={list(od.z_range)}: sample at temperatures whose "
            "outputs fall in that range, or move z_range to the sampled outputs"
        )
    below = empty[empty < reached[0]]
    gaps = empty[empty > reached[0]]
    if len(gaps):
        lo, hi = od.edges[gaps[0]], od.edges[gaps[0] + 1]
        raise EmptyBinsError(
            f"{len(gaps)} of {int(od.in_z.sum())} bins inside z_range={list(od.z_range)} got no sample "
            f"(first: [{lo:.4g}, {hi:.4g}]): sample longer or with more temperatures covering that range, "
            "or narrow z_range to what was reached; if the model truly has no input there (small "
            "discrete spaces have gaps), set allow_empty_bins=true"
        )
    if len(below):
        coldest = int(np.argmin(od.temperatures))
        under_z = od.edges[1:] <= od.z_range[0]  # bins wholly below z−
        if not od.hist[coldest, under_z].any():
            raise EmptyBinsError(
                f"the lowest {len(below)} bins of z_range={list(od.z_range)} got no sample and the coldest "
                f"replica (T = {od.temperatures[coldest]:.3g}) never went below z− = {od.z_range[0]:g}, so they may "
                "hold inputs the sampler did not reach: lower sampler.t_min or sample longer, raise z_range's lower "
                f"end to {od.edges[reached[0]]:.4g}, or set allow_empty_bins=true if the model has no input there"
            )
    return below.tolist()


def draw_representatives(
    od: OutputDistribution, n_draws: int, seed: int = 0, within_bin: str = "reweight", allow_empty_bins: bool = False
) -> np.ndarray:
    """Row indices into `od.representatives`, one per draw, in draw order."""
    if within_bin not in WITHIN_BIN:
        raise ValueError(f"within_bin must be one of {WITHIN_BIN}, got {within_bin!r}")
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    if not allow_empty_bins:
        check_no_empty_bins(od)
    reps = od.representatives
    if len(reps) == 0:
        raise EmptyBinsError(f"no sampled input has z inside z_range={list(od.z_range)}")
    rng = np.random.default_rng(seed)
    rep_bin = reps["bin"].to_numpy()
    score = reps["ln_weight"].to_numpy() if within_bin == "reweight" else np.log(reps["count"].to_numpy(float))
    p_bin = np.exp(ln_bin_probabilities(od.ln_rho, od.in_z, rep_bin, score))  # the law uncertainty.py reweights
    p_bin /= p_bin.sum()
    drawn_bins = rng.choice(len(p_bin), size=n_draws, p=p_bin)
    out = np.empty(n_draws, dtype=np.int64)
    order = np.argsort(rep_bin, kind="stable")
    starts = np.searchsorted(rep_bin[order], np.arange(len(p_bin) + 1))
    for b in np.flatnonzero(np.bincount(drawn_bins, minlength=len(p_bin))):
        rows = order[starts[b] : starts[b + 1]]
        w = np.exp(score[rows] - score[rows].max())
        slots = np.flatnonzero(drawn_bins == b)
        out[slots] = rng.choice(rows, size=len(slots), p=w / w.sum())
    return out


def cross_evaluate(
    od: OutputDistribution,
    space: InputSpace,
    scorer_src,
    scorer_other,
    n_draws: int,
    role: str = "A",
    seed: int = 0,
    within_bin: str = "reweight",
    allow_empty_bins: bool = False,
    decode=None,
) -> pd.DataFrame:
    """Draws of the source model (`role` "A" or "B") scored by both models: the rows of draws.parquet."""
    if role not in ROLES:
        raise ValueError(f"role must be 'A' or 'B' (the sampling model's side), got {role!r}")
    lo, hi = check_z_range(od.z_range)
    rows = draw_representatives(od, n_draws, seed, within_bin, allow_empty_bins)
    distinct, inverse = np.unique(rows, return_inverse=True)
    tokens = np.stack(od.representatives["tokens"].to_numpy()[distinct]).astype(np.int64)
    if tokens.shape[1] != space.length:
        raise ValueError(
            f"representatives have length {tokens.shape[1]} but space.length is {space.length}: "
            "the output distribution was sampled in a different input space"
        )
    ids = torch.from_numpy(tokens)
    z_src = scorer_src(ids).numpy()[inverse]  # recomputed, not trusted from the sampler
    z_other = scorer_other(ids).numpy()[inverse]
    z_a, z_b = (z_src, z_other) if role == "A" else (z_other, z_src)
    df = pd.DataFrame(
        {
            "draw": np.arange(n_draws),
            "representative": rows,
            "tokens": list(tokens[inverse]),
            "z_A": z_a,
            "z_B": z_b,
            "D": z_a.astype(np.float64) - z_b,
            "in_z_other": (z_other >= lo) & (z_other <= hi),
            "bin": od.representatives["bin"].to_numpy()[rows],
        }
    )
    if decode is not None:
        texts = [decode(t) for t in tokens]
        df.insert(3, "text", [texts[i] for i in inverse])
    df.attrs.update(role=role, n_distinct=int(len(distinct)))
    return df
