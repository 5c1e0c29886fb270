"""Intervals for every result of one run: resample stage 1's independent units through stage 2.

Stage 1's independent units are the ladders of parallel tempering or the blocks of ancestral samples: draws of one
input, records of one chain, are not independent evidence. A replicate resamples the units (U − 1 draws from U, so
the replicates' variance of a mean is the unbiased s²/U rather than (U−1)/U of it) and rebuilds what stage 2 drew
from: ρ̃_m per bin (tempering: WHAM re-solved on the resampled per-ladder histograms; ancestral: Σ_u m_u ρ_u) and
each representative's weight w_m(x).

Stage 2 drew each representative with probability p(x) = P(bin of x) · w(x) / W(bin), bins ∝ ρ̃ inside Z and
W(bin) = Σ w over the bin's representatives (only approximately ∝ w(x) overall: ρ̃ comes from WHAM's fine grid, w
from each input's exact z); the replicate's p_m follows from ρ̃_m and w_m the same way. The draws already made
estimate the replicate's terms by importance reweighting with f_m(x) = p_m(x) / p(x), and resampling the draws
multinomially within the replicate adds stage 2's own noise: a term #{draws: a} / #{draws: b} becomes
Σ n_i f_m(x_i) a_i / Σ n_i f_m(x_i) b_i with n ~ Multinomial(n, 1/n). Sides A and B are independent stage-1 runs,
resampled independently. All-ones multiplicities and no resampling give the point estimate back exactly.

Intervals are the replicates' percentile intervals (they follow the skew of ratios), their distances from the
estimate widened by t_ν / z: a spread estimated from U units has U − 1 degrees of freedom, which a plain percentile
interval ignores (it undercovers with few units); ν comes from each side's stage-1 share of the spread
(Welch–Satterthwaite), stage 2's thousands of draws counting as infinitely many.

Effective sample sizes count independent inputs (Kish over distinct inputs, each weighted by its draws) and units
(Kish over the units' shares of the draws), never draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm
from scipy.stats import t as student_t

from .normalize import TERMS, side_masks
from .reweighting import group_logsumexp, log_weights, logsumexp, sub_bin_centres, wham

# a row of several models against one reference (Appendix B): A→X terms, then X→A terms
MULTI_TERMS = ("PD_AX", "PA_AX", "PA_XA", "PD_XA")
# below this many independent units an interval rests on a few distinct resamples and a t with < 7 degrees of
# freedom: too fragile to trust without a warning
MIN_UNITS = 8
REPLICATES_FILE = "replicates.npz"
# independent random streams of one config seed: (seed, stream, side)
STREAM_RHO_BAND, STREAM_STAGE1, STREAM_STAGE2 = 0, 1, 2
SIDES = ("A", "B")


def rng_for(seed: int, stream: int, side: str = "A") -> np.random.Generator:
    return np.random.default_rng([int(seed), stream, SIDES.index(side)])


# ---------------------------------------------------------------------------------------------- effective sizes


def kish_ess(weights) -> float:
    """(Σw)² / Σw²: how many equally weighted independent items carry the same information."""
    w = np.asarray(weights, dtype=np.float64)
    total = float(w.sum())
    return total**2 / float((w**2).sum()) if total > 0 else 0.0


def input_ess(inputs, weights=None) -> float:
    """Kish over distinct inputs, each weighted by the summed weights of its draws (default 1 per draw): draws of
    one input share their D, score and sign, so they count once, however often drawn."""
    _, inverse = np.unique(np.asarray(inputs), return_inverse=True)
    w = np.ones(len(inverse)) if weights is None else np.asarray(weights, dtype=np.float64)
    return kish_ess(np.bincount(inverse.ravel(), weights=w))


# ---------------------------------------------------------------------------------------------- stage 1


def multiplicities(n_units: int, n_replicates: int, rng: np.random.Generator) -> np.ndarray:
    """[R, U] bootstrap multiplicities of the units: U − 1 draws from U, scaled to sum to U. Drawing U − 1 makes the
    replicate variance of a mean unbiased (U draws give (U−1)/U of it); the scale cancels in every estimate."""
    if n_units < 2:
        raise ValueError(
            f"an interval needs at least 2 independent stage-1 units, got {n_units}: sample with more ladders "
            "(sampler.ladders) or blocks"
        )
    draws = rng.multinomial(n_units - 1, np.full(n_units, 1.0 / n_units), size=n_replicates)
    return draws * (n_units / (n_units - 1))


class _Tempering:
    """Replicates of a tempering output distribution: WHAM on the resampled per-ladder histograms."""

    def __init__(self, od):
        if od.unit_hist is None or od.rep_unit_count is None:
            raise ValueError(
                "this output distribution has no per-ladder histograms (it was sampled before intervals "
                "existed): run sample_outdist again"
            )
        self.unit, self.replica, sub_bin, self.count = od.unit_hist.T
        sub = int(od.meta["solver_subdivisions"])
        occupied, self.cell = np.unique(sub_bin, return_inverse=True)  # only occupied sub-bins: memory ∝ records
        self.energy = sub_bin_centres(od.edges, sub, occupied)
        self.coarse = occupied // sub
        self.n_bins, self.temperatures, self.f = len(od.edges) - 1, od.temperatures, od.f
        self.rep_count = od.rep_unit_count.astype(np.float64)
        self.rep_z = od.representatives["z"].to_numpy(np.float64)
        self.n_units = self.rep_count.shape[1]

    def replicate(self, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ln ρ̃_m per bin, ln w_m per representative, ln records_m per representative)."""
        k, n_occ = len(self.temperatures), len(self.energy)
        hist = np.bincount(
            self.replica * n_occ + self.cell, weights=m[self.unit] * self.count, minlength=k * n_occ
        ).reshape(k, n_occ)
        sol = wham(hist, self.energy, self.temperatures, f0=self.f)  # from the point's free energies: few steps
        with np.errstate(divide="ignore"):
            ln_records = np.log(self.rep_count @ m)
        ln_w = ln_records + log_weights(self.rep_z, sol.f, hist.sum(1), self.temperatures)
        return group_logsumexp(sol.ln_rho, self.coarse, self.n_bins), ln_w, ln_records

    def shares(self, rows: np.ndarray) -> np.ndarray:
        """Each unit's share of representative x's weight (records at one z weigh the same), [len(rows), U]."""
        c = self.rep_count[rows]
        return c / c.sum(1, keepdims=True)


