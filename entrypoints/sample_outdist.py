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
from modeldiff.tempering import TemperingResult

from ._common import Dist, parser, setup, user_errors


def stage_hash(cfg, loaded: LoadedModel) -> str:
    return _stage_hash(cfg, "sample_outdist", model=loaded.identity)


def execute(cfg, dist: Dist, loaded: LoadedModel) -> str:
    """Inside an open run (main process): sample with the ladders split across processes, log; returns the run id."""
    parts = dist.gather([pipeline.run_sampler(cfg, loaded, dist.ladders(int(cfg.sampler.ladders)))])
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
        mlflow.set_tag(tracking.CONFIG_HASH, stage_hash(cfg, loaded))  # last: marks the run reusable
        run_id = mlflow.active_run().info.run_id
    return dist.broadcast(run_id)


def main(argv=None):
    p = parser("Sample one model's output distribution rho(z) (stage 1).")
    p.add_argument("--model", required=True, help="toy:small, a model directory or a hub id")
    args = p.parse_args(argv)
    with user_errors():
        cfg, dist = setup(args)
        with dist.main_run("sample_outdist", cfg, vars(args), run_name=f"sample_outdist {args.model}"):
            with dist.main_first():
                loaded = load_model(args.model, cfg)
            return execute(cfg, dist, loaded)


if __name__ == "__main__":
    main()
