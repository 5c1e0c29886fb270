"""Multiple-histogram reweighting (Ferrenberg–Swendsen / WHAM) of tempered samples into ln ρ(z).

With H_k(b) counts and N_k samples of replica k at temperature T_k:
    ln ρ(b) = ln Σ_k H_k(b) − ln Σ_k N_k exp(f_k − E_b/T_k),   f_k = −ln Σ_b ρ(b) exp(−E_b/T_k).
The fixed point is the minimum of the convex function
    u(f) = Σ_b H(b) ln Σ_k N_k exp(f_k − E_b/T_k) − Σ_k N_k f_k,
which Newton's method (gauge f_0 = 0) reaches in a few dozen steps; the classic self-consistent
iteration needs thousands when replicas overlap little.

Newton starts from thermodynamic integration, f(β) = −ln Z(β) with df/dβ = ⟨E⟩_β (trapezoids over the ladder's
replica means). At a cold end of 1e-5, f spans ~1e5 across the ladder while each bin's replica weights are nearly
one-hot, so u is almost piecewise linear, its Hessian almost zero, and from f = 0 neither Newton nor the
self-consistent step gets anywhere (llama-25's ladder ran 2,000 iterations, 35 minutes, without converging);
from the integrated f a handful of Newton steps suffice.

Bin-centre energies bias ρ by up to exp(±Δz/2T) inside a bin, so the solver runs on a grid fine
enough that Δz/T_min is small, and results are summed onto the user's bins afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def logsumexp(a: np.ndarray, axis=None, keepdims=False) -> np.ndarray:
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axis)


def _logsumexp_consuming(x: np.ndarray, axis: int) -> np.ndarray:
    """logsumexp of a 2-D array along `axis`, overwriting `x` (no temporary of its size)."""
    m = np.max(x, axis=axis, keepdims=True)
    m[~np.isfinite(m)] = 0.0
    x -= m
    np.exp(x, out=x)
    with np.errstate(divide="ignore"):
        return np.log(np.sum(x, axis=axis)) + np.squeeze(m, axis=axis)


@dataclass
class WhamResult:
    ln_rho: np.ndarray  # [B], −inf where no sample fell; gauge: f_0 = 0
    f: np.ndarray  # [K]
    iterations: int
    residual: float  # max |f − f(ln ρ(f))| at the end


def wham(
    hist: np.ndarray,
    energies: np.ndarray,
    temperatures: np.ndarray,
    f0: np.ndarray | None = None,
    tol: float = 1e-10,
    max_iter: int = 2000,
) -> WhamResult:
    """Solve the WHAM equations for per-replica histograms `hist` [K, B] on bin energies [B]."""
    hist = np.asarray(hist, dtype=np.float64)
    e = np.asarray(energies, dtype=np.float64)
    beta = 1.0 / np.asarray(temperatures, dtype=np.float64)
    n_k = hist.sum(1)
    if (n_k <= 0).any():
        raise ValueError("every replica needs at least one sample for reweighting")
    h = hist.sum(0)
    used = h > 0
    h_u = h[used]
    # energies from the lowest occupied one: the same ln ρ, but f'_k = f_k − β_k·E_ref stays of the order of ln ρ
    # instead of β_k·E (~1e5 at T = 1e-5), so u and its comparisons keep their precision
    e_ref = float(e[used].min())
    e_u = e[used] - e_ref
    log_n = np.log(n_k)
    a = np.outer(e_u, -beta)  # [B_used, K]: ln N_k − β_k E_b
    a += log_n

    # every [B, K] temporary is made in place (a, and at most one more, alive at a time): at llama-25's 300,000
    # occupied sub-bins × 24 temperatures one such array is 55 MiB
    def objective(f):
        lse = _logsumexp_consuming(a + f, axis=1)
        return float(h_u @ lse - n_k @ f), lse

    def free_energies_of(ln_rho_used):  # f_k = −ln Σ_b ρ(b) exp(−β_k E_b) (−β_k E_b = a − ln N_k), gauged
        x = a + ln_rho_used[:, None]
        x -= log_n
        return gauged(-_logsumexp_consuming(x, axis=0))

    def gauged(f):
        return f - f[0]

    if f0 is not None:
        f = gauged(np.asarray(f0, dtype=np.float64) - beta * e_ref)
        u, lse = objective(f)
    else:  # whichever start is lower: integrated (usually far better), or zeros (a ladder whose means jump)
        starts = [gauged(integrated_free_energies(hist[:, used], e_u, beta)), np.zeros(len(beta))]
        f, u, lse = min(((f, *objective(f)) for f in starts), key=lambda c: c[1])
    log_h = np.log(h_u)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (`it` is reported after the loop)
        w = a + f  # [B, K] posterior replica weights per bin
        w -= lse[:, None]
        np.exp(w, out=w)
        h_w = h_u @ w
        grad = h_w - n_k
        if np.max(np.abs(grad[1:])) < tol * n_k.sum():
            del w
            break
        # Newton step on the free components, backtracked until u decreases: where each bin's replica weights are
        # nearly one-hot the Hessian is nearly singular and the step far too long, so halve it up to 60 times; only
        # if that fails, the self-consistent update, which always lowers u but may need thousands of steps.
        w *= np.sqrt(h_u)[:, None]
        hess = np.diag(h_w) - w.T @ w
        del w
        step = np.zeros_like(f)
        try:
            step[1:] = -np.linalg.solve(hess[1:, 1:], grad[1:])
        except np.linalg.LinAlgError:
            step[1:] = -np.linalg.lstsq(hess[1:, 1:], grad[1:], rcond=None)[0]
        candidate = None
        if np.isfinite(step).all():
            for j in range(61):
                u_new, lse_new = objective(f + 0.5**j * step)
                if u_new < u:
                    candidate = (f + 0.5**j * step, u_new, lse_new)
                    break
        if candidate is None:
            f_sc = free_energies_of(log_h - lse)
            candidate = (f_sc, *objective(f_sc))
        f, u, lse = candidate
    ln_rho = np.full(len(e), -np.inf)
    ln_rho[used] = np.log(h_u) - lse + beta[0] * e_ref  # in the gauge of the f returned (f_0 = 0)
    residual = float(np.max(np.abs(free_energies_of(log_h - lse) - f)))
    return WhamResult(ln_rho=ln_rho, f=gauged(f + beta * e_ref), iterations=it, residual=residual)


def integrated_free_energies(hist: np.ndarray, energies: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """f_k = −ln Z(β_k) up to a constant by thermodynamic integration of df/dβ = ⟨E⟩_β (the trapezoid rule over
    the replicas' mean energies, in order of β): WHAM's starting point, exact when neighbours' means are close."""
    mean_e = (hist @ energies) / hist.sum(1)
    order = np.argsort(beta)
    b, m = beta[order], mean_e[order]
    f = np.empty(len(beta))
    f[order] = np.concatenate([[0.0], np.cumsum(0.5 * (m[1:] + m[:-1]) * np.diff(b))])
    return f


def log_weights(z: np.ndarray, f: np.ndarray, n_k: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """ln w(x) = −ln Σ_k N_k exp(f_k − z(x)/T_k): a pooled sample's weight towards the uniform measure.

    Σ over a bin's samples of w estimates ρ(bin), so drawing samples ∝ w inside a bin draws x
    uniformly from that bin's inputs, at the sample's exact z rather than the bin centre."""
    beta = 1.0 / np.asarray(temperatures, dtype=np.float64)
    shift = np.log(n_k) + np.asarray(f, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    out = np.empty(len(z))
    for start in range(0, len(z), 1 << 16):  # in blocks: a [records, K] array is 127 MiB at llama-25's size
        a = np.outer(z[start : start + (1 << 16)], -beta)
        a += shift
        out[start : start + len(a)] = -_logsumexp_consuming(a, axis=1)
    return out


def solver_subdivisions(edges: np.ndarray, t_min: float, max_bias: float = 0.02) -> int:
    """Sub-bins per user bin so that a sub-bin-centre energy biases by at most exp(max_bias)."""
    width = float(edges[1] - edges[0])
    return max(1, int(np.ceil(width / (2 * max_bias * t_min))))


def solver_grid(edges: np.ndarray, t_min: float, max_bias: float = 0.02) -> tuple[np.ndarray, int]:
    """The dense sub-bin edges and subdivisions (for small grids and tests: the solver itself only ever builds the
    occupied sub-bins, since the grid has width / (2·max_bias·T_min) sub-bins per bin: 500,000 at T_min = 1e-6)."""
    sub = solver_subdivisions(edges, t_min, max_bias)
    return np.linspace(edges[0], edges[-1], (len(edges) - 1) * sub + 1), sub


def sub_bin_centres(edges: np.ndarray, sub: int, sub_bins: np.ndarray) -> np.ndarray:
    """Centres of the given global sub-bin indices (bin · sub + part), without building the grid."""
    coarse, part = np.divmod(np.asarray(sub_bins, dtype=np.int64), sub)
    return edges[coarse] + (part + 0.5) * (edges[coarse + 1] - edges[coarse]) / sub


def group_logsumexp(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """ln Σ exp(values) per group (−inf for empty groups), shifted per group so nothing underflows."""
    top = np.full(n_groups, -np.inf)
    np.maximum.at(top, groups, values)
    shift = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.bincount(groups, weights=np.exp(values - shift[groups]), minlength=n_groups)) + shift


def coarsen(ln_rho_fine: np.ndarray, sub: int) -> np.ndarray:
    return logsumexp(ln_rho_fine.reshape(-1, sub), axis=1)
