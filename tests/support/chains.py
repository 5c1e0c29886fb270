"""The toy chain the integration tests run: its overrides, the artifacts each stage logs, and how to run an entry
point the way a user does (`mlflow run`) and find its runs."""

import subprocess

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from . import ROOT

# small enough for about a minute per chain on two busy cores
OVERRIDES = (
    "toy.train_steps=60 toy.batch_size=128 sampler.ladders=8 sampler.steps=300 sampler.burn_in=100 "
    "uncertainty.n_replicates=40 cross_eval.n_draws=2000"
)
EXPERIMENT = "modeldiff-tests"
ARTIFACTS = {
    "sample_outdist": [
        "config/resolved.yaml",
        "outdist/outdist.npz",
        "outdist/representatives.parquet",
        "plots/rho_z.png",
        "tables/representatives.json",
    ],
    "cross_eval": [
        "config/resolved.yaml",
        "cross_eval/draws.parquet",
        "cross_eval/replicates.npz",
        "plots/D_hist.png",
        "tables/draws.json",
        "tokendiff/index.html",
    ],
    "normalize": ["config/resolved.yaml", "ratio.json", "plots/D_overlay.png", "tables/lambda_sweep.json"],
    "tokendiff": [
        "config/resolved.yaml",
        "tokendiff/examples.parquet",
        "tokendiff/tokens.parquet",
        "tokendiff/top_examples.json",
        "tables/top_examples.json",
        "tokendiff/index.html",
        *[f"plots/tokendiff_{m}.png" for m in ("prob_diff", "rank_diff", "clamped_rank_diff", "nll_diff", "topk_diff")],
    ],
}


def mlflow_run(store, entry_point, **params):
    cmd = ["mlflow", "run", str(ROOT), "-e", entry_point, "--env-manager", "local", "--experiment-name", EXPERIMENT]
    for k, v in params.items():
        cmd += ["-P", f"{k}={v}"]
    return subprocess.run(cmd, cwd=ROOT, env=store["env"], capture_output=True, text=True, timeout=600)


def runs_of(store, entry_point, status=None):
    flt = f"tags.`modeldiff.entry_point` = '{entry_point}'" + (f" and attributes.status = '{status}'" if status else "")
    return MlflowClient().search_runs([store["experiment_id"]], flt, order_by=["attributes.start_time DESC"])


def outdist_arrays(run_id) -> dict:
    """The arrays of a sample_outdist run's outdist/outdist.npz."""
    path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="outdist/outdist.npz")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}
