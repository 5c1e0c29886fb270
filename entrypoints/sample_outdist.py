"""Entry point `sample_outdist`: one model's output distribution ρ̃(z) (stage 1).

Logs outdist/outdist.npz, outdist/representatives.parquet, plots/rho_z.png and a representatives table.
"""
from __future__ import annotations

import tempfile

import mlflow
import numpy as np

from modeldiff import pipeline, plots, tracking
from modeldiff.config import stage_hash as _stage_hash
from modeldiff.models import LoadedModel, load_model
from modeldiff.tempering import Checkpointing, TemperingResult, merge_checkpoints

from ._common import Dist, parser, setup, user_errors


def stage_hash(cfg, loaded: LoadedModel) -> str:
    return _stage_hash(cfg, "sample_outdist", model=loaded.identity)


def checkpointing(cfg, dist: Dist, resume_run: str | None, h: str) -> Checkpointing:
    """Every process checkpoints its ladders; the main process merges the slices and logs one checkpoint, which
    any number of processes can resume from."""
    resume_from = None
    if resume_run:
        resume_from = dist.broadcast(tracking.load_checkpoint(resume_run, "sample_outdist", h) if dist.is_main else None)

    def save(part: dict):
        parts = dist.gather([part])
        if dist.is_main:
            tracking.log_checkpoint(merge_checkpoints(parts))

    return Checkpointing(int(cfg.checkpoint.every), save, resume_from)


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
    run_id = None
    if dist.is_main:
        od = pipeline.build_outdist(cfg, loaded, TemperingResult.concat(parts))
        mlflow.set_tags({tracking.MODEL: loaded.ref, tracking.identity_tag(tracking.MODEL): loaded.identity})
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifacts(str(od.save(tmp)), "outdist")
        tracking.log_figure(plots.rho_z_figure(od, title=f"ρ̃(z) of {loaded.ref}"), "plots/rho_z.png")
        if len(od.representatives):
            tracking.log_table(od.representatives.drop(columns="tokens"), "tables/representatives.json")
        meta = od.meta
        mlflow.log_metrics({
            "n_records": meta["n_records"], "n_in_z": meta["n_in_z"], "n_distinct_in_z": meta["n_distinct_in_z"],
            "n_empty_bins_in_z": len(od.empty_bins_in_z), "sampling_seconds": meta["sampling_seconds"],
            "acceptance_mean": float(np.mean(meta["acceptance"])),
            "swap_acceptance_min": float(np.min(meta["swap_acceptance"], initial=1.0)),
            "wham_iterations": meta["wham_iterations"]})
        for k, (t, a) in enumerate(zip(od.temperatures, meta["acceptance"])):  # a curve over the ladder
            mlflow.log_metrics({"acceptance": float(a), "temperature": float(t)}, step=k)
        for k, a in enumerate(meta["swap_acceptance"]):
            mlflow.log_metric("swap_acceptance", float(a), step=k)
        mlflow.set_tag(tracking.CONFIG_HASH, h)  # last: marks the run reusable
        run_id = mlflow.active_run().info.run_id
    return dist.broadcast(run_id)


def main(argv=None):
    p = parser("Sample one model's output distribution rho(z) (stage 1).")
    p.add_argument("--model", required=True, help="toy:small, a model directory, a .gguf file, a hub id or models:/name/version")
    p.add_argument("--resume", default="", help="run id of an interrupted sample_outdist run to continue from its last checkpoint")
    args = p.parse_args(argv)
    with user_errors():
        cfg, dist = setup(args)
        with dist.main_run("sample_outdist", cfg, vars(args), run_name=f"sample_outdist {args.model}"):
            with dist.main_first():
                loaded = load_model(args.model, cfg)
            return execute(cfg, dist, loaded, args.resume.strip() or None)


if __name__ == "__main__":
    main()
