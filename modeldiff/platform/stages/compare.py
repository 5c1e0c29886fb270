"""Stage `compare`: several models against one reference (paper Appendix B, Eq. 14–17).

One `main` chain per model X (reference A, model B = X) as child runs, reusing finished identical runs: A is sampled
once (its sample_outdist run has one hash, so every later pair reuses it) and its draws are one set, whichever model
scores them (cross_eval draws them from A's own stream). The rows, each with intervals from stage 1's units of A and
of X (modeldiff.method.uncertainty.multi_model_uncertainty), share the scale 1/|X_A| and so compare with each other.
Logs tables/compare.json (and .csv), plots/compare_ratio.png, metrics m<i>_<term> (m1 is the first of `models`; the
tags modeldiff.compare.m<i> name them) and a description.
"""

from __future__ import annotations

import mlflow
import pandas as pd

from modeldiff.method.uncertainty import MULTI_TERMS, multi_model_uncertainty, warnings_for
from modeldiff.models import check_comparable, load_model
from modeldiff.views import describe, plots

from .. import tracking
from ..chain import run_or_reuse
from ..runtime import Dist
from . import STAGE
from . import main as main_stage


def _models(reference: str, models: str) -> list[str]:
    refs = models.split()
    if not refs:
        raise ValueError('compare needs models to compare with the reference: -P models="m1 m2 m3"')
    if len(set(refs)) != len(refs):
        raise ValueError(f"a model is listed twice in models={models!r}: list each once")
    if reference in refs:
        raise ValueError(f"the reference {reference} is also in models: compare it with other models")
    return refs


def _pair(cfg, dist: Dist, experiment_id, a, x) -> str:
    """The run id of the `main` run of (A, X): a finished identical one, or a new child run."""

    def execute():
        main_stage.chain(cfg, dist, a.ref, x.ref)
        return mlflow.active_run().info.run_id if dist.is_main else None

    h = STAGE["main"].hash(cfg, model_a=a.identity, model_b=x.identity)
    params = {"model_a": a.ref, "model_b": x.ref}
    return run_or_reuse(cfg, dist, experiment_id, "main", h, f"main {a.ref} vs {x.ref}", params, execute)


def _metrics(key: str, row: dict) -> dict:
    out = {}
    for i, k in enumerate(MULTI_TERMS):
        for name, value, interval in (
            (k, row["terms"][k], row["ci"]["terms"][k]),
            (f"ratio_{k}", row["ratio"][i], row["ci"]["ratio"][i]),
        ):
            out[f"{key}_{name}"] = value
            for end, v in zip(("lo", "hi"), interval):
                if v is not None:
                    out[f"{key}_{name}_{end}"] = v
    out[f"{key}_share_A_in_X"] = row["counts"]["share_A_in_X"]
    return out


def _csv(rows: list[dict]) -> str:
    records = []
    for row in rows:
        rec = {"key": row["key"], "model": row["model"]}
        for i, k in enumerate(MULTI_TERMS):
            rec[k], (rec[f"{k}_lo"], rec[f"{k}_hi"]) = row["terms"][k], row["ci"]["terms"][k]
            rec[f"ratio_{k}"], (rec[f"ratio_{k}_lo"], rec[f"ratio_{k}_hi"]) = row["ratio"][i], row["ci"]["ratio"][i]
        rec["share_A_in_X"] = row["counts"]["share_A_in_X"]
        records.append(rec)
    return pd.DataFrame(records).to_csv(index=False)


def chain(cfg, dist: Dist, reference: str, models: str) -> dict | None:
    refs = _models(reference, models)
    with dist.main_first():
        a = load_model(reference, cfg)
        others = [load_model(r, cfg) for r in refs]
    for x in others:
        check_comparable(a, x)
    parent = mlflow.active_run() if dist.is_main else None
    exp = parent.info.experiment_id if parent else None
    pairs = {x.ref: _pair(cfg, dist, exp, a, x) for x in others}
    if not parent:
        return None
    runs = {ref: mlflow.get_run(run_id).data.tags for ref, run_id in pairs.items()}
    forward, own = {}, {}
    for ref, tags in runs.items():
        ab, ba = tags["modeldiff.run.cross_eval_AB"], tags["modeldiff.run.cross_eval_BA"]
        forward[ref] = (tracking.load_draws(ab), tracking.load_replicates(ab))
        own[ref] = (tracking.load_draws(ba), tracking.load_replicates(ba))
    u = cfg.uncertainty
    table = multi_model_uncertainty(forward, own, float(cfg["lambda"]), float(u.level), int(cfg.seed))
    rows = [{"key": f"m{i}", "model": ref, "main_run": pairs[ref], **table[ref]} for i, ref in enumerate(refs, start=1)]
    record = {
        "reference": a.ref,
        "lambda": float(cfg["lambda"]),
        "level": float(u.level),
        "z_range": [float(z) for z in cfg.z_range],
        "terms": list(MULTI_TERMS),
        "rows": rows,
    }
    warnings = []
    for row in rows:
        c = row["counts"]
        ess = {"ess_units_A": c["n_units_A"], "n_units_A": c["n_units_A"], "ess_units_B": c["n_units_X"]}
        ess["n_units_B"] = c["n_units_X"]
        warnings += [f"{row['model']}: {w}" for w in warnings_for(ess)]
    mlflow.set_tags({f"modeldiff.compare.{row['key']}": row["model"] for row in rows})
    mlflow.set_tags(
        {
            "modeldiff.reference": a.ref,
            "modeldiff.run.sample_outdist_A": runs[refs[0]].get("modeldiff.run.sample_outdist_A", ""),
        }
    )
    mlflow.log_dict(record, "tables/compare.json")
    mlflow.log_text(_csv(rows), "tables/compare.csv")
    tracking.log_figure(plots.compare_ratio_figure(rows, a.ref), "plots/compare_ratio.png")
    for row in rows:
        mlflow.log_metrics(_metrics(row["key"], row))
    if warnings:
        tracking.add_warnings(warnings)
    tracking.set_description(
        describe.compare_description(
            record,
            z_range=tuple(cfg.z_range),
            warnings=warnings,
            runs=tracking.located({f"main {a.ref} vs {ref}": run_id for ref, run_id in pairs.items()}),
            experiment_id=exp,
        )
    )
    run_id = tracking.finish(STAGE["compare"].hash(cfg, reference=a.identity, models=[x.identity for x in others]))
    for row in rows:
        print(f"modeldiff: compare {a.ref} → {row['model']}: {describe.ratio_line(row)} ({u.level:.0%} intervals)")
    for line in tracking.how_to_open(exp, run_id):
        print(f"modeldiff: {line}")
    return record


def run(cfg, dist: Dist, args) -> dict | None:
    reference = args.reference.strip() or cfg.models.a
    name = f"compare {reference} vs {' '.join(args.models.split())}"
    with dist.main_run("compare", cfg, vars(args), run_name=name[:250]):
        return chain(cfg, dist, reference, args.models)
