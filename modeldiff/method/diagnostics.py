"""Convergence diagnostics for parallel tempering: per-bin split-R̂ across ladders and effective sample sizes.

The estimate of a bin's share of Z, p(b) = Σ w 1{b} / Σ w 1{Z} (w: each record's pooled WHAM weight), is a ratio,
so both statistics use its linearisation u_t = (s_t(b) − p̂(b)·n_t) / n̄ per recorded step t of a chain (s_t, n_t:
the weighted counts of that step's records over all temperatures of the ladder). Each ladder is split into its first
and second half ("split" R̂: a chain that drifts disagrees with itself). With J half-ladders of T steps,
    R̂ = sqrt(((T − 1)/T · W + B/T) / W),   W = mean within-half variance, B/T = variance of the half means,
    ESS = σ² / Var(ū) with Var(ū) = (B/T) / J, σ² the variance of u over every step,
capped by the number of steps and by the distinct inputs recorded in the bin: an ESS counts independent inputs,
never draws. Ladders are independent, so the spread of their halves measures the error honestly however long the
chains' memory. Thresholds, as is usual for MCMC: R̂ > 1.1 or ESS < 100 is a warning.
"""

from __future__ import annotations

import numpy as np

RHAT_MAX = 1.1
ESS_MIN = 100.0


def split_chains(ladder: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(half-ladder index, recorded-step index within it) of each record: each ladder's steps split at the median."""
    ladders, lad = np.unique(ladder, return_inverse=True)
    steps, st = np.unique(step, return_inverse=True)
    half = (st >= len(steps) // 2).astype(np.int64)
    chain = lad * 2 + half
    return chain, st - half * (len(steps) // 2)


def bin_diagnostics(
    ln_w: np.ndarray,
    bins: np.ndarray,
    in_z: np.ndarray,
    ladder: np.ndarray,
    step: np.ndarray,
    distinct_per_bin: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(split-R̂ [n_bins], ESS [n_bins]) for the bins in Z (NaN elsewhere, and where no record fell). `ln_w`, `bins`,
    `ladder`, `step`: per record; `in_z` per bin; `distinct_per_bin`: distinct inputs recorded in each bin."""
    n_bins = len(in_z)
    rhat, ess = np.full(n_bins, np.nan), np.full(n_bins, np.nan)
    inside = in_z[bins]
    if not inside.any():
        return rhat, ess
    chain, t = split_chains(ladder, step)
    n_chains, n_steps = int(chain.max()) + 1, int(t.max()) + 1
    w = np.exp(ln_w - ln_w[inside].max())
    z_bins = np.flatnonzero(in_z)
    col = np.full(n_bins, -1)
    col[z_bins] = np.arange(len(z_bins))
    cell = (chain * n_steps + t)[inside]
    s = np.zeros((n_chains * n_steps, len(z_bins)))  # weighted records per (half-ladder step, bin in Z)
    np.add.at(s, (cell, col[bins[inside]]), w[inside])
    n = s.sum(1)
    present = np.zeros(n_chains * n_steps, bool)
    present[(chain * n_steps + t)] = True  # steps a half-ladder has (the halves may differ by one)
    s, n = s[present], n[present]
    chain_of = np.repeat(np.arange(n_chains), n_steps)[present]
    p = s.sum(0) / n.sum()
    u = (s - n[:, None] * p[None, :]) / n.mean()
    _, chain_of = np.unique(chain_of, return_inverse=True)  # half-ladders with records only
    n_chains = int(chain_of.max()) + 1
    if n_chains < 2:  # one chain cannot disagree with another
        return rhat, ess
    counts = np.bincount(chain_of, minlength=n_chains).astype(np.float64)
    means = np.zeros((n_chains, u.shape[1]))
    np.add.at(means, chain_of, u)
    means /= counts[:, None]
    within = np.zeros_like(means)
    np.add.at(within, chain_of, (u - means[chain_of]) ** 2)
    within /= np.maximum(counts[:, None] - 1, 1)
    big_w = within.mean(0)
    between = means.var(0, ddof=1)  # B/T
    t_len = counts.mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.sqrt(((t_len - 1) / t_len * big_w + between) / big_w)
        e = u.var(0) / (between / n_chains)
    e = np.minimum(np.where(np.isfinite(e), e, len(u)), len(u))
    e = np.minimum(e, distinct_per_bin[z_bins])
    reached = p > 0
    rhat[z_bins[reached]], ess[z_bins[reached]] = r[reached], e[reached]
    return rhat, ess


def warnings_for(rhat: np.ndarray, ess: np.ndarray, edges: np.ndarray) -> list[str]:
    """One line per failed check over the bins in Z, saying where and what to do."""
    out = []
    for name, values, bad, limit in (
        ("split-R̂", rhat, rhat > RHAT_MAX, f"> {RHAT_MAX}"),
        ("ESS", ess, ess < ESS_MIN, f"< {ESS_MIN:.0f}"),
    ):
        bad = np.flatnonzero(np.nan_to_num(bad, nan=False))
        if len(bad):
            worst = bad[np.nanargmax(values[bad])] if name == "split-R̂" else bad[np.nanargmin(values[bad])]
            out.append(
                f"{len(bad)} bins in Z have {name} {limit} (worst {values[worst]:.3g} in "
                f"[{edges[worst]:.4g}, {edges[worst + 1]:.4g}]): the ladders disagree or saw few independent inputs "
                "there; sample longer (sampler.steps), with more ladders, or use sampler.method=ancestral"
            )
    return out
