"""Multiple-histogram reweighting (Ferrenberg–Swendsen / WHAM) of tempered samples into ln ρ(z).

With H_k(b) counts and N_k samples of replica k at temperature T_k:
    ln ρ(b) = ln Σ_k H_k(b) − ln Σ_k N_k exp(f_k − E_b/T_k),   f_k = −ln Σ_b ρ(b) exp(−E_b/T_k).
The fixed point is the minimum of the convex function
    u(f) = Σ_b H(b) ln Σ_k N_k exp(f_k − E_b/T_k) − Σ_k N_k f_k,
which Newton's method (gauge f_0 = 0) reaches in a few dozen steps; the classic self-consistent
iteration needs thousands when replicas overlap little.

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
    h_u, e_u = h[used], e[used]
    log_n = np.log(n_k)
    a = -np.outer(e_u, beta) + log_n  # [B_used, K]: ln N_k − β_k E_b

    def objective(f):
        lse = logsumexp(a + f, axis=1)
        return float(h_u @ lse - n_k @ f), lse

    f = np.zeros(len(beta)) if f0 is None else np.asarray(f0, dtype=np.float64)
    f = f - f[0]
    u, lse = objective(f)
    log_h = np.log(h_u)
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (`it` is reported after the loop)
        w = np.exp(a + f - lse[:, None])  # [B, K] posterior replica weights per bin
        grad = h_u @ w - n_k
        if np.max(np.abs(grad[1:])) < tol * n_k.sum():
            break
        # Newton step on the free components; when it does not lower u (ill-conditioned Hessian
        # early on), fall back to the self-consistent update, which always does.
        hess = np.diag(h_u @ w) - (w * h_u[:, None]).T @ w
        step = np.zeros_like(f)
        try:
            step[1:] = -np.linalg.solve(hess[1:, 1:], grad[1:])
        except np.linalg.LinAlgError:
            step[:] = np.nan
        candidate = None
        if np.isfinite(step).all():
            for t in (1.0, 0.5, 0.25, 0.125):
                u_new, lse_new = objective(f + t * step)
                if u_new < u:
                    candidate = (f + t * step, u_new, lse_new)
                    break
        if candidate is None:
            f_sc = -logsumexp((log_h - lse)[:, None] - np.outer(e_u, beta), axis=0)
            f_sc -= f_sc[0]
            candidate = (f_sc, *objective(f_sc))
        f, u, lse = candidate
    ln_rho = np.full(len(e), -np.inf)
    ln_rho[used] = np.log(h_u) - lse
    f_check = -logsumexp(ln_rho[used][:, None] - np.outer(e_u, beta), axis=0)
    f_check -= f_check[0]
    return WhamResult(ln_rho=ln_rho, f=f, iterations=it, residual=float(np.max(np.abs(f_check - f))))


def log_weights(z: np.ndarray, f: np.ndarray, n_k: np.ndarray, temperatures: np.ndarray) -> np.ndarray:
    """ln w(x) = −ln Σ_k N_k exp(f_k − z(x)/T_k): a pooled sample's weight towards the uniform measure.

    Σ over a bin's samples of w estimates ρ(bin), so drawing samples ∝ w inside a bin draws x
    uniformly from that bin's inputs, at the sample's exact z rather than the bin centre."""
    beta = 1.0 / np.asarray(temperatures, dtype=np.float64)
    a = np.log(n_k)[None, :] + np.asarray(f)[None, :] - np.outer(np.asarray(z, dtype=np.float64), beta)
    return -logsumexp(a, axis=1)


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
