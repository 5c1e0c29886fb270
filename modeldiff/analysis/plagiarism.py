"""The plagiarism signature of Model-diff (paper Sec. 4.3) as statistics and a verdict.

Black box. On a model's *own* representative inputs (its cross_eval draws), an independently trained
model is usually worse: each model wins on the inputs it finds likely. A weight-noise copy B of a trained
A breaks this: A has the lower NLL on most of B's own inputs. So, per side,
    q_B = fraction of B's draws with D < 0 (A, the other model, wins on B's inputs),
    q_A = fraction of A's draws with D > 0 (B wins on A's inputs),
with a Wilson interval whose sample size is the number of *effective* distinct inputs (all draws of one
input share their sign). A side is "dominated" when the lower bound of its q exceeds a calibrated
threshold; the other model is then the suspected parent. A strictly better model can dominate too, so the
threshold is set above every unrelated pair of the calibration suite. Second, how close the two functions
are: the 95th percentile of |D| over both sides' draws. Below a calibrated threshold the models are near
copies of each other (the paper's Fig. 4: "the area of overlap is larger because the two models are more
similar"); an exact or permuted copy has |D| at float noise.

White box (modeldiff.analysis.relatedness), when both have the same architecture: are the weights related at all
(p-values against independent training, whose nulls permute only the network's true symmetries), is their
difference, once B's units and heads are aligned to A's, i.i.d. noise (a noise copy) or structured (a fine-tune),
and which side carries the extra weight energy.

Modes (`plagiarism.mode`): `combined` uses both; `black_box` only the models' scores (the cross_eval draws: what a
user has for a model whose weights are not at hand); `white_box` only the weights.
    related + (noise-like difference, or near-identical function) -> suspected_copy_of
    related + structured difference                               -> related (e.g. a fine-tune)
    not related -> independent (combined: inconclusive if the black box says copy)
    no white box (black_box mode, or weights that cannot be compared): dominated or same function ->
        suspected_copy_of; each model wins on its own inputs -> independent; otherwise inconclusive
    white_box mode with weights that cannot be compared -> inconclusive, with the reason
Which one is the copy: the black box's dominated side if decisive; else, for a noise-like difference, the
weight-energy direction if decisive; else the argument order (model B is the candidate copy of model A, as when
screening a new registry version against the registered ones), and `direction_evidence` says which it was.
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
    own_wins: float = 0.5  # upper bound of q below this on both sides: each model wins on its own inputs
    weight_alpha: float = 1e-6  # white-box independence p-value below this: the weights are related
    noise_alpha: float = 1e-3  # δ-structure p-value below this: the difference is not i.i.d. noise
    direction_z: float = 4.0  # |weight-energy z| above this: it tells which model is the noisy copy
    near_identical: float = 0.03  # 95th percentile of |D| at most this: the two models are near copies
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


@dataclass
class BlackBox:
    a: SideStatistic
    b: SideStatistic
    abs_D_q95: float  # over both sides' draws
    near_identical: bool  # abs_D_q95 <= near_identical
    dominated: str | None  # "A" or "B": the side on whose own inputs the other model wins; None if neither
    own_wins: bool  # each model wins on its own inputs (both upper bounds below own_wins)


def black_box(ab: pd.DataFrame, ba: pd.DataFrame, thresholds: Thresholds = Thresholds()) -> BlackBox:
    a, b = side_statistic(ab, "A", thresholds), side_statistic(ba, "B", thresholds)
    q95 = float(np.quantile(np.abs(np.concatenate([ab["D"].to_numpy(np.float64), ba["D"].to_numpy(np.float64)])), 0.95))
    candidates = [s for s in (a, b) if s.interval[0] > thresholds.dominated]
    # if both sides look dominated, the one with the stronger evidence is the copy
    dominated = max(candidates, key=lambda s: s.interval[0]).side if candidates else None
    own_wins = a.interval[1] < thresholds.own_wins and b.interval[1] < thresholds.own_wins
    return BlackBox(a, b, q95, q95 <= thresholds.near_identical, dominated, own_wins)


@dataclass
class Verdict:
    verdict: str  # suspected_copy_of, related, independent or inconclusive
    copy: str | None  # "A" or "B": the suspected copy (for suspected_copy_of), None otherwise
    parent: str | None  # the other one
    direction_evidence: str | None  # black_box, weight_energy or argument_order (for suspected_copy_of)
    reason: str
    signals: dict = field(default_factory=dict)
    mode: str = "combined"  # the evidence it used: combined, black_box or white_box


def _noise_like(wb: Relatedness, thresholds: Thresholds) -> bool:
    return wb.identical_weights or wb.structure_p_value >= thresholds.noise_alpha


def _direction(bb: BlackBox | None, wb: Relatedness | None, thresholds: Thresholds) -> tuple[str, str]:
    """(the copy's side, the evidence for it). Weight energy names the copy only when the difference is noise-like:
    otherwise it shows which model has more weight energy, not which was copied."""
    if bb is not None and bb.dominated:
        return bb.dominated, "black_box"
    if (
        wb is not None
        and wb.applicable
        and _noise_like(wb, thresholds)
        and abs(wb.direction_z) > thresholds.direction_z
    ):
        return ("B" if wb.direction_z > 0 else "A"), "weight_energy"
    return "B", "argument_order"


def _black_box_text(bb: BlackBox, thresholds: Thresholds) -> str:
    if bb.near_identical and not bb.dominated:
        return (
            f"the two models are near copies: |D| <= {bb.abs_D_q95:.3g} on 95% of draws "
            f"(<= {thresholds.near_identical:g})"
        )
    if bb.dominated:
        s = bb.a if bb.dominated == "A" else bb.b
        other = "B" if bb.dominated == "A" else "A"
        return (
            f"on {bb.dominated}'s own inputs {other} has the lower NLL on {s.other_wins:.1%} of draws "
            f"({thresholds.confidence:.0%} lower bound {s.interval[0]:.1%} > {thresholds.dominated:.0%})"
        )
    if bb.own_wins:
        return "each model wins on its own inputs"
    return (
        f"the black-box asymmetry is not decisive (other model wins on A's inputs {bb.a.other_wins:.1%}, "
        f"on B's {bb.b.other_wins:.1%})"
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
    bb: BlackBox | None, wb: Relatedness | None, thresholds: Thresholds = Thresholds(), mode: str = "combined"
) -> Verdict:
    """The verdict from the evidence `mode` allows: the black-box asymmetry (needs `bb`), the white-box tests (None
    or not applicable: in combined mode the black box decides alone, in white_box mode the verdict is
    inconclusive), or both."""
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
        bb_copy = bb.near_identical or bb.dominated is not None
        signals["black_box"] = "copy" if bb_copy else ("independent" if bb.own_wins else "undecided")

    def verdict(kind: str, reason: str) -> Verdict:
        if kind != "suspected_copy_of":
            return Verdict(kind, None, None, None, reason, signals, mode)
        side, evidence = _direction(bb, wb, thresholds)
        return Verdict(kind, side, other[side], evidence, reason, signals, mode)

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
        return verdict("independent" if bb.own_wins else "inconclusive", reason)
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
        return (p if p is not None else 1.0, *((bb["abs_D_q95"], -bb["B"]["interval"][0]) if bb else (math.inf, 0.0)))

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
