"""The output distribution ρ̃(z) of one model and its representative inputs (stage 1's result).

Built from parallel-tempering records by WHAM (here) or from ancestral importance samples (`ancestral`); saved as
`outdist.npz` (bin edges, ln ρ, bootstrap std, per-replica/per-temperature histograms, free energies, and, where the
method has them, per-unit weights) plus `representatives.parquet` (the distinct sampled inputs inside Z with their z,
multiplicity and reweighting weight).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import check_z_range
from .reweighting import coarsen, log_weights, logsumexp, solver_grid, wham
from .space import InputSpace
from .tempering import TemperingResult

OUTDIST_FILE = "outdist.npz"
REPRESENTATIVES_FILE = "representatives.parquet"
UNIT_ARRAYS = ("rep_unit_ln_weight", "unit_ln_rho")  # OutputDistribution's optional per-unit arrays


def make_edges(z_min: float, z_max: float, z_range, width: float) -> np.ndarray:
    """Bins of ≈`width` that cover [z_min, z_max] and have both ends of Z as edges."""
    lo, hi = check_z_range(z_range)
    n_in = max(1, int(np.ceil((hi - lo) / width - 1e-9)))
    w = (hi - lo) / n_in  # shrink slightly so Z is a whole number of bins
    below = max(0, int(np.ceil((lo - z_min) / w)))
    above = max(0, int(np.ceil((z_max - hi) / w)))
    return lo + w * np.arange(-below, n_in + above + 1)


def bin_of(z: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The bin of each z (values beyond the ends go to the end bins)."""
    return np.clip(np.searchsorted(edges, z, side="right") - 1, 0, len(edges) - 2)


@dataclass
class OutputDistribution:
    edges: np.ndarray  # [B+1]
    ln_rho: np.ndarray  # [B]; −inf where no sample fell; scaled so Σρ = |Ω| if sampling covered Ω
    ln_rho_std: np.ndarray  # [B] bootstrap std over ladders of ln ρ normalised inside Z
    hist: np.ndarray  # [K, B] samples per replica (tempering) or per proposal temperature (ancestral)
    temperatures: np.ndarray  # [K]
    f: np.ndarray  # [K] WHAM free energies (gauge f_0 = 0); ancestral: zeros (every q_τ is normalised)
    z_range: tuple[float, float]
    representatives: pd.DataFrame  # distinct inputs with z ∈ Z: tokens, z, count, ln_weight, bin
    meta: dict = field(default_factory=dict)  # meta["method"]: "tempering" or "ancestral"
    # Per independent unit u (ancestral: a block of samples), for resampling units: with multiplicities m_u,
    # ρ̃_m(b) = Σ_u m_u exp(unit_ln_rho[u, b]) / Σ_u m_u N_u (N_u = meta["unit_sizes"][u]) and a representative's
    # weight is Σ_u m_u exp(rep_unit_ln_weight[x, u]). None where the method does not give them.
    rep_unit_ln_weight: np.ndarray | None = None  # [n_representatives, n_units] ln Σ of w over x's samples in u
    unit_ln_rho: np.ndarray | None = None  # [n_units, B] ln Σ of w over u's samples in bin b (−inf where none)

    @property
    def centers(self) -> np.ndarray:
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    @property
    def in_z(self) -> np.ndarray:
        lo, hi = self.z_range
        c = self.centers
        return (c > lo) & (c < hi)

    @property
    def empty_bins_in_z(self) -> np.ndarray:
        """Indices of bins inside Z that no sample reached (reported, never treated as zero)."""
        return np.flatnonzero(self.in_z & ~np.isfinite(self.ln_rho))

    def ln_rho_in_z(self) -> np.ndarray:
        """ln ρ̃ restricted to Z and normalised to Σ_Z ρ̃ = 1 (what stage 2 draws from)."""
        out = np.full_like(self.ln_rho, -np.inf)
        m = self.in_z & np.isfinite(self.ln_rho)
        out[m] = self.ln_rho[m] - logsumexp(self.ln_rho[m])
        return out

    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        np.savez(
            d / OUTDIST_FILE,
            edges=self.edges,
            ln_rho=self.ln_rho,
            ln_rho_std=self.ln_rho_std,
            hist=self.hist,
            temperatures=self.temperatures,
            f=self.f,
            z_range=np.asarray(self.z_range),
            meta=np.asarray(json.dumps(self.meta)),
            **{name: getattr(self, name) for name in UNIT_ARRAYS if getattr(self, name) is not None},
        )
        reps = self.representatives.copy()
        reps["tokens"] = [list(map(int, t)) for t in reps["tokens"]]
        reps.to_parquet(d / REPRESENTATIVES_FILE, index=False)
        return d

    @classmethod
    def load(cls, directory: str | Path) -> OutputDistribution:
        d = Path(directory)
        if not (d / OUTDIST_FILE).exists():
            raise FileNotFoundError(f"no {OUTDIST_FILE} in {d}: pass the directory written by sample_outdist")
        with np.load(d / OUTDIST_FILE) as npz:
            arrays = {k: npz[k] for k in npz.files}
        reps = pd.read_parquet(d / REPRESENTATIVES_FILE)
        reps["tokens"] = [np.asarray(t, dtype=np.int64) for t in reps["tokens"]]
        return cls(
            edges=arrays["edges"],
            ln_rho=arrays["ln_rho"],
            ln_rho_std=arrays["ln_rho_std"],
            hist=arrays["hist"],
            temperatures=arrays["temperatures"],
            f=arrays["f"],
            z_range=tuple(float(v) for v in arrays["z_range"]),
            representatives=reps,
            meta=json.loads(str(arrays["meta"])),
            **{name: arrays.get(name) for name in UNIT_ARRAYS},
        )


