"""The output distribution ρ̃(z) of one model and its representative inputs (stage 1's result).

Built from parallel-tempering records by WHAM (here) or from ancestral importance samples (`ancestral`); saved as
`outdist.npz` (bin edges, ln ρ with its replicate band, per-replica/per-temperature histograms, free energies, and per
independent unit what the uncertainty replicates need) plus `representatives.parquet` (the distinct sampled inputs
inside Z with their z, multiplicity and reweighting weight).

Stage 1's independent units are the ladders (tempering) or blocks of samples (ancestral). `modeldiff.method.uncertainty`
resamples them: for tempering it re-solves WHAM on the resampled per-ladder histograms (`unit_hist`) and recomputes
each representative's weight from its records per ladder (`rep_unit_count`); for ancestral sampling it sums per-block
weights (`unit_ln_rho`, `rep_unit_ln_weight`). `meta["method"]` says which.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import check_z_range
from .diagnostics import bin_diagnostics
from .diagnostics import warnings_for as diagnostics_warnings
from .reweighting import group_logsumexp, log_weights, logsumexp, solver_subdivisions, sub_bin_centres, wham
from .space import InputSpace
from .tempering import TemperingResult
from .uncertainty import rho_band

OUTDIST_FILE = "outdist.npz"
REPRESENTATIVES_FILE = "representatives.parquet"


def make_edges(z_min: float, z_max: float, z_range, width: float) -> np.ndarray:
    """Bins of ≈`width` that cover [z_min, z_max] and have both ends of Z as edges."""
    lo, hi = check_z_range(z_range)
    n_in = max(1, int(np.ceil((hi - lo) / width - 1e-9)))
    w = (hi - lo) / n_in  # shrink slightly so Z is a whole number of bins
    below = max(0, int(np.ceil((lo - z_min) / w)))
    above = max(0, int(np.ceil((z_max - hi) / w)))
    edges = lo + w * np.arange(-below, n_in + above + 1)
    edges[below], edges[below + n_in] = lo, hi  # exactly, so that z = z± meets the edge it should
    return edges


def _in_z(edges: np.ndarray, z_range) -> np.ndarray:
    """The bins inside Z (Z's ends are edges, so a centre decides)."""
    c = 0.5 * (edges[1:] + edges[:-1])
    return (c > z_range[0]) & (c < z_range[1])


def _json_floats(values: np.ndarray) -> list:
    """A float array for meta (JSON): NaN as None."""
    return [None if not np.isfinite(v) else float(v) for v in values]


def bin_of(z: np.ndarray, edges: np.ndarray, z_range=None) -> np.ndarray:
    """The bin of each z (values beyond the ends go to the end bins). Bins are [e_i, e_i+1), but Z is closed
    (DESIGN: Z = [z−, z+]): with `z_range` given, z = z+ falls in Z's top bin, not in the bin above Z."""
    z = np.asarray(z)
    idx = np.searchsorted(edges, z, side="right") - 1
    if z_range is not None:
        idx = np.where(z == float(z_range[1]), np.searchsorted(edges, z, side="left") - 1, idx)
    return np.clip(idx, 0, len(edges) - 2)


def fine_bin_of(z: np.ndarray, edges: np.ndarray, sub: int, z_range) -> np.ndarray:
    """The solver sub-bin of each z: `sub` equal parts of its bin (bin_of's bin, so both grids agree on Z's
    closed top edge whatever the rounding of the sub-bin edges)."""
    coarse = bin_of(z, edges, z_range)
    frac = (np.asarray(z, np.float64) - edges[coarse]) / (edges[coarse + 1] - edges[coarse])
    return coarse * sub + np.clip(np.floor(frac * sub).astype(np.int64), 0, sub - 1)


# optional arrays of outdist.npz: saved when set, None when a file lacks them
OPTIONAL_FIELDS = (
    "ln_rho_lo",
    "ln_rho_hi",
    "unit_hist",
    "rep_unit_count",
    "rep_unit_ln_weight",
    "unit_ln_rho",
)


@dataclass
class OutputDistribution:
    edges: np.ndarray  # [B+1]
    ln_rho: np.ndarray  # [B]; −inf where no sample fell; scaled so Σρ = |Ω| if sampling covered Ω
    ln_rho_std: np.ndarray  # [B] std over stage-1 replicates of ln ρ normalised inside Z (NaN outside Z)
    hist: np.ndarray  # [K, B] samples per replica (tempering) or per proposal temperature (ancestral)
    temperatures: np.ndarray  # [K]
    f: np.ndarray  # [K] WHAM free energies (gauge f_0 = 0); ancestral: zeros (every q_τ is normalised)
    z_range: tuple[float, float]
    representatives: pd.DataFrame  # distinct inputs with z ∈ Z: tokens, z, count, ln_weight, bin
    meta: dict = field(default_factory=dict)
    # the replicate band (meta["band_level"]) of ln ρ normalised inside Z, [B] each (NaN outside Z)
    ln_rho_lo: np.ndarray | None = None
    ln_rho_hi: np.ndarray | None = None
    # tempering (meta["method"] == "tempering"): per-ladder histograms on the WHAM solver grid (meta
    # "solver_subdivisions" sub-bins per bin), sparse: rows (ladder, replica, sub-bin, count), int64 [nnz, 4];
    # and each representative's records per ladder, int32 [n_representatives, n_ladders]
    unit_hist: np.ndarray | None = None
    rep_unit_count: np.ndarray | None = None
    # ancestral (meta["method"] == "ancestral"): ln Σ w_i over the samples of block u equal to representative x
    # (−inf where none), float64 [n_representatives, n_units]; ln Σ w_i over block u's samples in bin b,
    # float64 [n_units, B]; meta["unit_sizes"] holds the samples per block
    rep_unit_ln_weight: np.ndarray | None = None
    unit_ln_rho: np.ndarray | None = None

    @property
    def centers(self) -> np.ndarray:
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    @property
    def in_z(self) -> np.ndarray:
        return _in_z(self.edges, self.z_range)

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
            **{name: getattr(self, name) for name in OPTIONAL_FIELDS if getattr(self, name) is not None},
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
            **{name: arrays.get(name) for name in OPTIONAL_FIELDS},
        )


