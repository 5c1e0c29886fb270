"""Stage-1 results made from numpy samples of known distributions over a finite space with known z, so the
uncertainty replicates can be checked exactly and quickly, without a model:
- `ancestral_outdist`: the OutputDistribution that `sampler.method: ancestral` produces (importance samples in blocks);
- `mixed_tempering`: a TemperingResult whose records are exact i.i.d. draws of every replica's target (chains that
  mix perfectly), for the tempering path's algebra."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from modeldiff.method.outdist import OutputDistribution, make_edges
from modeldiff.method.reweighting import logsumexp
from modeldiff.method.space import InputSpace
from modeldiff.method.tempering import TemperingResult


def _per_block(values: np.ndarray, rows: np.ndarray, block: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """ln Σ exp(values) per (row, block) cell, −inf where no sample fell."""
    out = np.zeros(shape)
    np.add.at(out, (rows, block), np.exp(values))
    with np.errstate(divide="ignore"):
        return np.log(out)


def ancestral_outdist(
    z: np.ndarray, ln_q: np.ndarray, n_units: int, unit_size: int, z_range, width: float, rng: np.random.Generator
) -> OutputDistribution:
    """`n_units` blocks of `unit_size` i.i.d. draws x ~ q (ln_q over the space's inputs, normalised), weighted
    w = 1/q towards the uniform measure: ρ(b) = Σ_i w_i 1{z(x_i) ∈ b} / N, representatives ∝ Σ of their weights."""
    lo, hi = z_range
    n = n_units * unit_size
    x = rng.choice(len(z), size=n, p=np.exp(ln_q - logsumexp(ln_q)))
    ln_w = -(ln_q[x] - logsumexp(ln_q))
    block = np.repeat(np.arange(n_units), unit_size)
    edges = make_edges(float(z.min()), float(z.max()), z_range, width)
    n_bins = len(edges) - 1
    sample_bin = np.clip(np.searchsorted(edges, z[x], side="right") - 1, 0, n_bins - 1)
    unit_ln_rho = _per_block(ln_w, block, sample_bin, (n_units, n_bins))
    ln_rho = logsumexp(unit_ln_rho, axis=0) - np.log(n)
    inside = (z[x] >= lo) & (z[x] <= hi)
    distinct, rep_of_sample = np.unique(x[inside], return_inverse=True)
    rep_unit_ln_weight = _per_block(ln_w[inside], rep_of_sample, block[inside], (len(distinct), n_units))
    reps = pd.DataFrame(
        {
            "tokens": [np.array([i]) for i in distinct],
            "z": z[distinct],
            "count": np.bincount(rep_of_sample),
            "ln_weight": logsumexp(rep_unit_ln_weight, axis=1),
            "bin": np.clip(np.searchsorted(edges, z[distinct], side="right") - 1, 0, n_bins - 1),
        }
    )
    return OutputDistribution(
        edges=edges,
        ln_rho=ln_rho,
        ln_rho_std=np.full(n_bins, np.nan),
        hist=np.bincount(sample_bin, minlength=n_bins)[None, :].astype(float),
        temperatures=np.ones(1),
        f=np.zeros(1),
        z_range=(float(lo), float(hi)),
        representatives=reps,
        meta={"method": "ancestral", "n_units": n_units, "unit_sizes": [unit_size] * n_units},
        rep_unit_ln_weight=rep_unit_ln_weight,
        unit_ln_rho=unit_ln_rho,
    )


def draws_of(od: OutputDistribution, rows: np.ndarray, z_src: np.ndarray, z_other: np.ndarray, role: str):
    """The draws.parquet columns normalize and annotate read, for drawn representative rows of a synthetic space
    whose inputs are their own index (tokens [i])."""
    x = np.array([t[0] for t in od.representatives["tokens"].to_numpy()[rows]])
    z_a, z_b = (z_src[x], z_other[x]) if role == "A" else (z_other[x], z_src[x])
    lo, hi = od.z_range
    return pd.DataFrame(
        {
            "draw": np.arange(len(rows)),
            "representative": rows,
            "tokens": [np.array([i]) for i in x],
            "z_A": z_a,
            "z_B": z_b,
            "D": z_a - z_b,
            "in_z_other": (z_other[x] >= lo) & (z_other[x] <= hi),
        }
    )


def mixed_tempering(
    space: InputSpace, z: np.ndarray, temperatures, ladders: int, per_replica: int, rng: np.random.Generator
) -> TemperingResult:
    """`per_replica` records per (ladder, temperature), each an exact draw of π_k(x) ∝ exp(−z(x)/T_k) over Ω."""
    temperatures = np.asarray(temperatures, dtype=np.float64)
    index, replica, ladder = [], [], []
    for c in range(ladders):
        for k, t in enumerate(temperatures):
            ln_p = -z / t
            index.append(rng.choice(len(z), size=per_replica, p=np.exp(ln_p - logsumexp(ln_p))))
            replica.append(np.full(per_replica, k))
            ladder.append(np.full(per_replica, c))
    index = np.concatenate(index)
    n = len(index)
    return TemperingResult(
        ids=space.index_to_ids(index),
        z=z[index].astype(np.float32),
        replica=np.concatenate(replica).astype(np.int16),
        ladder=np.concatenate(ladder).astype(np.int32),
        step=np.zeros(n, dtype=np.int32),
        temperatures=temperatures,
        acceptance=np.ones(len(temperatures)),
        swap_acceptance=np.ones(len(temperatures) - 1),
        seconds=0.0,
        n_scored=n,
    )


class ExactScorer:
    """z from a table over Ω (enumeration order): a model's exact scores, so the coverage tests can run many
    samplers in the time one would need with forward passes."""

    def __init__(self, space: InputSpace, z: np.ndarray):
        self.space, self.z, self.n_scored = space, torch.from_numpy(np.asarray(z, dtype=np.float32)), 0

    def __call__(self, ids) -> torch.Tensor:
        ids = torch.as_tensor(ids)
        self.n_scored += ids.shape[0]
        return self.z[torch.from_numpy(self.space.ids_to_index(ids.numpy()))]