def unique_rows(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct rows of an int matrix, fast: compare rows as opaque byte strings."""
    ids = np.ascontiguousarray(ids)
    keys = ids.view(np.dtype((np.void, ids.dtype.itemsize * ids.shape[1]))).ravel()
    _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    return first, inverse, counts


def _bootstrap_std(
    per_ladder: np.ndarray,
    fine_centres: np.ndarray,
    temps: np.ndarray,
    f0: np.ndarray,
    sub: int,
    in_z: np.ndarray,
    n_bootstrap: int,
    seed: int,
) -> tuple[np.ndarray, int]:
    """Std of ln ρ (normalised inside Z) over resamples of the ladders, each solved by WHAM; (std, resamples used)."""
    n_ladders = per_ladder.shape[0]
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_bootstrap):
        mult = np.bincount(rng.integers(n_ladders, size=n_ladders), minlength=n_ladders).astype(float)
        h = np.einsum("c,ckb->kb", mult, per_ladder)
        if (h.sum(1) == 0).any():
            continue
        boot.append(coarsen(wham(h, fine_centres, temps, f0=f0).ln_rho, sub))
    return std_in_z(boot, in_z), len(boot)


def std_in_z(resamples: list[np.ndarray], in_z: np.ndarray) -> np.ndarray:
    """Per-bin std of resampled ln ρ, each normalised inside Z (NaN for bins reached in fewer than two)."""
    boot = []
    for lr in resamples:
        m = in_z & np.isfinite(lr)
        boot.append(np.where(m, lr - logsumexp(lr[m]), np.nan) if m.any() else np.full_like(lr, np.nan))
    with warnings.catch_warnings():  # bins seen in fewer than two resamples have no std: NaN, by design
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanstd(np.array(boot), axis=0) if len(boot) > 1 else np.full(len(in_z), np.nan)


def _representatives(
    pt: TemperingResult, z_range: tuple[float, float], edges: np.ndarray, f: np.ndarray, n_k: np.ndarray, decode=None
) -> pd.DataFrame:
    """The distinct recorded inputs with z in Z: tokens, z, count, ln_weight (towards the uniform measure), bin."""
    lo, hi = z_range
    inside = (pt.z >= lo) & (pt.z <= hi)
    ids_in, z_in = pt.ids[inside], pt.z[inside]
    if not inside.any():
        return pd.DataFrame(columns=["tokens", "z", "count", "ln_weight", "bin"])
    first, _, counts = unique_rows(ids_in)
    z_u = z_in[first]
    reps = pd.DataFrame(
        {
            "tokens": list(ids_in[first]),
            "z": z_u,
            "count": counts,
            # a distinct input's weight sums its records' weights: count × w(z)
            "ln_weight": np.log(counts) + log_weights(z_u, f, n_k, pt.temperatures),
            "bin": bin_of(z_u, edges),
        }
    )
    if decode is not None:
        reps["text"] = [decode(t) for t in reps["tokens"]]
    return reps


def build_output_distribution(
    pt: TemperingResult, space: InputSpace, z_range, bin_width: float, n_bootstrap: int = 50, seed: int = 0, decode=None
) -> OutputDistribution:
    """WHAM over all replicas, bootstrap over ladders, and the representatives inside Z."""
    lo, hi = check_z_range(z_range)
    temps = pt.temperatures
    k_count = len(temps)
    edges = make_edges(float(pt.z.min()), float(pt.z.max()), (lo, hi), bin_width)
    fine, sub = solver_grid(edges, float(temps.min()))
    fine_centres = 0.5 * (fine[1:] + fine[:-1])
    n_fine = len(fine) - 1
    fine_bin = np.clip(np.searchsorted(fine, pt.z, side="right") - 1, 0, n_fine - 1)

    ladders, ladder_index = np.unique(pt.ladder, return_inverse=True)
    per_ladder = np.zeros((len(ladders), k_count, n_fine))
    np.add.at(per_ladder, (ladder_index, pt.replica.astype(np.int64), fine_bin), 1.0)
    sol = wham(per_ladder.sum(0), fine_centres, temps)
    if sol.residual > 1e-6:
        raise RuntimeError(
            f"WHAM did not converge (residual {sol.residual:.2e}); replicas may not overlap: "
            "add temperatures between the coldest and hottest"
        )
    ln_rho = coarsen(sol.ln_rho, sub)
    ln_rho += np.log(float(space.size)) - logsumexp(ln_rho[np.isfinite(ln_rho)])

    centres = 0.5 * (edges[1:] + edges[:-1])
    in_z = (centres > lo) & (centres < hi)
    ln_rho_std, n_boot = _bootstrap_std(per_ladder, fine_centres, temps, sol.f, sub, in_z, n_bootstrap, seed)
    hist = per_ladder.sum(0).reshape(k_count, -1, sub).sum(-1)
    reps = _representatives(pt, (lo, hi), edges, sol.f, hist.sum(1), decode)
    meta = dict(
        method="tempering",
        n_records=int(len(pt.z)),
        n_in_z=int(((pt.z >= lo) & (pt.z <= hi)).sum()),
        n_distinct_in_z=int(len(reps)),
        acceptance=[float(a) for a in pt.acceptance],
        swap_acceptance=[float(a) for a in pt.swap_acceptance],
        sampling_seconds=float(pt.seconds),
        n_scored=int(pt.n_scored),
        wham_iterations=int(sol.iterations),
        wham_residual=float(sol.residual),
        solver_subdivisions=int(sub),
        n_bootstrap=n_boot,
        space=dict(length=space.length, n_tokens=space.n_tokens, bos_token_id=space.bos_token_id),
    )
    return OutputDistribution(
        edges=edges,
        ln_rho=ln_rho,
        ln_rho_std=ln_rho_std,
        hist=hist,
        temperatures=temps,
        f=sol.f,
        z_range=(lo, hi),
        representatives=reps,
        meta=meta,
    )
