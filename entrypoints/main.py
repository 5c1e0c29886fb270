"""Entry point `main`: sample_outdist A and B, cross_eval A→B and B→A, normalize, as child runs of one run
(and, with annotate.in_main, annotate both cross_eval runs with an automatic annotator).

Each step first looks for a finished run with the same config hash (its config keys, model identities
and upstream run ids) and reuses it, so rerunning finishes in seconds and a changed parameter reruns
only the steps it affects. Steps run in-process as nested runs (no subprocess per step).
"""
from __future__ import annotations

from functools import partial

import mlflow

from modeldiff import annotate as annotation
from modeldiff import tracking
from modeldiff.config import config_hash
from modeldiff.models import LoadedModel, check_comparable, load_model

from . import annotate, cross_eval, normalize, sample_outdist
from ._common import Dist, parser, setup, user_errors


def _step(cfg, dist: Dist, experiment_id, entry_point: str, h: str, name: str, params: dict, execute) -> str:
    found = dist.broadcast(tracking.find_finished_run(entry_point, h, experiment_id) if dist.is_main else None)
    if found:
        if dist.is_main:
            print(f"modeldiff: {name}: reusing finished run {found}")
        return found
    with dist.main_run(entry_point, cfg, params, run_name=name):
        return execute()


def run_steps(cfg, dist: Dist, a: LoadedModel, b: LoadedModel, experiment_id) -> dict:
    """Runs or reuses every step of the chain for two loaded models (as child runs of the active run, if any);
    returns {step name: run id}. The plagiarism check runs the same steps."""
    check_comparable(a, b)
    runs = {}
    for role, m in (("A", a), ("B", b)):
        h = sample_outdist.stage_hash(cfg, m)
        # an identical sampling run that was interrupted continues from its checkpoint
        resume = dist.broadcast(tracking.find_resumable_run("sample_outdist", h, experiment_id) if dist.is_main else None)
        runs[f"sample_outdist_{role}"] = _step(
            cfg, dist, experiment_id, "sample_outdist", h, f"sample_outdist {role} {m.ref}",
            {"model": m.ref}, partial(sample_outdist.execute, cfg, dist, m, resume))
    for direction, (src, other) in (("AB", (a, b)), ("BA", (b, a))):
        od_run = runs[f"sample_outdist_{direction[0]}"]
        runs[f"cross_eval_{direction}"] = _step(
            cfg, dist, experiment_id, "cross_eval", cross_eval.stage_hash(cfg, od_run, src, other, direction),
            f"cross_eval {direction}", {"outdist_run": od_run, "other_model": other.ref, "direction": direction},
            partial(cross_eval.execute, cfg, dist, od_run, src, other, direction))
    ab, ba = runs["cross_eval_AB"], runs["cross_eval_BA"]
    runs["normalize"] = _step(cfg, dist, experiment_id, "normalize", normalize.stage_hash(cfg, ab, ba), "normalize",
                              {"ab_run": ab, "ba_run": ba}, partial(normalize.execute, cfg, dist, ab, ba))
    return runs


def pair_tags(a: LoadedModel, b: LoadedModel) -> dict:
    return {tracking.MODEL_A: a.ref, tracking.MODEL_B: b.ref, tracking.identity_tag(tracking.MODEL_A): a.identity,
            tracking.identity_tag(tracking.MODEL_B): b.identity}


def chain(cfg, dist: Dist, model_a: str, model_b: str) -> dict:
    """Runs or reuses every step inside the open parent run; returns {step name: run id}."""
    with dist.main_first():
        a, b = load_model(model_a, cfg), load_model(model_b, cfg)
    check_comparable(a, b)
    parent = mlflow.active_run() if dist.is_main else None
    if parent:
        mlflow.set_tags(pair_tags(a, b))
    exp = parent.info.experiment_id if parent else None
    runs = run_steps(cfg, dist, a, b, exp)
    if cfg.annotate.in_main:
        runs.update(_annotate_both(cfg, dist, exp, runs, a))
    if parent:  # the parent shows the result too, and links its steps
        ratio = tracking.load_json(runs["normalize"], "normalize", "ratio.json")
        mlflow.log_dict(ratio, "ratio.json")
        mlflow.log_metrics(normalize.ratio_metrics(ratio))
        _log_annotations(runs)
        mlflow.set_tags({f"modeldiff.run.{k}": v for k, v in runs.items()})
        mlflow.set_tag(tracking.CONFIG_HASH, config_hash(cfg, {"model_a": a.identity, "model_b": b.identity}))
        print(f"modeldiff: ratio PD_AB:PA_AB:PA_BA:PD_BA = {' : '.join(f'{r:.3f}' for r in ratio['ratio'])}")
    return runs


def _annotate_both(cfg, dist: Dist, experiment_id, runs: dict, a) -> dict:
    """annotate.in_main: both cross_eval runs' PD sides (the default windows) with the automatic annotator."""
    name = cfg.annotate.annotator
    judge = annotation.load_judge(cfg) if dist.is_main and name == "judge" else None
    identity = annotation.annotator_identity(name, judge) if dist.is_main else None
    out = {}
    for direction in ("AB", "BA"):
        ce = runs[f"cross_eval_{direction}"]
        h = annotate.stage_hash(cfg, ce, annotation.pd_window(direction, float(cfg["lambda"])), "automatic", identity)
        out[f"annotate_{direction}"] = _step(
            cfg, dist, experiment_id, "annotate", h, f"annotate {direction}",
            {"cross_eval_run": ce, "window": "", "scores": ""},
            partial(annotate.execute, cfg, dist, ce, "", "", lambda: a, judge))
    return out


def _log_annotations(runs: dict):
    """The parent shows both sides' precision and recall (their recalls compare, like PD_AB and PD_BA)."""
    for direction in ("AB", "BA"):
        if f"annotate_{direction}" in runs:
            ann = tracking.load_json(runs[f"annotate_{direction}"], "annotate", "annotation.json")
            mlflow.log_metrics({f"{k}_{direction}": ann[k] for k in ("precision", "precision_se", "recall",
                                                                     "recall_se")})
            print(f"modeldiff: annotate {direction} ({ann['annotator']}): precision {ann['precision']:.3f}, "
                  f"recall {ann['recall']:.3f}")


def main(argv=None):
    p = parser("Compare two models: the whole Model-diff chain as child runs, reusing finished identical runs.")
    p.add_argument("--model_a", default="", help="model A (default: the config's models.a)")
    p.add_argument("--model_b", default="", help="model B (default: the config's models.b)")
    args = p.parse_args(argv)
    with user_errors():
        cfg, dist = setup(args)
        args.model_a = args.model_a.strip() or cfg.models.a
        args.model_b = args.model_b.strip() or cfg.models.b
        with dist.main_run("main", cfg, vars(args), run_name=f"main {args.model_a} vs {args.model_b}"):
            return chain(cfg, dist, args.model_a, args.model_b)


if __name__ == "__main__":
    main()
