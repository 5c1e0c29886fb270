"""Stage `normalize`: the ratio PD_A→B : PA_A→B : PA_B→A : PD_B→A from two cross_eval runs (stage 3).

Logs ratio.json (DESIGN §4: terms and ratio with their intervals "ci" and spreads "std"), plots/D_overlay.png, the λ
sweep as a table, and the terms as metrics (with _lo, _hi and _std). What makes the intervals unreliable (too few
stage-1 units) is printed and tagged `modeldiff.warning`.
"""

from __future__ import annotations

import json

import mlflow

from modeldiff import pipeline
from modeldiff.method.normalize import TERMS
from modeldiff.method.uncertainty import warnings_for
from modeldiff.views import describe, plots

from .. import tracking
from ..runtime import Dist
from . import STAGE


def stage_hash(cfg, ab_run: str, ba_run: str) -> str:
    return STAGE["normalize"].hash(cfg, ab_run=ab_run, ba_run=ba_run)


WARNING = tracking.WARNING


def _spread_metrics(name: str, interval: list, std) -> dict:
    """name_lo, name_hi, name_std where they are finite (an unbounded end or spread is left out, never NaN)."""
    values = {f"{name}_lo": interval[0], f"{name}_hi": interval[1], f"{name}_std": std}
    return {k: v for k, v in values.items() if v is not None}


def ratio_metrics(ratio: dict) -> dict:
    d = ratio["D_range"]
    ci, std = ratio["ci"], ratio["std"]
    out = {
        **ratio["terms"],
        **{f"ratio_{k}": v for k, v in zip(TERMS, ratio["ratio"], strict=True)},
        **ratio["counts"],
        "D_A_min": d["A"][0],
        "D_A_max": d["A"][1],
        "D_B_min": d["B"][0],
        "D_B_max": d["B"][1],
    }
    for i, k in enumerate(TERMS):
        out.update(_spread_metrics(k, ci["terms"][k], std["terms"][k]))
        out.update(_spread_metrics(f"ratio_{k}", ci["ratio"][i], std["ratio"][i]))
    return out


def ratio_text(ratio: dict) -> str:
    """`1.000 : 0.541 [0.41, 0.69] : ...`: the ratio with each term's interval (∞ for an unbounded end)."""
    end = lambda v: "∞" if v is None else f"{v:.2f}"  # noqa: E731
    parts = [f"{ratio['ratio'][0]:.3f}"]
    parts += [f"{r:.3f} [{end(lo)}, {end(hi)}]" for r, (lo, hi) in zip(ratio["ratio"][1:], ratio["ci"]["ratio"][1:])]
    return " : ".join(parts)


def _check_pair(ab_run: str, ba_run: str) -> dict:
    """Both runs are finished cross_evals, one per direction, of the same two models; returns the A→B tags."""
    tags = {}
    for arg, run_id, want in (("ab_run", ab_run, "AB"), ("ba_run", ba_run, "BA")):
        tags[want] = tracking.get_run(run_id, "cross_eval").data.tags
        if tags[want].get(tracking.DIRECTION) != want:
            raise ValueError(
                f"{arg} {run_id} is a {tags[want].get(tracking.DIRECTION)} cross_eval, not {want}: "
                "pass the A→B run as ab_run and the B→A run as ba_run"
            )
    for tag in (tracking.MODEL_A, tracking.MODEL_B):
        key = tracking.identity_tag(tag)
        if tags["AB"].get(key) != tags["BA"].get(key):
            raise ValueError(
                f"ab_run {ab_run} and ba_run {ba_run} compare different models ({tag}: "
                f"{tags['AB'].get(tag)} vs {tags['BA'].get(tag)}): pass cross_eval runs of one model pair"
            )
    return tags["AB"]


def _z_range_of(cross_eval_run: str, cfg) -> tuple:
    """The Z the draws were flagged with (in_z_other): the cross_eval run's, which may differ from this config's."""
    logged = mlflow.get_run(cross_eval_run).data.params.get("z_range")
    try:
        return tuple(float(z) for z in json.loads(logged))
    except (TypeError, ValueError):
        return tuple(cfg.z_range)


def execute(cfg, dist: Dist, ab_run: str, ba_run: str) -> str | None:
    """Inside an open run on the main process (the others have nothing to do); returns the run id there."""
    if not dist.is_main:
        return None
    tags = _check_pair(ab_run, ba_run)
    ab, ba = tracking.load_draws(ab_run), tracking.load_draws(ba_run)
    ratio, sweep = pipeline.normalize(cfg, ab, ba, tracking.load_replicates(ab_run), tracking.load_replicates(ba_run))
    mlflow.set_tags({k: tags[k] for k in tags if k.startswith((tracking.MODEL_A, tracking.MODEL_B))})
    mlflow.set_tags({"modeldiff.ab_run": ab_run, "modeldiff.ba_run": ba_run})
    warnings = warnings_for(ratio["counts"])
    for text in warnings:
        print(f"modeldiff: warning: {text}")
    if warnings:
        tracking.add_warnings(warnings)
    mlflow.log_dict(ratio, "ratio.json")
    title = f"A = {tags.get(tracking.MODEL_A)}, B = {tags.get(tracking.MODEL_B)}"
    tracking.log_figure(
        plots.d_overlay_figure(ab, ba, lam=ratio["lambda"], title=title, ratio=ratio), "plots/D_overlay.png"
    )
    tracking.log_table(sweep, "tables/lambda_sweep.json")
    mlflow.log_metrics(ratio_metrics(ratio))
    tracking.set_description(
        describe.ratio_description(
            ratio,
            model_a=tags.get(tracking.MODEL_A),
            model_b=tags.get(tracking.MODEL_B),
            z_range=_z_range_of(ab_run, cfg),
            warnings=warnings,
            runs=tracking.located({"cross_eval A→B": ab_run, "cross_eval B→A": ba_run}),
            experiment_id=tracking.active_experiment_id(),
            title="normalize: the Model-diff ratio",
        )
    )
    return tracking.finish(stage_hash(cfg, ab_run, ba_run))


def run(cfg, dist: Dist, args) -> str | None:
    with dist.main_run("normalize", cfg, vars(args), run_name="normalize"):
        return execute(cfg, dist, args.ab_run, args.ba_run)
