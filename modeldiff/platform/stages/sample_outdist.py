"""Stage `sample_outdist`: one model's output distribution ρ̃(z) (stage 1).

Logs outdist/outdist.npz, outdist/representatives.parquet, plots/rho_z.png and a representatives table.
"""

from __future__ import annotations

import tempfile

import mlflow
import numpy as np

from modeldiff import pipeline
from modeldiff.method.tempering import Checkpointing, TemperingResult, merge_checkpoints
from modeldiff.models import LoadedModel, load_model
from modeldiff.views import plots

from .. import tracking
from ..runtime import Dist
from . import STAGE


def stage_hash(cfg, loaded: LoadedModel) -> str:
    return STAGE["sample_outdist"].hash(cfg, model=loaded.identity)


def checkpointing(cfg, dist: Dist, resume_run: str | None, h: str) -> Checkpointing:
    """Every process checkpoints its ladders; the main process merges the slices and logs one checkpoint, which
    any number of processes can resume from."""
    resume_from = None
    if resume_run:
        resume_from = dist.broadcast(
            tracking.load_checkpoint(resume_run, "sample_outdist", h) if dist.is_main else None
        )

    def save(part: dict):
        parts = dist.gather([part])
        if dist.is_main:
            tracking.log_checkpoint(merge_checkpoints(parts))

    return Checkpointing(int(cfg.checkpoint.every), save, resume_from)


def _log(cfg, loaded: LoadedModel, od):
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
            "acceptance_mean": float(np.mean(meta["acceptance"])),
            "swap_acceptance_min": float(np.min(meta["swap_acceptance"], initial=1.0)),
            "wham_iterations": meta["wham_iterations"],
        }
    )
    for k, (t, a) in enumerate(zip(od.temperatures, meta["acceptance"])):  # a curve over the ladder
        mlflow.log_metrics({"acceptance": float(a), "temperature": float(t)}, step=k)
    for k, a in enumerate(meta["swap_acceptance"]):
        mlflow.log_metric("swap_acceptance", float(a), step=k)


def execute(cfg, dist: Dist, loaded: LoadedModel, resume_run: str | None = None) -> str:
    """Inside an open run (main process): sample with the ladders split across processes (resuming the
    interrupted run `resume_run` from its last checkpoint), log; returns the run id."""
    h = stage_hash(cfg, loaded)
    if dist.is_main:
        mlflow.set_tags({tracking.PENDING_HASH: h, **({tracking.RESUMED_FROM: resume_run} if resume_run else {})})
        if resume_run:
            print(f"modeldiff: sample_outdist: resuming run {resume_run} from its last checkpoint")
    ckpt = checkpointing(cfg, dist, resume_run, h)
    parts = dist.gather([pipeline.run_sampler(cfg, loaded, dist.ladders(int(cfg.sampler.ladders)), checkpointing=ckpt)])
    if dist.is_main:
        _log(cfg, loaded, pipeline.build_outdist(cfg, loaded, TemperingResult.concat(parts)))
    return tracking.finish(h, dist)


def run(cfg, dist: Dist, args) -> str:
    with dist.main_run("sample_outdist", cfg, vars(args), run_name=f"sample_outdist {args.model}"):
        with dist.main_first():
            loaded = load_model(args.model, cfg)
        return execute(cfg, dist, loaded, args.resume.strip() or None)
