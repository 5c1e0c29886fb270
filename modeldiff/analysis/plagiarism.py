"""The plagiarism signature of Model-diff (paper Sec. 4.3) as statistics and a verdict.

Black box: two regimes of a noise copy, two statistics (each with an interval whose sample size is the number of
effectively distinct inputs, not draws: all draws of one input share its D).
- Near identity (small σ). Each model wins on its own representative inputs by selection (its likely inputs are where
  its own noise helped), exactly as independent models do, so that pattern is no evidence of independence. The
  evidence is that the two functions nearly coincide: the median over inputs of |D| relative to the pair's own scale,
  the spread (standard deviation) of each side's own z over its representatives, pooled over both sides. Its interval
  comes from the binomial distribution of the ranks (order statistics) at the inputs' effective sample size.
  Near-identical when the upper bound is at most `near_identical`.
- Dominance (large σ, the paper's Fig. 4). Once the parent's optimum outweighs the selection, the parent has the lower
  NLL on most of the copy's own inputs. Per side,
      q_B = fraction of B's draws with D < 0 (A, the other model, wins on B's inputs),
      q_A = fraction of A's draws with D > 0 (B wins on A's inputs),
  with a Wilson interval at the effective number of inputs. A side is "dominated" when the lower bound of its q exceeds
  `dominated` (set above every unrelated pair of the calibration, since a strictly better model dominates too).
- Independent (black box) only when the functions differ by more than the copy regimes allow: the lower bound of the
  relative median |D| above `distinct` and neither side dominated. Otherwise the black box abstains. A copy damaged
  further than any copy of the calibration looks independent to the black box: on held-out SmolLM2, the σ = 1e-1
  copy (0.9 nats a token worse on SmolLM2's inputs, and better on its own) has a relative |D| of 8
  (benchmarks/plagiarism_calibration.py); the white box still names it.
- Direction, with its own evidence: the dominated side is the copy; else the balance of D over both sides' inputs,
  mean_A(D) + mean_B(D) with D = z_A − z_B: selection pushes the two means in opposite directions by about the same
  amount, while the parent, at the optimum its copy was pushed away from, has the lower NLL on both sides, so the sum
  has the sign of the copy's extra NLL. Decisive when |sum| / its standard error exceeds `balance_z`; else unknown.
  The optimum is an assumption: for an undertrained parent the noise's first-order effect can make the copy better
  on both sides, so the balance yields to the weights and to the registry's order (see the order below).

White box (modeldiff.analysis.relatedness), when both have the same architecture: are the weights related at all
(p-values against independent training, whose nulls permute only the network's true symmetries), is their
difference, once B's units and heads are aligned to A's, i.i.d. noise (a noise copy) or structured (a fine-tune),
and which side carries the extra weight energy.

Modes (`plagiarism.mode`): `combined` uses both; `black_box` only the models' scores (the cross_eval draws: what a
user has for a model whose weights are not at hand); `white_box` only the weights.
    related + (noise-like difference, or near-identical function) -> suspected_copy_of
    related + structured difference                               -> related (e.g. a fine-tune)
    not related -> independent (combined: inconclusive if the black box says copy)
    no white box (black_box mode, or weights that cannot be compared): dominated or near-identical ->
        suspected_copy_of; functions farther apart than the copy regimes allow -> independent; otherwise inconclusive
    white_box mode with weights that cannot be compared -> inconclusive, with the reason
Which one is the copy: the black box's dominated side if decisive (`black_box_dominance`); else, for a noise-like
difference, the weight-energy direction if decisive (`weight_energy`); else the order given by the caller if it is
evidence (`registration_order`: screening compares a new registry version, model B, with versions registered before
it); else the black-box balance if decisive (`black_box_balance`: it assumes the parent at an optimum of its loss, so
it yields to the registry); else `unknown` (copy and parent None). The order of the arguments of a pair check is never
taken as evidence.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import pandas as pd
from scipy.stats import norm

from modeldiff.method.uncertainty import input_ess

from . import PLAGIARISM_MODES
from .relatedness import Relatedness


@dataclass(frozen=True)
class Thresholds:
    """Decision thresholds: the defaults are those of configs/base.yaml, calibrated by
    benchmarks/plagiarism_calibration.py (tests check that the two agree)."""

    dominated: float = 0.95  # lower confidence bound of q above this: that side is dominated by the other model
    own_wins: float = 0.5  # upper bound of q below this on both sides: each model wins on its own inputs (reported)
    near_identical: float = 0.25  # upper bound of the median |D| / the pair's z spread at most this: near copies
    distinct: float = 2.0  # lower bound of that median above this: farther apart than any copy (black-box independent)
    balance_z: float = 3.0  # |mean_A(D) + mean_B(D)| / its standard error above this: it names the copy
    weight_alpha: float = 1e-6  # white-box independence p-value below this: the weights are related
    noise_alpha: float = 1e-3  # δ-structure p-value below this: the difference is not i.i.d. noise
    direction_z: float = 4.0  # |weight-energy z| above this: it tells which model is the noisy copy
    identical_tolerance: float = 1e-6  # |D| at most this: a tie, counted for neither side of q
    confidence: float = 0.95  # two-sided level of the intervals on q

    @classmethod
    def from_config(cls, cfg) -> Thresholds:
        """The config's plagiarism.* keys of the same names (the rest of that section are the tests' settings)."""
        return cls(**{f.name: float(cfg.plagiarism[f.name]) for f in fields(cls)})


def wilson(successes: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion with (possibly fractional, effective) sample size n."""
    if n <= 0:
        return 0.0, 1.0
    z = float(norm.ppf(0.5 + confidence / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class SideStatistic:
    """One side's draws: how often the *other* model has the lower NLL on this model's own inputs."""

    side: str  # "A" (A's draws, A→B) or "B"
    n_draws: int
    n_distinct: int
    n_effective: float
    n_ties: int  # draws with |D| <= identical_tolerance (not counted either way)
    other_wins: float  # q
    interval: tuple[float, float]
    mean_D: float
    max_abs_D: float
    abs_D_q95: float


def side_statistic(draws: pd.DataFrame, side: str, thresholds: Thresholds = Thresholds()) -> SideStatistic:
    """q for one cross_eval run's draws (columns D, representative). D = z_A − z_B, so the other model wins
    on A's draws where D > 0 and on B's draws where D < 0."""
    if side not in ("A", "B"):
        raise ValueError(f"side must be 'A' or 'B', got {side!r}")
    d = draws["D"].to_numpy(np.float64)
    if len(d) == 0:
        raise ValueError(f"the {side} side has no draws: run cross_eval with cross_eval.n_draws >= 1")
    if not np.isfinite(d).all():
        raise ValueError(f"the {side} side's D has NaN/inf: rescore the draws (a model produced non-finite NLLs)")
    tol = thresholds.identical_tolerance
    wins = (d > tol) if side == "A" else (d < -tol)
    decided = np.abs(d) > tol
    # draws of one distinct input share their sign: the effective sample size counts inputs, not draws
    reps = draws["representative"].to_numpy() if "representative" in draws else np.arange(len(d))
    n_eff = input_ess(reps, weights=decided)
    n_decided = float(decided.sum())
    q = float(wins.sum()) / n_decided if n_decided > 0 else 0.5
    return SideStatistic(
        side=side,
        n_draws=len(d),
        n_distinct=len(np.unique(reps)),
        n_effective=n_eff,
        n_ties=int((~decided).sum()),
        other_wins=q,
        interval=wilson(q * n_eff, n_eff, thresholds.confidence),
        mean_D=float(d.mean()),
        max_abs_D=float(np.abs(d).max()),
        abs_D_q95=float(np.quantile(np.abs(d), 0.95)),
    )


def _per_input(draws: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(value, number of draws) per distinct input of one side (draws of one input share their z and D)."""
    reps = draws["representative"].to_numpy() if "representative" in draws else np.arange(len(draws))
    _, first, counts = np.unique(reps, return_index=True, return_counts=True)
    return draws[column].to_numpy(np.float64)[first], counts.astype(np.float64)


def _weighted_moments(x: np.ndarray, w: np.ndarray) -> tuple[float, float, float]:
    """(mean, variance, Kish effective sample size) of values x with weights w."""
    mean = float(np.average(x, weights=w))
    return mean, float(np.average((x - mean) ** 2, weights=w)), float(w.sum() ** 2 / (w**2).sum())


def weighted_quantile_interval(
    x: np.ndarray, w: np.ndarray, p: float, n: float, confidence: float = 0.95
) -> tuple[float, tuple[float, float]]:
    """The p-quantile of values x with weights w and its distribution-free interval: the quantiles at the ends of the
    Wilson interval of the rank share p at sample size n (order statistics: the share of a sample below the true
    p-quantile is binomial(n, p)/n)."""
    order = np.argsort(x)
    xs, cdf = x[order], np.cumsum(w[order]) / w.sum()

    def at(share: float) -> float:
        return float(xs[min(np.searchsorted(cdf, share, side="left"), len(xs) - 1)])

    lo, hi = wilson(p * n, n, confidence)
    return at(p), (at(lo) if lo > 0 else float(xs[0]), at(hi) if hi < 1 else float(xs[-1]))


@dataclass
class BlackBox:
    a: SideStatistic
    b: SideStatistic
    abs_D_q95: float  # over both sides' draws (nats; reported, the verdict uses the relative median below)
    near_identical: bool  # upper bound of relative_D <= near_identical
    dominated: str | None  # "A" or "B": the side on whose own inputs the other model wins; None if neither
    own_wins: bool  # each model wins on its own inputs (both upper bounds below own_wins): reported, not a verdict
    scale: float = 1.0  # the pair's own scale: pooled standard deviation of each side's own z over its inputs
    relative_D: float = 0.0  # median over both sides' inputs of |D| / scale
    relative_D_interval: tuple[float, float] = (0.0, 0.0)
    n_effective: float = 0.0  # effectively distinct inputs of both sides (the intervals' sample size)
    distinct: bool = False  # lower bound of relative_D > distinct: farther apart than the copy regimes allow
    balance: float = 0.0  # mean_A(D) + mean_B(D): < 0 when A has the lower NLL on both sides' inputs (B the copy)
    balance_se: float = math.inf
    balance_copy: str | None = None  # the copy by the balance, when |balance| / balance_se > balance_z

    @property
    def copy_signal(self) -> bool:
        return self.near_identical or self.dominated is not None

    @property
    def balance_z(self) -> float:
        return self.balance / self.balance_se if self.balance_se > 0 else 0.0


def black_box(ab: pd.DataFrame, ba: pd.DataFrame, thresholds: Thresholds = Thresholds()) -> BlackBox:
    """Both regimes' statistics from the two sides' cross_eval draws (columns D, z_A, z_B, representative)."""
    for side, draws in (("A", ab), ("B", ba)):
        missing = {"D", "z_A", "z_B"} - set(draws.columns)
        if missing:
            raise ValueError(
                f"the {side} side's draws lack {', '.join(sorted(missing))}: pass cross_eval's draws.parquet as logged"
            )
    a, b = side_statistic(ab, "A", thresholds), side_statistic(ba, "B", thresholds)
    q95 = float(np.quantile(np.abs(np.concatenate([ab["D"].to_numpy(np.float64), ba["D"].to_numpy(np.float64)])), 0.95))
    candidates = [s for s in (a, b) if s.interval[0] > thresholds.dominated]
    # if both sides look dominated, the one with the stronger evidence is the copy
    dominated = max(candidates, key=lambda s: s.interval[0]).side if candidates else None
    own_wins = a.interval[1] < thresholds.own_wins and b.interval[1] < thresholds.own_wins

    # near identity: |D| against the spread of each side's own z over its representatives
    (za, wa), (zb, wb) = _per_input(ab, "z_A"), _per_input(ba, "z_B")
    scale = math.sqrt((_weighted_moments(za, wa)[1] + _weighted_moments(zb, wb)[1]) / 2)
    if not scale > thresholds.identical_tolerance:
        raise ValueError(
            "the representatives' own NLLs have no spread (z is the same on every input): widen z_range so the "
            "distance between the two models can be judged against it"
        )
    (da, _), (db, _) = _per_input(ab, "D"), _per_input(ba, "D")
    rel = np.abs(np.concatenate([da, db])) / scale
    w = np.concatenate([wa, wb])
    n_eff = float(w.sum() ** 2 / (w**2).sum())
    rel_median, rel_interval = weighted_quantile_interval(rel, w, 0.5, n_eff, thresholds.confidence)

    # direction: the balance of D over both sides (selection cancels, the parent's optimum does not)
    mean_a, var_a, ess_a = _weighted_moments(da, wa)
    mean_b, var_b, ess_b = _weighted_moments(db, wb)
    balance = mean_a + mean_b
    se = math.sqrt(var_a / ess_a + var_b / ess_b)
    balance_copy = None
    if (se > 0 and abs(balance) / se > thresholds.balance_z) or (
        se == 0 and abs(balance) > thresholds.identical_tolerance
    ):
        balance_copy = "B" if balance < 0 else "A"
    return BlackBox(
        a,
        b,
        q95,
        rel_interval[1] <= thresholds.near_identical,
        dominated,
        own_wins,
        scale=scale,
        relative_D=rel_median,
        relative_D_interval=rel_interval,
        n_effective=n_eff,
        distinct=rel_interval[0] > thresholds.distinct,
        balance=balance,
        balance_se=se,
        balance_copy=balance_copy,
    )


@dataclass
class Verdict:
    verdict: str  # suspected_copy_of, related, independent or inconclusive
    copy: str | None  # "A" or "B": the suspected copy (for suspected_copy_of with a known direction), None otherwise
    parent: str | None  # the other one
    # for suspected_copy_of: black_box_dominance, black_box_balance, weight_energy, registration_order or unknown
    direction_evidence: str | None
    reason: str
    signals: dict = field(default_factory=dict)
    mode: str = "combined"  # the evidence it used: combined, black_box or white_box


def _noise_like(wb: Relatedness, thresholds: Thresholds) -> bool:
    return wb.identical_weights or wb.structure_p_value >= thresholds.noise_alpha


def _direction(
    bb: BlackBox | None, wb: Relatedness | None, thresholds: Thresholds, order: str | None = None
) -> tuple[str | None, str]:
    """(the copy's side or None, the evidence for it). Weight energy names the copy only when the difference is
    noise-like: otherwise it shows which model has more weight energy, not which was copied. `order`: the name of the
    evidence that B came later (registration_order), or None: argument order alone is no evidence."""
    if bb is not None and bb.dominated:
        return bb.dominated, "black_box_dominance"
    if (
        wb is not None
        and wb.applicable
        and _noise_like(wb, thresholds)
        and abs(wb.direction_z) > thresholds.direction_z
    ):
        return ("B" if wb.direction_z > 0 else "A"), "weight_energy"
    # the balance assumes the parent sits at an optimum of its loss (the copy's noise can only cost NLL, to second
    # order); an undertrained parent's first-order term points either way (a 60-step toy's σ = 1e-3 copy scored
    # better on both sides, balance z = 5.7), so the registry's order, where there is one, goes first
    if order:
        return "B", order
    if bb is not None and bb.balance_copy:
        return bb.balance_copy, "black_box_balance"
    return None, "unknown"


def _black_box_text(bb: BlackBox, thresholds: Thresholds) -> str:
    lo, hi = bb.relative_D_interval
    closeness = (
        f"median |D| = {bb.relative_D:.3g} × the pair's z spread {bb.scale:.3g} "
        f"({thresholds.confidence:.0%} interval {lo:.3g}–{hi:.3g}, {bb.n_effective:.0f} effective inputs)"
    )
    if bb.dominated:
        s = bb.a if bb.dominated == "A" else bb.b
        other = "B" if bb.dominated == "A" else "A"
        return (
            f"on {bb.dominated}'s own inputs {other} has the lower NLL on {s.other_wins:.1%} of draws "
            f"({thresholds.confidence:.0%} lower bound {s.interval[0]:.1%} > {thresholds.dominated:.0%}); {closeness}"
        )
    if bb.near_identical:
        return f"the two functions nearly coincide: {closeness} (<= {thresholds.near_identical:g})"
    if bb.distinct:
        return (
            f"the two functions differ more than a calibrated copy's would: {closeness} (> {thresholds.distinct:g}); "
            "a copy damaged further than that (SmolLM2 with 10% weight noise) looks the same to the black box"
        )
    return (
        f"the black box is not decisive: {closeness}, neither <= {thresholds.near_identical:g} (near copies) nor "
        f"> {thresholds.distinct:g} (farther apart than copies); the other model wins on A's inputs "
        f"{bb.a.other_wins:.1%}, on B's {bb.b.other_wins:.1%}"
    )


def _white_box_text(wb: Relatedness, related: bool, noise_like: bool, thresholds: Thresholds) -> str:
    text = (
        f"weights {'related' if related else 'not related'} (independence p = {wb.p_value:.3g}, "
        f"α = {thresholds.weight_alpha:g}; median centred cosine {wb.cosine_median:.4f})"
    )
    if not related:
        return text
    moved = ", ".join(
        f"{share:.0%} of B's {what} relabelled to match A's"
        for what, share in (("hidden units", wb.units_moved), ("heads", wb.heads_moved))
        if share > 0
    )
    how = (
        "identical weights"
        if wb.identical_weights
        else f"their difference is {'consistent with i.i.d. noise' if noise_like else 'structured'} "
        f"(p = {wb.structure_p_value:.3g}, median spectral ratio {wb.spectral_ratio_median:.3f})"
    )
    return f"{text}; {moved + '; ' if moved else ''}{how}"


def decide(
    bb: BlackBox | None,
    wb: Relatedness | None,
    thresholds: Thresholds = Thresholds(),
    mode: str = "combined",
    order: str | None = None,
) -> Verdict:
    """The verdict from the evidence `mode` allows: the black-box statistics (needs `bb`), the white-box tests (None
    or not applicable: in combined mode the black box decides alone, in white_box mode the verdict is
    inconclusive), or both. `order`: the name of independent evidence that B came after A (screening passes
    `registration_order`), the last resort for the direction; without it an undecided direction is `unknown`."""
    if mode not in PLAGIARISM_MODES:
        raise ValueError(f"plagiarism mode must be one of {', '.join(PLAGIARISM_MODES)}, got {mode!r}")
    if mode != "white_box" and bb is None:
        raise ValueError(f"plagiarism mode {mode} needs both sides' cross_eval draws (the black box)")
    bb = None if mode == "white_box" else bb
    wb = None if mode == "black_box" else wb
    other = {"A": "B", "B": "A"}
    signals = {}
    if bb is not None:
        bb_text = _black_box_text(bb, thresholds)
        bb_copy = bb.copy_signal
        signals["black_box"] = "copy" if bb_copy else ("independent" if bb.distinct else "undecided")

    def verdict(kind: str, reason: str) -> Verdict:
        if kind != "suspected_copy_of":
            return Verdict(kind, None, None, None, reason, signals, mode)
        side, evidence = _direction(bb, wb, thresholds, order)
        if side is None:
            reason = f"{reason}; which model is the copy is unknown (no evidence of direction)"
        return Verdict(kind, side, other.get(side), evidence, reason, signals, mode)

    if wb is None or not wb.applicable:
        if mode == "black_box":
            reason = f"{bb_text} (black box only: the weights are not used)"
        else:
            signals["white_box"] = "not applicable"
            why = f"white box: {wb.reason if wb is not None else 'weights not compared'}"
            if bb is None:
                return verdict("inconclusive", f"{why}; the white_box mode has no other evidence")
            reason = f"{bb_text}; {why}"
        if bb_copy:
            return verdict("suspected_copy_of", reason)
        return verdict("independent" if bb.distinct else "inconclusive", reason)
    related = wb.p_value < thresholds.weight_alpha
    noise_like = _noise_like(wb, thresholds)
    signals["white_box"] = "independent" if not related else "noise copy" if noise_like else "structured change"
    wb_text = _white_box_text(wb, related, noise_like, thresholds)
    reason = f"{wb_text}; {bb_text}" if bb is not None else f"{wb_text} (white box only: the scores are not used)"
    if related:
        near_identical = bb is not None and bb.near_identical
        return verdict("suspected_copy_of" if noise_like or near_identical else "related", reason)
    if bb is not None and bb_copy:
        return verdict("inconclusive", f"{bb_text}, but {wb_text}")
    return verdict("independent", reason)


def black_box_verdict(bb: BlackBox, thresholds: Thresholds = Thresholds()) -> Verdict:
    """The black-box signal alone (the black_box mode)."""
    return decide(bb, None, thresholds, "black_box")


def report(bb: BlackBox | None, wb: Relatedness | None, verdict: Verdict, thresholds: Thresholds) -> dict:
    """The body of plagiarism.json (model refs are added by the caller): the verdict, the mode that made it, and the
    evidence that mode used (`black_box` is None in white_box mode, `white_box` absent in black_box mode)."""

    def side(s: SideStatistic) -> dict:
        d = asdict(s)
        d["interval"] = list(s.interval)
        return d

    out = {
        "verdict": verdict.verdict,
        "mode": verdict.mode,
        "copy": verdict.copy,
        "parent": verdict.parent,
        "direction_evidence": verdict.direction_evidence,
        "reason": verdict.reason,
        "signals": verdict.signals,
        "thresholds": asdict(thresholds),
        "black_box": None,
    }
    if bb is not None and verdict.mode != "white_box":
        out["black_box"] = {
            "A": side(bb.a),
            "B": side(bb.b),
            "abs_D_q95": bb.abs_D_q95,
            "near_identical": bb.near_identical,
            "dominated": bb.dominated,
            "own_wins": bb.own_wins,
            "scale": bb.scale,
            "relative_D": bb.relative_D,
            "relative_D_interval": list(bb.relative_D_interval),
            "n_effective": bb.n_effective,
            "distinct": bb.distinct,
            "balance": bb.balance,
            "balance_se": bb.balance_se,
            "balance_z": bb.balance_z,
            "balance_copy": bb.balance_copy,
        }
    if wb is not None and verdict.mode != "black_box":
        out["white_box"] = {
            **wb.summary(),
            "tensors": [asdict(t) for t in wb.tensors or []],
            "blocks": [asdict(b) for b in wb.blocks or []],
            "deltas": [asdict(d) for d in wb.deltas or []],
        }
    return out


def statistic(rep: dict) -> dict:
    """The few numbers behind a verdict (the registry tag `modeldiff.lineage.statistic`)."""
    bb, wb = rep.get("black_box"), rep.get("white_box") or {}
    out = {"mode": rep.get("mode", "combined")}
    if bb:
        out.update(
            q_A=round(bb["A"]["other_wins"], 4),
            q_B=round(bb["B"]["other_wins"], 4),
            q_B_interval=[round(v, 4) for v in bb["B"]["interval"]],
            abs_D_q95=float(f"{bb['abs_D_q95']:.3g}"),
        )
        if "relative_D" in bb:
            out.update(
                relative_D=float(f"{bb['relative_D']:.3g}"),
                relative_D_interval=[float(f"{v:.3g}") for v in bb["relative_D_interval"]],
                balance_z=round(bb["balance_z"], 2),
            )
    if rep.get("direction_evidence"):
        out["direction"] = rep["direction_evidence"]
    if wb.get("applicable"):
        out.update(
            weight_p=float(f"{wb['p_value']:.3g}"),
            noise_p=float(f"{wb['structure_p_value']:.3g}"),
            direction_z=round(wb["direction_z"], 2),
        )
    return out


def screening_verdict(results: list[tuple[str, dict]], skipped=()) -> tuple[str, str, dict]:
    """(verdict, counterpart, statistic) for a new model from its pairwise reports against each counterpart
    (model A = the counterpart, model B = the new model). A copy verdict names the counterpart with the strongest
    evidence; a counterpart that looks like a copy *of the new model* makes the new model `related` to it. With
    counterparts `skipped` (not compared), no finding is `inconclusive`, not `independent`."""
    if skipped and not any(r["verdict"] != "independent" for _, r in results):
        return "inconclusive", "", {"n_counterparts": len(results), "not_compared": sorted(skipped)}
    if not results:
        return "independent", "", {"note": "no model of its vocabulary was registered before it"}

    def strength(rep: dict) -> tuple:
        wb, bb = rep.get("white_box") or {}, rep.get("black_box")
        p = wb.get("p_value") if wb.get("applicable") else None
        closeness = bb.get("relative_D_interval", [0, bb["abs_D_q95"]])[1] if bb else math.inf
        return (p if p is not None else 1.0, closeness, -bb["B"]["interval"][0] if bb else 0.0)

    copies = [(c, r) for c, r in results if r["verdict"] == "suspected_copy_of" and r["copy"] == "B"]
    if copies:
        c, r = min(copies, key=lambda cr: strength(cr[1]))
        return "suspected_copy_of", c, statistic(r)
    related = [(c, r) for c, r in results if r["verdict"] in ("related", "suspected_copy_of")]
    if related:
        c, r = min(related, key=lambda cr: strength(cr[1]))
        return "related", c, statistic(r)
    undecided = [(c, r) for c, r in results if r["verdict"] == "inconclusive"]
    if undecided:
        return "inconclusive", undecided[0][0], statistic(undecided[0][1])
    return "independent", "", {"n_counterparts": len(results)}