class _Ancestral:
    """Replicates of an ancestral (importance-sampled) output distribution: sums of per-block weights."""

    def __init__(self, od):
        if od.rep_unit_ln_weight is None or od.unit_ln_rho is None:
            raise ValueError(
                "this ancestral output distribution has no per-block weights (rep_unit_ln_weight, "
                "unit_ln_rho): run sample_outdist again"
            )
        self.rep_ln_w, self.unit_ln_rho = od.rep_unit_ln_weight, od.unit_ln_rho
        self.unit_sizes = np.asarray(od.meta["unit_sizes"], dtype=np.float64)
        self.n_units = self.unit_ln_rho.shape[0]

    def replicate(self, m: np.ndarray) -> tuple[np.ndarray, np.ndarray, None]:
        with np.errstate(divide="ignore"):
            ln_m = np.log(m)
        ln_rho = logsumexp(self.unit_ln_rho + ln_m[:, None], axis=0) - np.log(m @ self.unit_sizes)
        return ln_rho, logsumexp(self.rep_ln_w + ln_m[None, :], axis=1), None

    def shares(self, rows: np.ndarray) -> np.ndarray:
        ln_w = self.rep_ln_w[rows]
        return np.exp(ln_w - logsumexp(ln_w, axis=1, keepdims=True))


STAGE_ONE = {"tempering": _Tempering, "ancestral": _Ancestral}


def stage_one(od):
    method = od.meta.get("method", "tempering")
    if method not in STAGE_ONE:
        raise ValueError(f"output distribution of unknown method {method!r}: one of {list(STAGE_ONE)} is needed")
    return STAGE_ONE[method](od)


# ---------------------------------------------------------------------------------------------- stage 2's draw law


