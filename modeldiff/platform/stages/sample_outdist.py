"""Stage `sample_outdist`: one model's output distribution ρ̃(z) (stage 1), by `sampler.method`.

Logs outdist/outdist.npz, outdist/representatives.parquet, plots/rho_z.png and a representatives table; ancestral
runs also a per-bin effective sample size table (tables/ess_per_bin.json), tempering runs their convergence
diagnostics (tables/diagnostics.json: per-bin split-R̂ and ESS; metrics round_trips_min/mean, rhat_max_in_z,
ess_min_in_z; swap acceptance per neighbour pair as a step series), with a warning tagged `modeldiff.warning`.
"""

from __future__ import annotations

import tempfile

import mlflow
import numpy as np
import pandas as pd

from modeldiff import pipeline
from modeldiff.method.outdist import OutputDistribution
from modeldiff.method.tempering import Checkpointing
from modeldiff.models import LoadedModel, load_model
from modeldiff.views import describe, plots

from .. import tracking
from ..runtime import Dist
from . import STAGE


def stage_hash(cfg, loaded: LoadedModel) -> str:
    return STAGE["sample_outdist"].hash(cfg, model=loaded.identity)


def checkpointing(cfg, dist: Dist, resume_run: str | None, h: str) -> Checkpointing:
    """Every process checkpoints its units (ladders or blocks); the main process merges the slices and logs one
    checkpoint, which any number of processes can resume from."""
    resume_from = None
    if resume_run:
        resume_from = dist.broadcast(
            tracking.load_checkpoint(resume_run, "sample_outdist", h) if dist.is_main else None
        )

    def save(part: dict):
        parts = dist.gather([part])
        if dist.is_main:
            tracking.log_checkpoint(pipeline.merge_checkpoints(cfg, parts))

    return Checkpointing(int(cfg.checkpoint.every), save, resume_from)


def _log(cfg, loaded: LoadedModel, od: OutputDistribution):
    mlflow.set_tags({tracking.MODEL: loaded.ref, tracking.identity_tag(tracking.MODEL): loaded.identity})
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifacts(str(od.save(tmp)), "outdist")
    tracking.log_figure(plots.rho_z_figure(od, title=f"ρ̃(z) of {loaded.ref}"), "plots/rho_z.png")
    if len(od.representatives):
        tracking.log_table(od.representatives.drop(columns="tokens"), "tables/representatives.json")
    meta = od.meta
    mlflow.log_metrics(
        {
            "n_records": meta["n_records"],
            "n_in_z": meta["n_in_z"],
            "n_distinct_in_z": meta["n_distinct_in_z"],
            "n_empty_bins_in_z": len(od.empty_bins_in_z),
            "sampling_seconds": meta["sampling_seconds"],
        }
    )
    diagnostics = (_log_ancestral if meta["method"] == "ancestral" else _log_tempering)(od)
    tracking.set_description(
        describe.outdist_description(summary(od, loaded.ref, diagnostics), warnings=meta.get("warnings") or [])
    )


def summary(od: OutputDistribution, model: str, diagnostics: dict) -> dict:
    """What the run's description says: how the samples cover Z, and the diagnostics."""
    bins_in_z = np.flatnonzero(od.in_z)
    reached = od.hist.sum(0)[bins_in_z] > 0
    return {
        "model": model,
        "method": od.meta["method"],
        "z_range": list(od.z_range),
        "n_units": od.meta.get("n_units"),
        "n_records": od.meta["n_records"],
        "n_in_z": od.meta["n_in_z"],
        "n_distinct_in_z": od.meta["n_distinct_in_z"],
        "bins_in_z": int(len(bins_in_z)),
        "bins_reached": int(reached.sum()),
        "empty_bins": [[float(od.edges[b]), float(od.edges[b + 1])] for b in bins_in_z[~reached]],
        "diagnostics": diagnostics,
    }


def diagnostics_table(od: OutputDistribution) -> pd.DataFrame:
    """ess_table's columns plus each bin's split-R̂ across half-ladders (tempering)."""
    table = ess_table(od)
    table.insert(table.columns.get_loc("ess"), "rhat", np.array(od.meta["rhat_per_bin"], dtype=np.float64))
    return table


