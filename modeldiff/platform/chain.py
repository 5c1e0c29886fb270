"""Chaining stages as child runs of one run, reusing finished identical runs (MLflow's multistep workflow).

Each step first looks for a finished run with the same stage hash (its config keys, model identities and upstream
run ids) and reuses it, so rerunning finishes in seconds and a changed parameter reruns only the steps it affects.
Steps run in-process as nested runs (no subprocess per step). `main` and `plagiarism_check` run the same steps.
"""

from __future__ import annotations

from functools import partial

from modeldiff.models import LoadedModel, check_comparable

from . import tracking
from .runtime import Dist
from .stages import cross_eval, normalize, sample_outdist


def run_or_reuse(cfg, dist: Dist, experiment_id, stage: str, h: str, name: str, params: dict, execute) -> str:
    """The run id of a finished `stage` run with hash `h` in the experiment, or of a new child run `execute()` makes."""
    found = dist.broadcast(tracking.find_finished_run(stage, h, experiment_id) if dist.is_main else None)
    if found:
        if dist.is_main:
            print(f"modeldiff: {name}: reusing finished run {found}")
        return found
    with dist.main_run(stage, cfg, params, run_name=name):
        return execute()


def run_steps(cfg, dist: Dist, a: LoadedModel, b: LoadedModel, experiment_id) -> dict:
    """Runs or reuses every step of the chain for two loaded models (as child runs of the active run, if any);
    returns {step name: run id}."""
    check_comparable(a, b)
    runs = {}
    for role, m in (("A", a), ("B", b)):
        h = sample_outdist.stage_hash(cfg, m)
        # an identical sampling run that was interrupted continues from its checkpoint
        resume = dist.broadcast(
            tracking.find_resumable_run("sample_outdist", h, experiment_id) if dist.is_main else None
        )
        runs[f"sample_outdist_{role}"] = run_or_reuse(
            cfg,
            dist,
            experiment_id,
            "sample_outdist",
            h,
            f"sample_outdist {role} {m.ref}",
            {"model": m.ref},
            partial(sample_outdist.execute, cfg, dist, m, resume),
        )
    for direction, (src, other) in (("AB", (a, b)), ("BA", (b, a))):
        od_run = runs[f"sample_outdist_{direction[0]}"]
        runs[f"cross_eval_{direction}"] = run_or_reuse(
            cfg,
            dist,
            experiment_id,
            "cross_eval",
            cross_eval.stage_hash(cfg, od_run, src, other, direction),
            f"cross_eval {direction}",
            {"outdist_run": od_run, "other_model": other.ref, "direction": direction},
            partial(cross_eval.execute, cfg, dist, od_run, src, other, direction),
        )
    ab, ba = runs["cross_eval_AB"], runs["cross_eval_BA"]
    runs["normalize"] = run_or_reuse(
        cfg,
        dist,
        experiment_id,
        "normalize",
        normalize.stage_hash(cfg, ab, ba),
        "normalize",
        {"ab_run": ab, "ba_run": ba},
        partial(normalize.execute, cfg, dist, ab, ba),
    )
    return runs


def pair_tags(a: LoadedModel, b: LoadedModel) -> dict:
    return {
        tracking.MODEL_A: a.ref,
        tracking.MODEL_B: b.ref,
        tracking.identity_tag(tracking.MODEL_A): a.identity,
        tracking.identity_tag(tracking.MODEL_B): b.identity,
    }
