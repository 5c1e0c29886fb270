"""Stage `cross_eval`: the sampling model's draws scored by the other model (stage 2).

`direction` AB: the outdist run's model is A (A→B); BA: it is B (B→A). D is always z_A − z_B.
Logs cross_eval/draws.parquet, cross_eval/replicates.npz (each distinct drawn input's ln f under stage 1's
replicates: what normalize's and annotate's intervals need), plots/D_hist.png, a table of the distinct drawn inputs,
and tokendiff/index.html: the D histogram whose bars list the drawn inputs in them, with token views (A vs B) of up
to tokendiff.cross_eval_views of them, stratified over the bins.
"""

from __future__ import annotations

import mlflow

from modeldiff import pipeline
from modeldiff.analysis import tokendiff
from modeldiff.method.uncertainty import SideReplicates, input_ess, kish_ess
from modeldiff.models import LoadedModel, check_comparable, load_model
from modeldiff.views import plots

from .. import tracking
from ..runtime import Dist
from . import STAGE

DIRECTIONS = ("AB", "BA")


def stage_hash(cfg, outdist_run: str, src: LoadedModel, other: LoadedModel, direction: str) -> str:
    return STAGE["cross_eval"].hash(
        cfg, outdist_run=outdist_run, src=src.identity, other=other.identity, direction=direction
    )


def _side_tags(src: LoadedModel, other: LoadedModel, direction: str) -> dict:
    a, b = (src, other) if direction == "AB" else (other, src)
    return {
        tracking.MODEL_A: a.ref,
        tracking.MODEL_B: b.ref,
        tracking.identity_tag(tracking.MODEL_A): a.identity,
        tracking.identity_tag(tracking.MODEL_B): b.identity,
        tracking.DIRECTION: direction,
    }


def _log(
    cfg, draws, replicates: SideReplicates, outdist_run: str, src: LoadedModel, other: LoadedModel, direction: str
):
    arrow = "A→B" if direction == "AB" else "B→A"
    mlflow.set_tags({**_side_tags(src, other, direction), "modeldiff.outdist_run": outdist_run})
    tracking.log_parquet(draws, "cross_eval/draws.parquet")
    tracking.log_replicates(replicates)
    tracking.log_figure(
        plots.d_hist_figure(draws, title=f"{arrow}: {src.ref} draws scored by {other.ref}"), "plots/D_hist.png"
    )
    distinct = tokendiff.distinct_draws(draws).drop(columns="tokens")
    tracking.log_table(distinct, "tables/draws.json")
    a, b = (src, other) if direction == "AB" else (other, src)
    mlflow.log_text(
        pipeline.draws_token_view(
            cfg, draws, a, b, title=f"cross_eval {arrow}: {src.ref} draws, A = {a.ref}, B = {b.ref}"
        ),
        "tokendiff/index.html",
    )
    inside = draws["in_z_other"]
    negative = float((draws.loc[inside, "D"] < 0).mean()) if inside.any() else 0.0
    mlflow.log_metrics(
        {
            "n_draws": len(draws),
            "n_in_z_other": int(inside.sum()),
            "n_distinct": draws.attrs.get("n_distinct", len(distinct)),
            "D_min": float(draws["D"].min()),
            "D_max": float(draws["D"].max()),
            "D_mean": float(draws["D"].mean()),
            "frac_D_negative_in_z": negative,
            "ess_inputs": input_ess(draws["representative"]),
            "ess_units": kish_ess(replicates.unit_draws),
            "n_units": replicates.n_units,
        }
    )


def execute(cfg, dist: Dist, outdist_run: str, src: LoadedModel, other: LoadedModel, direction: str) -> str:
    """Inside an open run (main process): draw, score (split across processes), log; returns the run id."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be AB (the outdist run's model is A) or BA (it is B), got {direction!r}")
    od = tracking.load_outdist(outdist_run)
    draws = pipeline.cross_eval(cfg, od, src, other, role=direction[0], shard=dist.shard)
    if dist.is_main:
        replicates = pipeline.cross_eval_replicates(cfg, od, draws, role=direction[0])
        _log(cfg, draws, replicates, outdist_run, src, other, direction)
    return tracking.finish(stage_hash(cfg, outdist_run, src, other, direction), dist)


def run(cfg, dist: Dist, args) -> str:
    with dist.main_run("cross_eval", cfg, vars(args), run_name=f"cross_eval {args.direction}"):
        tags = tracking.get_run(args.outdist_run, "sample_outdist").data.tags
        with dist.main_first():
            src = load_model(tags[tracking.MODEL], cfg)
            other = load_model(args.other_model, cfg)
        if src.identity != tags.get(tracking.identity_tag(tracking.MODEL)):
            raise ValueError(
                f"{src.ref} now loads as {src.identity}, but run {args.outdist_run} sampled "
                f"{tags.get(tracking.identity_tag(tracking.MODEL))}: pass the config and overrides of "
                "that sample_outdist run"
            )
        check_comparable(src, other)
        return execute(cfg, dist, args.outdist_run, src, other, args.direction)