def _log_tempering(od: OutputDistribution) -> dict:
    meta = od.meta
    table = diagnostics_table(od)
    in_z = table[table["in_z"] & table["rhat"].notna()]
    round_trips = meta.get("round_trips") or []
    diagnostics = {
        "acceptance_mean": float(np.mean(meta["acceptance"])),
        "swap_acceptance_min": float(np.min(meta["swap_acceptance"], initial=1.0)),
        "wham_iterations": meta["wham_iterations"],
        **(
            {"round_trips_min": min(round_trips), "round_trips_mean": float(np.mean(round_trips))}
            if round_trips
            else {}
        ),
        **({"rhat_max_in_z": float(in_z["rhat"].max()), "ess_min_in_z": float(in_z["ess"].min())} if len(in_z) else {}),
    }
    mlflow.log_metrics(diagnostics)
    tracking.log_table(table, "tables/diagnostics.json")
    warnings = meta.get("warnings") or []
    for text in warnings:
        print(f"modeldiff: warning: {text}")
    if warnings:
        tracking.add_warnings(warnings)
    for k, (t, a) in enumerate(zip(od.temperatures, meta["acceptance"])):  # a curve over the ladder
        mlflow.log_metrics({"acceptance": float(a), "temperature": float(t)}, step=k)
    for k, a in enumerate(meta["swap_acceptance"]):
        mlflow.log_metric("swap_acceptance", float(a), step=k)
    return diagnostics


def ess_table(od: OutputDistribution) -> pd.DataFrame:
    """One row per bin: its z range, whether it is in Z, samples, distinct inputs, effective sample size, ln ρ̃."""
    bins = np.arange(len(od.ln_rho))
    distinct = np.bincount(od.representatives["bin"].to_numpy(), minlength=len(bins)) if len(od.representatives) else 0
    return pd.DataFrame(
        {
            "bin": bins,
            "z_lo": od.edges[:-1],
            "z_hi": od.edges[1:],
            "in_z": od.in_z,
            "n_samples": od.hist.sum(0).astype(np.int64),
            "n_distinct_in_z": np.where(od.in_z, distinct, 0),
            "ess": od.meta["ess_per_bin"],
            "ln_rho": od.ln_rho,
            "ln_rho_std": od.ln_rho_std,
        }
    )


def _log_ancestral(od: OutputDistribution) -> dict:
    table = ess_table(od)
    reached = table[table["in_z"] & (table["n_samples"] > 0)]
    diagnostics = {
        "ess_in_z": od.meta["ess_in_z"],
        "ess_min_in_z": float(reached["ess"].min()) if len(reached) else 0.0,
    }
    mlflow.log_metrics({**diagnostics, "n_distinct": od.meta["n_distinct"]})
    tracking.log_table(table, "tables/ess_per_bin.json")
    return diagnostics


def execute(cfg, dist: Dist, loaded: LoadedModel, resume_run: str | None = None) -> str:
    """Inside an open run (main process): sample with the ladders split across processes (resuming the
    interrupted run `resume_run` from its last checkpoint), log; returns the run id."""
    h = stage_hash(cfg, loaded)
    if dist.is_main:
        mlflow.set_tags({tracking.PENDING_HASH: h, **({tracking.RESUMED_FROM: resume_run} if resume_run else {})})
        if resume_run:
            print(f"modeldiff: sample_outdist: resuming run {resume_run} from its last checkpoint")
    ckpt = checkpointing(cfg, dist, resume_run, h)
    n_units = pipeline.n_units(cfg)
    mine = pipeline.run_sampler(
        cfg, loaded, dist.share(n_units), progress=dist.is_main, checkpointing=ckpt, rounds=dist.rounds(n_units)
    )
    parts = dist.gather([mine])
    if dist.is_main:
        _log(cfg, loaded, pipeline.build_outdist(cfg, loaded, pipeline.join_results(parts)))
    return tracking.finish(h, dist)


def run(cfg, dist: Dist, args) -> str:
    with dist.main_run("sample_outdist", cfg, vars(args), run_name=f"sample_outdist {args.model}"):
        with dist.main_first():
            loaded = load_model(args.model, cfg)
        return execute(cfg, dist, loaded, args.resume.strip() or None)
