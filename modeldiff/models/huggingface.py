"""Hugging Face models: a hub id or a directory written by save_pretrained, a GGUF file (dequantised once into the
cache), their tokenizers, and the allowed token set of their input space.

Loading never runs a repository's own code unless model.trust_remote_code is true, and with model.safetensors_only
(which screening sets) never reads a pickle-based weight file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

from modeldiff.method.space import InputSpace

from .loaded import LoadedModel, cache_root, decode_digits, first_line, prepare, vocab_hash, vocab_limit, weights_digest

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")  # torch.load / pickle formats
SAFETENSORS_ONLY_HELP = (
    "they can run code when loaded and are refused here (model.safetensors_only; screening always sets it): "
    "save the model with save_pretrained, which writes safetensors, and register it again"
)


def dir_identity(path: Path) -> str:
    """config.json plus the names, sizes and mtimes of the weight files (hashing GBs of weights is too slow)."""
    h = hashlib.sha256((path / "config.json").read_bytes())
    for f in sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return f"dir:{h.hexdigest()[:16]}"


def read_allowed_tokens(spec) -> tuple[tuple[int, ...], str]:
    """space.allowed_tokens -> (ids, where they came from, for error messages). A string is a file of ids
    separated by whitespace, commas or newlines, or holding a JSON list."""
    if not isinstance(spec, str):
        return tuple(int(i) for i in spec), "space.allowed_tokens"
    where = f"space.allowed_tokens file {spec!r}"
    try:
        text = Path(spec).expanduser().read_text()
    except OSError as e:
        raise ValueError(
            f"cannot read {where} ({e.strerror or e}): give a file of token ids, or a list "
            '(overrides "space.allowed_tokens=[17,18,19]")'
        ) from None
    try:
        items = json.loads(text) if text.lstrip().startswith("[") else [t for t in re.split(r"[\s,]+", text) if t]
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not a JSON list of token ids ({e}): fix the file") from None
    for item in items:
        integer = isinstance(item, int) and not isinstance(item, bool)
        if not (integer or isinstance(item, str) and re.fullmatch(r"\d+", item)):
            raise ValueError(
                f"{where}: {item!r} is not a token id: list integer ids separated by whitespace, "
                "commas or newlines, or as a JSON list"
            )
    return tuple(int(i) for i in items), where


def _check_token_ids(ids: tuple[int, ...], limit: int, where: str):
    if len(ids) < 2:
        raise ValueError(f"{where} gives {len(ids)} token id(s): the input space needs at least 2")
    dup = next((i for i, n in Counter(ids).items() if n > 1), None)
    if dup is not None:
        raise ValueError(f"{where} lists token id {dup} more than once: list each id once")
    bad = next((i for i in ids if not 0 <= i < limit), None)
    if bad is not None:
        raise ValueError(f"{where}: token id {bad} is outside the model's vocabulary (ids 0..{limit - 1}): remove it")


def _ids(value) -> set[int]:
    """A config's token id entry may be None, an int or a list (e.g. several EOS ids)."""
    values = value if isinstance(value, (list, tuple, set)) else [value]
    return {int(v) for v in values if v is not None}


def special_token_ids(model, tokenizer) -> set[int]:
    """The tokenizer's named special tokens, every added token flagged special (chat markers etc. are often
    only there), and the model's BOS/EOS."""
    special = _ids(model.config.bos_token_id) | _ids(model.config.eos_token_id)
    if tokenizer is not None:
        special |= _ids(list(tokenizer.all_special_ids))
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        special |= {int(i) for i, tok in added.items() if getattr(tok, "special", False)}
    return special


def _token_ids(model, tokenizer, sp) -> tuple[int, ...]:
    limit = vocab_limit(model, tokenizer)
    toy = getattr(model.config, "modeldiff_toy", None)  # a saved toy: its digits, BOS = V
    if sp.allowed_tokens is not None:
        ids, where = read_allowed_tokens(sp.allowed_tokens)
    elif sp.vocab_size is not None:
        ids, where = tuple(range(int(sp.vocab_size))), f"space.vocab_size={sp.vocab_size}"
    elif toy:
        ids, where = tuple(range(int(toy["vocab_size"]))), "the toy's vocabulary"
    else:
        special = special_token_ids(model, tokenizer)
        ids, where = tuple(i for i in range(limit) if i not in special), "the model's vocabulary"
    _check_token_ids(ids, limit, where)
    return ids


def _hf_space(model, tokenizer, cfg) -> InputSpace:
    sp = cfg.space
    ids = _token_ids(model, tokenizer, sp)
    candidates = (sp.bos_token_id, getattr(tokenizer, "bos_token_id", None), model.config.bos_token_id)
    bos = next((b for b in candidates if b is not None), None)
    return InputSpace(int(sp.length), ids, bos)


def _refuse_pickle(path: Path, ref: str):
    """A local model for model.safetensors_only: no pickle-based file that transformers could fall back to, and no
    config.json naming a weights file other than safetensors."""
    found = sorted(f.name for f in path.iterdir() if f.suffix.lower() in PICKLE_SUFFIXES)
    if found:
        raise ValueError(f"model {ref!r} holds pickle-based files ({', '.join(found[:3])}): {SAFETENSORS_ONLY_HELP}")
    try:
        named = json.loads((path / "config.json").read_text()).get("transformers_weights")
    except (OSError, ValueError, AttributeError):
        return  # transformers reports an unreadable config itself
    if named is not None and not str(named).endswith((".safetensors", ".safetensors.index.json")):
        raise ValueError(
            f"model {ref!r} names the weights file {named!r}, which is not safetensors: {SAFETENSORS_ONLY_HELP}"
        )