def ln_bin_probabilities(ln_rho: np.ndarray, in_z: np.ndarray, rep_bin: np.ndarray, ln_score: np.ndarray) -> np.ndarray:
    """ln P(bin) of stage 2's draw: ∝ ρ̃ among the bins inside Z that hold a representative of nonzero score."""
    held = np.zeros(len(ln_rho), dtype=bool)
    held[rep_bin[np.isfinite(ln_score)]] = True
    ok = held & in_z & np.isfinite(ln_rho)
    out = np.full(len(ln_rho), -np.inf)
    if ok.any():
        out[ok] = ln_rho[ok] - logsumexp(ln_rho[ok])
    return out


def ln_draw_probabilities(ln_rho: np.ndarray, in_z: np.ndarray, rep_bin: np.ndarray, ln_score: np.ndarray):
    """ln p(x) per representative: ln P(its bin) + ln score(x) − ln Σ score over its bin (score: the weight, or
    the record count for within_bin=uniform)."""
    ln_bin = ln_bin_probabilities(ln_rho, in_z, rep_bin, ln_score)
    ln_total = group_logsumexp(ln_score, rep_bin, len(ln_rho))
    with np.errstate(invalid="ignore"):
        out = ln_bin[rep_bin] + ln_score - ln_total[rep_bin]
    return np.where(np.isfinite(out), out, -np.inf)


def _ln_law(od, ln_rho: np.ndarray, ln_weight: np.ndarray, ln_records: np.ndarray | None, within_bin: str):
    if within_bin == "reweight":
        score = ln_weight
    elif ln_records is None:
        raise ValueError(
            f"within_bin=uniform has no intervals for {od.meta.get('method')} output distributions: "
            "use cross_eval.within_bin=reweight"
        )
    else:
        score = ln_records
    return ln_draw_probabilities(ln_rho, od.in_z, od.representatives["bin"].to_numpy(), score)


def point_ln_law(od, within_bin: str = "reweight") -> np.ndarray:
    """ln p(x) per representative: the law stage 2 drew `od`'s representatives from."""
    reps = od.representatives
    ln_records = np.log(reps["count"].to_numpy(np.float64)) if "count" in reps else None
    return _ln_law(od, od.ln_rho, reps["ln_weight"].to_numpy(np.float64), ln_records, within_bin)


def replicate_ln_law(od, units, m: np.ndarray, within_bin: str = "reweight") -> np.ndarray:
    """ln p_m(x) per representative: the same law built from stage-1 replicate m (`units = stage_one(od)`)."""
    return _ln_law(od, *units.replicate(m), within_bin)


# ---------------------------------------------------------------------------------------------- replicates of a side


@dataclass
class SideReplicates:
    """What cross_eval logs (cross_eval/replicates.npz) for one side's draws: per distinct drawn representative,
    ln f_m for each stage-1 replicate m; and how many draws each stage-1 unit accounts for."""

    representative: np.ndarray  # [n_distinct] row indices into the output distribution's representatives
    ln_f: np.ndarray  # [n_distinct, R]
    unit_draws: np.ndarray  # [U] Σ over draws of each unit's share of the drawn input's weight
    method: str

    @property
    def n_units(self) -> int:
        return len(self.unit_draws)

    @property
    def n_replicates(self) -> int:
        return self.ln_f.shape[1]

    def of_draws(self, representative) -> np.ndarray:
        """ln f [n_draws, R] of draws given by their representative index."""
        rep = np.asarray(representative)
        pos = np.minimum(np.searchsorted(self.representative, rep), len(self.representative) - 1)
        if (self.representative[pos] != rep).any():
            raise ValueError("draws and replicates do not match: they must come from the same cross_eval run")
        return self.ln_f[pos]

    def save(self, path):
        np.savez(
            path, representative=self.representative, ln_f=self.ln_f, unit_draws=self.unit_draws, method=self.method
        )

    @classmethod
    def load(cls, path) -> SideReplicates:
        with np.load(path) as npz:
            return cls(npz["representative"], npz["ln_f"], npz["unit_draws"], str(npz["method"]))


