"""Helpers the test tiers share (fixtures are in the conftest.py files: the root one, and one per tier)."""

from __future__ import annotations

import csv
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from modeldiff.method.enumeration import in_range
from modeldiff.models import LoadedModel, decode_digits

ROOT = Path(__file__).resolve().parents[2]  # the project


def missing_system_part(why: str) -> None:
    """A test needs something not installed here (PostgreSQL, Chromium, SmolLM2's package; CI installs all of them):
    a failure that says what to install, never a skip, so a machine without the part cannot pass by leaving it out."""
    pytest.fail(f"{why}; install it (see .ci/run) and run the tests again")


# a toy of 4-token inputs over 4 digits that trains in about a second
TINY = (
    "space.length=4 space.vocab_size=4 toy.modulus=4 toy.train_steps=30 toy.batch_size=64 "
    "toy.archs.small.n_embd=16 toy.archs.small.n_head=2 toy.archs.small.n_layer=1 "
    "toy.archs.large.n_embd=16 toy.archs.large.n_head=2 toy.archs.large.n_layer=2 z_range=[1.0,1.6]"
)
# Z of the toy pair's sampled output distributions (`outdists`)
OUTDIST_Z_RANGE = (1.3, 1.8)


def assert_within_sigma(estimate: float, truth: float, sigma: float, n_sigma: float = 4.0, what: str = ""):
    assert abs(estimate - truth) <= n_sigma * sigma, (
        f"{what}: estimate {estimate:.5f} vs exact {truth:.5f} differs by {abs(estimate - truth):.5f} "
        f"> {n_sigma}σ = {n_sigma * sigma:.5f}"
    )


def brute_force_log_q(model, space, ids, temperatures, batch: int = 4096) -> np.ndarray:
    """ln q_τ(x) = Σ_i ln softmax(log p(·|BOS, x<i)[S] / τ)[x_i] for every row of `ids` [n, L] and every τ: [n, K],
    from full (uncached) forwards, each conditional separately: the reference for ancestral sampling."""
    out = []
    allowed = space.ids_tensor()
    slots = space.ids_to_slots(torch.as_tensor(np.asarray(ids), dtype=torch.long))
    for start in range(0, len(slots), batch):
        x = torch.as_tensor(np.asarray(ids[start : start + batch]), dtype=torch.long)
        bos = torch.full((len(x), 1), space.bos_token_id)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.cat([bos, x], 1)).logits[:, :-1].float(), -1)[..., allowed]
        picked = slots[start : start + batch].unsqueeze(-1)
        out.append(
            torch.stack(
                [torch.log_softmax(logp / t, -1).gather(-1, picked).squeeze(-1).double().sum(-1) for t in temperatures],
                -1,
            )
        )
    return torch.cat(out).numpy()


def term_sigma(z_src, z_other, exact_term, numerator_mask, n, z_range):
    """Std of count/n_in over n draws uniform on X_src (delta method on the ratio of two means)."""
    in_src = in_range(z_src, z_range)
    x = numerator_mask[in_src].astype(float)
    y = in_range(z_other, z_range)[in_src].astype(float)
    var = np.mean((x - exact_term * y) ** 2)
    return np.sqrt(var / n) / y.mean()


def logits(loaded, ids=(3, 0, 1, 2)):
    """A loaded model's float32 logits after BOS + `ids`."""
    x = torch.tensor([[loaded.space.bos_token_id, *ids]])
    with torch.no_grad():
        return loaded.model(x).logits.float()


def toy_loaded(model, task, ref: str) -> LoadedModel:
    """A toy model made in the test, as the loader would give it."""
    return LoadedModel(model, None, f"test:{ref}", task.space, ref, decode_digits)


def write_rows(path, rows, header=("id", "text", "score")):
    """A CSV annotation sheet with these rows."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return path


@contextmanager
def sqlite_store(tmp, experiment: str):
    """A tracking store, experiment and model cache under `tmp`, set in the environment of this process (in-process
    entry points) and of its subprocesses (`env`)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "MODELDIFF_CACHE": str(tmp / "cache"),
        "MLFLOW_EXPERIMENT_NAME": experiment,
        "OMP_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        experiment_id = MlflowClient().create_experiment(experiment, artifact_location=str(tmp / "artifacts"))
        yield {"env": {**os.environ, **env}, "experiment_id": experiment_id, "tmp": tmp}


def artifacts(run_id: str, path: str | None = None) -> list[str]:
    """Every artifact path of a run, recursively."""
    from mlflow.tracking import MlflowClient

    out = []
    for f in MlflowClient().list_artifacts(run_id, path):
        out += artifacts(run_id, f.path) if f.is_dir else [f.path]
    return out


def ratio_of(run_id: str) -> dict:
    import mlflow

    return mlflow.artifacts.load_dict(f"runs:/{run_id}/ratio.json")