def _from_pretrained(ref: str, cfg) -> tuple:
    """(model, tokenizer or None) of a hub id or local directory; raises OSError/ValueError if unloadable."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trust = bool(cfg.model.trust_remote_code)
    # use_safetensors=None: safetensors if there, else a pickle-based file; True: safetensors or an error
    model = AutoModelForCausalLM.from_pretrained(
        ref, trust_remote_code=trust, use_safetensors=bool(cfg.model.safetensors_only) or None
    )
    tokenizer = None
    local = Path(ref)
    has_tokenizer = not local.is_dir() or any((local / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    if has_tokenizer:
        try:
            tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=trust)
        except (OSError, ValueError):  # weights without a tokenizer: ids are shown as numbers
            tokenizer = None
    return model, tokenizer


def _loaded(model, tokenizer, cfg, identity: str, ref: str, path: Path | None) -> LoadedModel:
    decode = (lambda t: tokenizer.decode([int(i) for i in t])) if tokenizer is not None else decode_digits
    space = _hf_space(model, tokenizer, cfg)
    vocab = vocab_hash(tokenizer) if tokenizer is not None else None
    return LoadedModel(prepare(model, cfg), tokenizer, identity, space, ref, decode, vocab, path)


def _refuse_remote_code(ref: str, e: Exception):
    """transformers refuses a repository's own modelling code unless trusted: say which switch that is."""
    if "custom code" in str(e) or "trust_remote_code" in str(e):
        raise ValueError(
            f"model {ref!r} needs its own modelling code to load ({first_line(e)}): read that code, "
            "and if you trust it, set model.trust_remote_code=true"
        ) from None


def load_dir(path: Path, cfg, identity: str, ref: str) -> LoadedModel:
    if cfg.model.safetensors_only:
        _refuse_pickle(path, ref)
    try:
        model, tokenizer = _from_pretrained(str(path), cfg)
    except (OSError, ValueError) as e:
        _refuse_remote_code(ref, e)
        raise ValueError(
            f"cannot load model directory {ref!r} ({first_line(e)}): "
            "check that it holds a causal LM saved with save_pretrained"
        ) from None
    return _loaded(model, tokenizer, cfg, identity, ref, path)


def _file_sha16(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()[:16]


def _dequantise(gguf: Path, out: Path, cfg):
    """GGUF -> a plain float Hugging Face directory (model and tokenizer), so later loads take a second."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(gguf_file=gguf.name, trust_remote_code=bool(cfg.model.trust_remote_code))
    try:  # newer transformers may keep GGUF blocks packed (with `kernels`); we want dense, savable weights
        from transformers import GgufConfig

        if "dequantize" in inspect.signature(GgufConfig).parameters:
            kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and all(p.is_floating_point() for p in model.parameters()):
        quantizer.remove_quantization_config(model)  # dense already: only the marker blocks save_pretrained
    tokenizer = AutoTokenizer.from_pretrained(
        gguf.parent, gguf_file=gguf.name, trust_remote_code=bool(cfg.model.trust_remote_code)
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _gguf_dir(gguf: Path, cfg) -> tuple[Path, str]:
    """(the dequantised directory in the cache, the file's sha256 prefix); dequantises on first use."""
    if importlib.util.find_spec("gguf") is None:
        raise ValueError(f"loading the GGUF file {gguf} needs the gguf package: pip install gguf")
    key = _file_sha16(gguf)
    out = cache_root() / "gguf" / key
    if (out / "config.json").exists():
        return out, key
    # write a private directory and rename, so a concurrent or interrupted run never sees half a model
    tmp = out.with_name(f"{key}.tmp{os.getpid()}")
    try:
        _dequantise(gguf, tmp, cfg)
        (tmp / "modeldiff_source.json").write_text(json.dumps({"gguf": str(gguf), "sha256_16": key}, indent=1))
        tmp.rename(out)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if out.joinpath("config.json").exists():  # another process finished first: keep its copy
            return out, key
        if not isinstance(e, (OSError, ValueError, KeyError, RuntimeError)):  # a bug, not a bad file
            raise
        raise ValueError(
            f"cannot load the GGUF file {gguf} ({first_line(e)}): "
            "check that it is a causal LM GGUF that transformers supports"
        ) from None
    return out, key


def load_gguf(gguf: Path, cfg, ref: str) -> LoadedModel:
    out, key = _gguf_dir(gguf, cfg)
    return load_dir(out, cfg, f"gguf:{key}", ref)


def load_hub(ref: str, cfg) -> LoadedModel:
    """A Hugging Face hub id (or anything transformers' from_pretrained resolves)."""
    try:
        model, tokenizer = _from_pretrained(ref, cfg)
    except (OSError, ValueError) as e:
        _refuse_remote_code(ref, e)
        if cfg.model.safetensors_only and "safetensors" in str(e):
            raise ValueError(
                f"hub model {ref!r} has no safetensors weights, only pickle-based files: {SAFETENSORS_ONLY_HELP}"
            ) from None
        raise ValueError(
            f"cannot load model {ref!r} ({first_line(e)}): it is neither a known model ref, "
            "a local directory, nor a reachable Hugging Face hub id; check the spelling, or "
            "download the model and pass its directory"
        ) from None
    # the config alone would let changed weights (a new revision, a fine-tune pushed under the same id) reuse old runs
    blob = f"{model.config.to_json_string()}{getattr(model.config, '_commit_hash', None)}{weights_digest(model)}"
    identity = f"hub:{ref}:{hashlib.sha256(blob.encode()).hexdigest()[:16]}"
    return _loaded(model, tokenizer, cfg, identity, ref, None)