def side_replicates(
    od, rows, n_replicates: int, seed: int, side: str = "A", within_bin: str = "reweight"
) -> SideReplicates:
    """ln f_m(x) = ln p_m(x) − ln p(x) for the distinct representatives among `rows` (one per draw)."""
    units = stage_one(od)
    distinct, counts = np.unique(np.asarray(rows), return_counts=True)
    ln_p = point_ln_law(od, within_bin)
    mult = multiplicities(units.n_units, n_replicates, rng_for(seed, STREAM_STAGE1, side))
    ln_f = np.empty((len(distinct), n_replicates))
    for r, m in enumerate(mult):
        ln_f[:, r] = replicate_ln_law(od, units, m, within_bin)[distinct] - ln_p[distinct]
    unit_draws = counts @ units.shares(distinct)
    return SideReplicates(distinct, ln_f, unit_draws, od.meta.get("method", "tempering"))


# ---------------------------------------------------------------------------------------------- stage 2


def resampled_weights(counts: np.ndarray, ln_f: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[R, n_cat]: categories (distinct inputs, each standing for `counts` draws) resampled as n draws are,
    n ~ Multinomial(Σcounts, counts/Σcounts), times each replicate's f (scaled per replicate: only ratios count)."""
    counts = np.asarray(counts, dtype=np.float64)
    resampled = rng.multinomial(int(counts.sum()), counts / counts.sum(), size=ln_f.shape[1]).astype(np.float64)
    return resampled * scaled_factors(ln_f)


def scaled_factors(ln_f: np.ndarray) -> np.ndarray:
    """[R, n] f scaled by each replicate's largest (ratios are all that count; nothing overflows)."""
    top = np.max(ln_f, axis=0, keepdims=True)
    return np.exp(ln_f - np.where(np.isfinite(top), top, 0.0)).T


def _by_input(draws: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(distinct representatives, draws of each, the first draw of each) of one side's draws."""
    if "representative" not in draws:
        raise ValueError("the draws have no representative column: run cross_eval again")
    first = draws.drop_duplicates("representative").sort_values("representative")
    counts = draws["representative"].value_counts().reindex(first["representative"]).to_numpy()
    return first["representative"].to_numpy(), counts, first


@dataclass
class TermReplicates:
    """One side's two terms per replicate: `total` resamples stage 1 and stage 2; `stage1` stage 1 alone (the draws
    kept as drawn), which tells how much of the spread rests on the few stage-1 units."""

    total: dict  # {term: [R]}
    stage1: dict  # {term: [R]}
    point: dict  # {term: float}
    n_units: int


def _side_weights(draws: pd.DataFrame, replicates: SideReplicates, side: str, seed: int):
    """(the first draw of each distinct input, {variant: weights [R or 1, inputs]}): each input's weight per replicate
    under both stages resampled ("total"), stage 1 alone ("stage1") and none ("point": its draws)."""
    reps, counts, first = _by_input(draws)
    ln_f = replicates.of_draws(reps)
    return first, {
        "total": resampled_weights(counts, ln_f, rng_for(seed, STREAM_STAGE2, side[0])),
        "stage1": counts * scaled_factors(ln_f),
        "point": counts[None, :].astype(np.float64),
    }


def side_term_replicates(
    draws: pd.DataFrame, replicates: SideReplicates, side: str, lam: float, seed: int
) -> TermReplicates:
    """The two terms of one side (AB or BA) over its replicates."""
    first, weights = _side_weights(draws, replicates, side, seed)
    masks = side_masks(first["D"].to_numpy(np.float64), lam, side)
    in_other = first["in_z_other"].to_numpy(np.float64)
    out = {}
    for name, w in weights.items():
        with np.errstate(invalid="ignore", divide="ignore"):
            out[name] = {term: (w @ mask.astype(np.float64)) / (w @ in_other) for term, mask in masks.items()}
    return TermReplicates(
        out["total"], out["stage1"], {k: float(v[0]) for k, v in out["point"].items()}, replicates.n_units
    )


# ---------------------------------------------------------------------------------------------- intervals


def expansion(level: float, dof: float) -> float:
    """t_ν / z at the interval's level: how much wider an interval is whose spread is estimated from ν degrees of
    freedom (the percentile interval acts as if ν were infinite, and undercovers with few units)."""
    q = (1 + level) / 2
    return float(student_t.ppf(q, dof) / norm.ppf(q)) if np.isfinite(dof) else 1.0


def welch_dof(total: np.ndarray, parts: list[tuple[np.ndarray, int]]) -> float:
    """Welch–Satterthwaite degrees of freedom of the replicates' variance: each part (a side's stage-1-only
    replicates, with its U − 1 degrees of freedom) enters with its share; stage 2's draws count as infinitely many.
    Never fewer than the fewest a part has."""
    fewest = min(units - 1 for _, units in parts)
    spread = lambda x: np.var(x[np.isfinite(x)]) if np.isfinite(x).sum() > 1 else np.nan  # noqa: E731
    v_total, v_parts = spread(total), [spread(x) for x, _ in parts]
    if not np.isfinite([v_total, *v_parts]).all():
        return fewest
    denominator = sum(v**2 / (units - 1) for v, (_, units) in zip(v_parts, parts))
    return max(v_total**2 / denominator, fewest) if denominator > 0 else np.inf


def interval(point: float, samples, level: float, dof: float = np.inf, floor: float | None = 0.0) -> list:
    """The percentile interval of the replicates at `level`, its distances from the point widened by t_ν/z
    (`expansion`); an undefined replicate (0/0, x/0) counts as +∞, and a bound that reaches one is None
    (unbounded), never NaN. Bounds below `floor` (terms and ratios are >= 0) are raised to it."""
    x = np.asarray(samples, dtype=np.float64)
    x = np.where(np.isnan(x), np.inf, x)
    with np.errstate(invalid="ignore"):
        lo, hi = np.quantile(x, [(1 - level) / 2, (1 + level) / 2])
    c = expansion(level, dof)
    bounds = [point - c * (point - lo), point + c * (hi - point)]
    if floor is not None and np.isfinite(bounds[0]):
        bounds[0] = max(bounds[0], floor)
    return [float(b) if np.isfinite(b) else None for b in bounds]


def replicate_std(samples) -> float | None:
    x = np.asarray(samples, dtype=np.float64)
    return float(x.std(ddof=1)) if np.isfinite(x).all() else None


def ratio_uncertainty(
    ab: pd.DataFrame,
    ab_replicates: SideReplicates,
    ba: pd.DataFrame,
    ba_replicates: SideReplicates,
    lam: float,
    level: float,
    seed: int,
) -> dict:
    """ratio.json's "ci" and "std" (DESIGN §4), and effective sample sizes for its "counts"."""
    if ab_replicates.n_replicates != ba_replicates.n_replicates:
        raise ValueError(
            f"the A→B run has {ab_replicates.n_replicates} replicates and the B→A run "
            f"{ba_replicates.n_replicates}: run both cross_evals with the same uncertainty.n_replicates"
        )
    a = side_term_replicates(ab, ab_replicates, "AB", lam, seed)
    b = side_term_replicates(ba, ba_replicates, "BA", lam, seed)
    point = {**a.point, **b.point}
    variants = {  # every quantity under: both sides' full replicates; one side's stage 1 alone, the other fixed
        "total": {**a.total, **b.total},
        "A": {**a.stage1, **b.point},
        "B": {**a.point, **b.stage1},
    }

    def quantities(terms: dict) -> dict:
        with np.errstate(invalid="ignore", divide="ignore"):
            return {
                **{k: np.asarray(terms[k], dtype=np.float64) for k in TERMS},
                **{f"ratio_{k}": np.asarray(terms[k], dtype=np.float64) / terms["PD_AB"] for k in TERMS[1:]},
            }

    q = {name: quantities(v) for name, v in variants.items()}
    q_point = {k: float(v) for k, v in quantities(point).items()}
    ci, std = {}, {}
    for name in q["total"]:
        dof = welch_dof(q["total"][name], [(q["A"][name], a.n_units), (q["B"][name], b.n_units)])
        ci[name] = interval(q_point[name], q["total"][name], level, dof)
        std[name] = replicate_std(q["total"][name])
    ess = {}
    for side, draws, side_reps in (("A", ab, ab_replicates), ("B", ba, ba_replicates)):
        ess[f"ess_inputs_{side}"] = input_ess(draws["representative"])
        ess[f"ess_units_{side}"] = kish_ess(side_reps.unit_draws)
        ess[f"n_units_{side}"] = side_reps.n_units
    return {
        "ci": {
            "level": float(level),
            "terms": {k: ci[k] for k in TERMS},
            "ratio": [[1.0, 1.0]] + [ci[f"ratio_{k}"] for k in TERMS[1:]],
        },
        "std": {"terms": {k: std[k] for k in TERMS}, "ratio": [0.0] + [std[f"ratio_{k}"] for k in TERMS[1:]]},
        "ess": ess,
    }


def multi_model_uncertainty(
    reference_draws: dict[str, tuple[pd.DataFrame, SideReplicates]],
    own_draws: dict[str, tuple[pd.DataFrame, SideReplicates]],
    lam: float,
    level: float,
    seed: int,
) -> dict[str, dict]:
    """Several models X against one reference A (paper Appendix B, Eq. 14–17) with intervals, per model X:
    `reference_draws[X]` = A's draws scored by X (cross_eval A→X; the same draws for every X), `own_draws[X]` = X's
    draws scored by A (cross_eval X→A), each with its stage-1 replicates.

    Every term is on the common scale 1/|X_A| (A's likely inputs), so rows compare: A→X terms count over all of A's
    draws (Eq. 14–15: the shared denominator |X̃_A|), and X→A terms, normalised by |X̃_X→A| as in a pair, are rescaled
    by the share s_X = |X̃_A→X| / |X̃_A| of A's draws that X also finds likely (Eq. 16–17). Exactly: PD_AX =
    #{x ∈ X_A: D < −λ} / |X_A|, PA_XA = #{x ∈ X_X: D < −λ} / |X_A|, ..., with D = z_A − z_X. The ratio of a row is
    its terms over its PD_AX. Intervals resample stage 1's units of A and of X and both sides' draws, as a pair's do
    (`ratio_uncertainty`); A's replicates are the same for every row (one set of A draws and one seed)."""
    if set(reference_draws) != set(own_draws) or not reference_draws:
        raise ValueError("every compared model needs both its A→X and its X→A draws")
    sizes = {len(draws) for draws, _ in reference_draws.values()}
    if len(sizes) != 1:
        raise ValueError("the A→X draws must be the same A draws for every model X (equal numbers of draws)")
    out = {}
    for name in reference_draws:
        ab, ab_reps = reference_draws[name]
        ba, ba_reps = own_draws[name]
        if ab_reps.n_replicates != ba_reps.n_replicates:
            raise ValueError(
                f"{name}: its two cross_evals have different numbers of replicates (uncertainty.n_replicates)"
            )
        first, w_a = _side_weights(ab, ab_reps, "AB", seed)
        masks = side_masks(first["D"].to_numpy(np.float64), lam, "AB")
        in_x = first["in_z_other"].to_numpy(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            forward = {
                v: {
                    **{t.replace("AB", "AX"): (w @ m.astype(np.float64)) / w.sum(axis=1) for t, m in masks.items()},
                    "share": (w @ in_x) / w.sum(axis=1),
                }
                for v, w in w_a.items()
            }
        back = side_term_replicates(ba, ba_reps, "BA", lam, seed)
        backward = {
            "total": back.total,
            "stage1": back.stage1,
            "point": {k: np.array([v]) for k, v in back.point.items()},
        }

        def quantities(f: dict, b: dict) -> dict:
            with np.errstate(invalid="ignore", divide="ignore"):
                terms = {
                    "PD_AX": f["PD_AX"],
                    "PA_AX": f["PA_AX"],
                    "PA_XA": np.asarray(b["PA_BA"]) * f["share"],
                    "PD_XA": np.asarray(b["PD_BA"]) * f["share"],
                }
                return {**terms, **{f"ratio_{k}": terms[k] / terms["PD_AX"] for k in MULTI_TERMS[1:]}}

        q = {
            "total": quantities(forward["total"], backward["total"]),
            "A": quantities(forward["stage1"], backward["point"]),
            "X": quantities(forward["point"], backward["stage1"]),
        }
        point = {k: float(v[0]) for k, v in quantities(forward["point"], backward["point"]).items()}
        ci, std = {}, {}
        for key in q["total"]:
            dof = welch_dof(q["total"][key], [(q["A"][key], ab_reps.n_units), (q["X"][key], ba_reps.n_units)])
            ci[key] = interval(point[key], q["total"][key], level, dof)
            std[key] = replicate_std(q["total"][key])
        share = float(forward["point"]["share"][0])
        out[name] = {
            "terms": {k: point[k] for k in MULTI_TERMS},
            "ratio": [1.0] + [point[f"ratio_{k}"] for k in MULTI_TERMS[1:]],
            "ci": {
                "level": float(level),
                "terms": {k: ci[k] for k in MULTI_TERMS},
                "ratio": [[1.0, 1.0]] + [ci[f"ratio_{k}"] for k in MULTI_TERMS[1:]],
            },
            "std": {
                "terms": {k: std[k] for k in MULTI_TERMS},
                "ratio": [0.0] + [std[f"ratio_{k}"] for k in MULTI_TERMS[1:]],
            },
            "counts": {
                "n_A": int(len(ab)),
                "n_A_in_X": int(ab["in_z_other"].sum()),
                "n_X": int(len(ba)),
                "n_X_in_A": int(ba["in_z_other"].sum()),
                "share_A_in_X": share,
                "ess_inputs_A": input_ess(ab["representative"]),
                "ess_inputs_X": input_ess(ba["representative"]),
                "n_units_A": ab_reps.n_units,
                "n_units_X": ba_reps.n_units,
            },
        }
    return out


def warnings_for(ess: dict) -> list[str]:
    """What a user must know before trusting the intervals."""
    out = []
    for side in SIDES:
        n = ess[f"n_units_{side}"]
        if n < MIN_UNITS:
            out.append(
                f"side {side} rests on {n} independent stage-1 units (a bootstrap over fewer than {MIN_UNITS} "
                "undercovers): sample with more ladders (sampler.ladders) or blocks"
            )
    return out


# ---------------------------------------------------------------------------------------------- ρ̃(z) bands


@dataclass
class RhoBand:
    std: np.ndarray  # [B] of ln ρ̃ normalised inside Z, NaN outside Z and where a replicate has no sample
    lo: np.ndarray
    hi: np.ndarray


def ln_rho_normalised(ln_rho: np.ndarray, in_z: np.ndarray) -> np.ndarray:
    """ln ρ̃ normalised to Σ_Z ρ̃ = 1 inside Z, NaN outside."""
    m = in_z & np.isfinite(ln_rho)
    out = np.full(len(ln_rho), np.nan)
    if m.any():
        out[in_z] = ln_rho[in_z] - logsumexp(ln_rho[m])
    return out


def rho_band(od, n_replicates: int, level: float, seed: int) -> RhoBand:
    """Band and std of ln ρ̃ (normalised inside Z) per bin over stage-1 replicates: percentiles widened by t_{U−1}/z
    around the estimate. A bin some replicate never reaches has an unbounded lower end there (−∞ is kept)."""
    units = stage_one(od)
    mult = multiplicities(units.n_units, n_replicates, rng_for(seed, STREAM_RHO_BAND))
    reps = np.array([ln_rho_normalised(units.replicate(m)[0], od.in_z) for m in mult])  # [R, B]
    estimate = ln_rho_normalised(od.ln_rho, od.in_z)
    inside = np.flatnonzero(od.in_z & np.isfinite(od.ln_rho))
    lo, hi, std = (np.full(len(od.ln_rho), np.nan) for _ in range(3))
    for b in inside:
        # through −ln ρ̃, so that a replicate which never reaches the bin (−∞) leaves the lower end unbounded
        neg_lo, neg_hi = interval(-estimate[b], -reps[:, b], level, units.n_units - 1, floor=None)
        lo[b], hi[b] = -np.inf if neg_hi is None else -neg_hi, -neg_lo
        spread = replicate_std(reps[:, b])
        std[b] = np.nan if spread is None else spread
    return RhoBand(std, lo, hi)
