"""A loaded model: the module, its tokenizer, its identity and its input space, and when two models compare.

The identity is a stable string that changes when the weights would, so finished runs can be reused safely.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from modeldiff.method.space import InputSpace


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object | None
    identity: str
    space: InputSpace
    ref: str = ""
    decode: Callable | None = None  # token ids -> text for tables and plots
    tokenizer_hash: str | None = None  # sha256 of the sorted vocabulary: models compare only over one tokenizer
    path: Path | None = None  # the local directory the weights came from (None: a hub id or made in-process)


def cache_root() -> Path:
    return Path(os.environ.get("MODELDIFF_CACHE", ".modeldiff_cache"))


def decode_digits(tokens) -> str:
    return " ".join(str(int(t)) for t in tokens)


def prepare(model: torch.nn.Module, cfg) -> torch.nn.Module:
    """The model on the config's device and in its dtype, in eval mode."""
    device = cfg.model.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device=device, dtype=getattr(torch, cfg.model.dtype)).eval()


def first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def vocab_limit(model, tokenizer) -> int:
    """Token ids 0..limit-1 are real tokens: embedding matrices are often padded beyond the tokenizer."""
    embeddings = model.get_input_embeddings()
    rows = embeddings.weight.shape[0] if embeddings is not None else int(model.config.vocab_size)
    return min(len(tokenizer), rows) if tokenizer is not None else rows


def describe_space(space: InputSpace) -> str:
    ids = space.token_ids
    contiguous = ids == tuple(range(ids[0], ids[0] + len(ids)))
    tokens = f"ids {ids[0]}..{ids[-1]}" if contiguous else f"{len(ids)} token ids"
    return f"length {space.length}, {tokens}, BOS {space.bos_token_id}"


def vocab_hash(tokenizer) -> str:
    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


def _tokenizer_hash(m: LoadedModel) -> str | None:
    if m.tokenizer_hash is None and m.tokenizer is not None:
        return vocab_hash(m.tokenizer)
    return m.tokenizer_hash


def vocabulary_key(m: LoadedModel) -> str:
    """What models must share to be compared, as one string: the tokenizer's vocabulary hash, or for tokenizer-less
    models (toys) a hash of their id range and BOS (screening finds counterparts in the registry by it)."""
    tokenizer_hash = _tokenizer_hash(m)
    if tokenizer_hash:
        return tokenizer_hash
    rows = vocab_limit(m.model, None)
    return "ids:" + hashlib.sha256(f"{rows}:{m.space.bos_token_id}".encode()).hexdigest()


def check_comparable(a: LoadedModel, b: LoadedModel):
    """Models compare only over one input space (and, with tokenizers, one vocabulary)."""
    ha, hb = _tokenizer_hash(a), _tokenizer_hash(b)
    if ha is not None and hb is not None and ha != hb:
        raise ValueError(
            f"models {a.ref!r} and {b.ref!r} are not comparable: their tokenizers' vocabularies differ "
            f"(vocabulary hash {ha[:12]} vs {hb[:12]}); compare models that share a tokenizer"
        )
    if a.space != b.space:
        raise ValueError(
            f"models {a.ref!r} and {b.ref!r} are not comparable: their input spaces differ "
            f"({describe_space(a.space)} vs {describe_space(b.space)}); compare models that share "
            "a tokenizer/toy vocabulary, or set space.vocab_size and space.bos_token_id to a space "
            "both share"
        )


def weights_digest(model: torch.nn.Module, per_tensor: int = 4096) -> str:
    """A digest of the weights, cheap enough for 7B models: per tensor its name, shape, dtype, float64 sum and an
    evenly strided sample of `per_tensor` values. Any training step changes it (every weight moves); a hand edit of
    a single weight outside the sample that keeps the sum would not."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            flat = t.detach().reshape(-1)
            step = max(1, flat.numel() // per_tensor)
            sample = flat[::step][:per_tensor].to("cpu", torch.float64)
            h.update(f"{name}:{tuple(t.shape)}:{t.dtype}:{float(flat.double().sum())!r}".encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]