def unique_rows(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct rows of an int matrix, fast: compare rows as opaque byte strings."""
    ids = np.ascontiguousarray(ids)
    keys = ids.view(np.dtype((np.void, ids.dtype.itemsize * ids.shape[1]))).ravel()
    _, first, inverse, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    return first, inverse, counts


def _representatives(
    pt: TemperingResult,
    ladder_index: np.ndarray,
    n_ladders: int,
    z_range: tuple[float, float],
    edges: np.ndarray,
    f: np.ndarray,
    n_k: np.ndarray,
    decode=None,
) -> tuple[pd.DataFrame, np.ndarray]:
    """The distinct recorded inputs with z in Z: tokens, z, count, ln_weight (towards the uniform measure), bin;
    and their records per ladder [n_representatives, n_ladders]."""
    lo, hi = z_range
    inside = (pt.z >= lo) & (pt.z <= hi)
    ids_in, z_in = pt.ids[inside], pt.z[inside]
    if not inside.any():
        return pd.DataFrame(columns=["tokens", "z", "count", "ln_weight", "bin"]), np.zeros((0, n_ladders), np.int32)
    first, inverse, counts = unique_rows(ids_in)
    per_ladder = np.zeros((len(first), n_ladders), dtype=np.int32)
    np.add.at(per_ladder, (inverse, ladder_index[inside]), 1)
    z_u = z_in[first]
    reps = pd.DataFrame(
        {
            "tokens": list(ids_in[first]),
            "z": z_u,
            "count": counts,
            # a distinct input's weight sums its records' weights: count × w(z)
            "ln_weight": np.log(counts) + log_weights(z_u, f, n_k, pt.temperatures),
            "bin": bin_of(z_u, edges, z_range),
        }
    )
    if decode is not None:
        reps["text"] = [decode(t) for t in reps["tokens"]]
    return reps, per_ladder


def _sparse_unit_hist(ladder_index: np.ndarray, replica: np.ndarray, fine_bin: np.ndarray, n_fine: int) -> np.ndarray:
    """Per-ladder, per-replica counts on the solver grid as rows (ladder, replica, sub-bin, count): only occupied
    cells, so the size is bounded by the number of records whatever the grid."""
    n_rep = int(replica.max()) + 1
    key = (ladder_index.astype(np.int64) * n_rep + replica) * n_fine + fine_bin
    cells, counts = np.unique(key, return_counts=True)
    return np.stack([cells // (n_rep * n_fine), cells // n_fine % n_rep, cells % n_fine, counts], axis=1)


def build_output_distribution(
    pt: TemperingResult,
    space: InputSpace,
    z_range,
    bin_width: float,
    n_replicates: int = 200,
    level: float = 0.95,
    seed: int = 0,
    decode=None,
) -> OutputDistribution:
    """WHAM over all replicas, the representatives inside Z, and the band of ln ρ̃ from `n_replicates` resamples of
    the ladders (0: none)."""
    lo, hi = check_z_range(z_range)
    temps = pt.temperatures
    k_count = len(temps)
    edges = make_edges(float(pt.z.min()), float(pt.z.max()), (lo, hi), bin_width)
    sub = solver_subdivisions(edges, float(temps.min()))
    n_fine, n_bins = (len(edges) - 1) * sub, len(edges) - 1
    fine_bin = fine_bin_of(pt.z, edges, sub, (lo, hi))

    ladders, ladder_index = np.unique(pt.ladder, return_inverse=True)
    replica = pt.replica.astype(np.int64)
    # WHAM on the occupied sub-bins only (an empty sub-bin has ρ̂ = 0 and adds nothing to any f_k): memory grows with
    # the records, not with the grid, which has width / (2·0.02·T_min) sub-bins per bin
    occupied, cell = np.unique(fine_bin, return_inverse=True)
    occupied_hist = np.zeros((k_count, len(occupied)))
    np.add.at(occupied_hist, (replica, cell), 1.0)
    sol = wham(occupied_hist, sub_bin_centres(edges, sub, occupied), temps)
    if sol.residual > 1e-6:
        raise RuntimeError(
            f"WHAM did not converge (residual {sol.residual:.2e}); replicas may not overlap: "
            "add temperatures between the coldest and hottest"
        )
    ln_rho = group_logsumexp(sol.ln_rho, occupied // sub, n_bins)
    ln_rho += space.log_size - logsumexp(ln_rho[np.isfinite(ln_rho)])

    hist = np.zeros((k_count, n_bins))
    np.add.at(hist, (replica, fine_bin // sub), 1.0)
    reps, rep_unit_count = _representatives(pt, ladder_index, len(ladders), (lo, hi), edges, sol.f, hist.sum(1), decode)
    in_z = _in_z(edges, (lo, hi))
    distinct = np.bincount(reps["bin"].to_numpy(np.int64), minlength=n_bins) if len(reps) else np.zeros(n_bins)
    rhat, ess = bin_diagnostics(
        log_weights(pt.z, sol.f, hist.sum(1), temps), fine_bin // sub, in_z, pt.ladder, pt.step, distinct
    )
    meta = dict(
        method="tempering",
        n_units=int(len(ladders)),
        n_records=int(len(pt.z)),
        n_in_z=int(((pt.z >= lo) & (pt.z <= hi)).sum()),
        n_distinct_in_z=int(len(reps)),
        acceptance=[float(a) for a in pt.acceptance],
        swap_acceptance=[float(a) for a in pt.swap_acceptance],
        sampling_seconds=float(pt.seconds),
        n_scored=int(pt.n_scored),
        wham_iterations=int(sol.iterations),
        wham_residual=float(sol.residual),
        rhat_per_bin=_json_floats(rhat),
        ess_per_bin=_json_floats(ess),
        round_trips=None if pt.round_trips is None else [int(r) for r in pt.round_trips],
        warnings=diagnostics_warnings(rhat, ess, edges),
        solver_subdivisions=int(sub),
        solver_sub_bins_occupied=int(len(occupied)),
        space=dict(length=space.length, n_tokens=space.n_tokens, bos_token_id=space.bos_token_id),
    )
    od = OutputDistribution(
        edges=edges,
        ln_rho=ln_rho,
        ln_rho_std=np.full(len(ln_rho), np.nan),
        hist=hist,
        temperatures=temps,
        f=sol.f,
        z_range=(lo, hi),
        representatives=reps,
        meta=meta,
        unit_hist=_sparse_unit_hist(ladder_index, replica, fine_bin, n_fine),
        rep_unit_count=rep_unit_count,
    )
    return with_rho_band(od, n_replicates, level, seed)


def with_rho_band(od: OutputDistribution, n_replicates: int, level: float, seed: int) -> OutputDistribution:
    """`od` with ln_rho_std and the band ln_rho_lo/hi (normalised inside Z) from stage-1 replicates (any method)."""
    if n_replicates > 0:
        band = rho_band(od, n_replicates, level, seed)
        od.ln_rho_std, od.ln_rho_lo, od.ln_rho_hi = band.std, band.lo, band.hi
        od.meta.update(band_level=float(level), n_replicates=int(n_replicates))
    return od
