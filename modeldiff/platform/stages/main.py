"""Stage `main`: sample_outdist A and B, cross_eval A→B and B→A, normalize, as child runs of one run (and, with
annotate.in_main, annotate both cross_eval runs with an automatic annotator), reusing finished identical runs.
"""

from __future__ import annotations

from functools import partial

import mlflow

from modeldiff.analysis import annotate as annotation
from modeldiff.method.uncertainty import warnings_for
from modeldiff.models import check_comparable, load_model
from modeldiff.views import describe

from .. import tracking
from ..chain import pair_tags, run_or_reuse, run_steps
from ..runtime import Dist
from . import STAGE, annotate, normalize


def chain(cfg, dist: Dist, model_a: str, model_b: str) -> dict:
    """Runs or reuses every step inside the open parent run; returns {step name: run id}. Ends by printing the ratio
    and where the run is and how to open it."""
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
        warnings = warnings_for(ratio["counts"])
        for step, run_id in runs.items():  # the steps' own warnings (e.g. stage 1's diagnostics), named by step
            step_warning = mlflow.get_run(run_id).data.tags.get(tracking.WARNING)
            if step_warning and step != "normalize":
                warnings.append(f"{step}: {step_warning}")
        if warnings:
            tracking.add_warnings(warnings)
        annotations = _log_annotations(runs)
        mlflow.set_tags({f"modeldiff.run.{k}": v for k, v in runs.items()})
        tracking.set_description(
            describe.ratio_description(
                ratio,
                model_a=a.ref,
                model_b=b.ref,
                z_range=tuple(cfg.z_range),
                warnings=warnings,
                runs=tracking.located({describe.step_label(step): r for step, r in runs.items()}),
                experiment_id=exp,
                title=f"Model-diff of {a.ref} and {b.ref}",
                extra=["", "**Annotation**", "", *annotations] if annotations else None,
            )
        )
        run_id = tracking.finish(STAGE["main"].hash(cfg, model_a=a.identity, model_b=b.identity))
        level = f"{ratio['ci']['level']:.0%}"
        print(f"modeldiff: ratio PD_AB:PA_AB:PA_BA:PD_BA = {normalize.ratio_text(ratio)} ({level} intervals)")
        for line in tracking.how_to_open(exp, run_id):
            print(f"modeldiff: {line}")
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
        out[f"annotate_{direction}"] = run_or_reuse(
            cfg,
            dist,
            experiment_id,
            "annotate",
            h,
            f"annotate {direction}",
            {"cross_eval_run": ce, "window": "", "scores": ""},
            partial(annotate.execute, cfg, dist, ce, "", "", lambda: a, judge),
        )
    return out


def _log_annotations(runs: dict) -> list[str]:
    """The parent shows both sides' precision and recall (their recalls compare, like PD_AB and PD_BA); returns
    them as lines of its description."""
    lines = []
    for direction in ("AB", "BA"):
        if f"annotate_{direction}" in runs:
            ann = tracking.load_json(runs[f"annotate_{direction}"], "annotate", "annotation.json")
            mlflow.log_metrics(
                {f"{k}_{direction}": ann[k] for k in ("precision", "precision_se", "recall", "recall_se")}
            )
            print(
                f"modeldiff: annotate {direction} ({ann['annotator']}): precision {ann['precision']:.3f}, "
                f"recall {ann['recall']:.3f}"
            )
            lines.append(describe.annotation_line(direction, ann))
    return lines


def run(cfg, dist: Dist, args) -> dict:
    args.model_a = args.model_a.strip() or cfg.models.a
    args.model_b = args.model_b.strip() or cfg.models.b
    with dist.main_run("main", cfg, vars(args), run_name=f"main {args.model_a} vs {args.model_b}"):
        return chain(cfg, dist, args.model_a, args.model_b)
