"""sample_outdist with sampler.method=ancestral, run as a user runs it: an interrupted run resumes from its last
checkpoint (by run id, or as `main` finds it) to the uninterrupted result, and two processes (`accelerate launch`,
5 blocks split 3 + 2, checkpoints gathered in lockstep) give the one-process result."""

import subprocess

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from entrypoints import sample_outdist
from modeldiff.platform import tracking
from support import ROOT, artifacts
from support.chains import OVERRIDES, outdist_arrays, runs_of

pytestmark = pytest.mark.integration

# blocks of 128 samples (64 per temperature); a checkpoint every block, and one after the last
ANCESTRAL = (
    f"{OVERRIDES} sampler.method=ancestral sampler.ancestral.n_samples=640 sampler.ancestral.n_blocks=5 "
    "sampler.ancestral.batch_size=64 checkpoint.every=128"
)
ARGS = ["--config", "configs/toy.yaml", "--overrides", ANCESTRAL, "--model", "toy:small"]
ARRAYS = ("edges", "ln_rho", "ln_rho_std", "hist", "temperatures", "unit_ln_rho", "rep_unit_ln_weight")


def assert_same_outdist(run_a: str, run_b: str):
    a, b = outdist_arrays(run_a), outdist_arrays(run_b)
    for name in ARRAYS:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    reps_a, reps_b = (tracking.load_outdist(r).representatives for r in (run_a, run_b))
    pd.testing.assert_frame_equal(reps_a.drop(columns="tokens"), reps_b.drop(columns="tokens"))


def test_interrupted_run_resumes_and_two_processes_agree(store, monkeypatch):
    full = sample_outdist.main(ARGS)
    run = MlflowClient().get_run(full)
    assert {"outdist/outdist.npz", "tables/ess_per_bin.json", "plots/rho_z.png"} <= set(artifacts(full))
    assert run.data.metrics["n_records"] == 640 and run.data.metrics["ess_in_z"] > 0
    note = run.data.tags["mlflow.note.content"]  # its description (issue 17): coverage of Z and the ESS
    assert (
        "Sampled by ancestral (5 independent blocks, 640 records)." in note
        and "**Coverage of Z = [1.3, 1.8]:**" in note
    )
    assert f"- effective sample size in Z: {run.data.metrics['ess_in_z']:.0f}" in note
    assert run.data.tags[tracking.CHECKPOINT_STEP] == "640"  # the last checkpoint holds every sample

    logged, log_checkpoint = [], tracking.log_checkpoint

    def interrupted_after_two(ckpt):  # Ctrl-C right after the second checkpoint is logged
        log_checkpoint(ckpt)
        logged.append(ckpt["step"])
        if len(logged) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(tracking, "log_checkpoint", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        sample_outdist.main(ARGS)
    monkeypatch.undo()
    failed = runs_of(store, "sample_outdist", "FAILED")[0]
    assert logged == [128, 256] and failed.data.tags[tracking.CHECKPOINT_STEP] == "256"
    h = failed.data.tags[tracking.PENDING_HASH]
    assert tracking.find_resumable_run("sample_outdist", h, store["experiment_id"]) == failed.info.run_id  # as main

    resumed = sample_outdist.main(ARGS + ["--resume", failed.info.run_id])
    assert MlflowClient().get_run(resumed).data.tags[tracking.RESUMED_FROM] == failed.info.run_id
    assert_same_outdist(resumed, full)

    res = subprocess.run(
        ["accelerate", "launch", "--config_file", "configs/accelerate/cpu2.yaml", "-m", "entrypoints.sample_outdist"]
        + ARGS,
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=store["env"],
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    two = runs_of(store, "sample_outdist", "FINISHED")[0]
    assert two.info.run_id not in (full, resumed) and two.data.tags[tracking.CHECKPOINT_STEP] == "640"
    assert_same_outdist(two.info.run_id, full)
