"""Model references -> loaded models with an identity and an input space.

Refs: `toy:<arch>[:seed=<n>]` (trained in-process on the config's toy task, cached under
$MODELDIFF_CACHE), a local Hugging Face directory, or a hub id. The identity is a stable string
that changes when the weights would, so finished runs can be reused safely.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .space import InputSpace
from .toy import ToyTask, train_and_save

TOY_REF = re.compile(r"^toy:(?P<arch>[A-Za-z0-9_-]+)(?::seed=(?P<seed>\d+))?$")
TOY_REF_HELP = "toy:small, toy:large or toy:<arch>:seed=<n> with <arch> a key of toy.archs"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object | None
    identity: str
    space: InputSpace
    ref: str = ""
    decode: Callable | None = None  # token ids -> text for tables and plots


def cache_root() -> Path:
    return Path(os.environ.get("MODELDIFF_CACHE", ".modeldiff_cache"))


def toy_task(cfg) -> ToyTask:
    if cfg.space.vocab_size is None:
        raise ValueError("toy models need space.vocab_size (the toy's digits 0..V-1): set it in the config")
    return ToyTask(int(cfg.space.length), int(cfg.space.vocab_size), int(cfg.toy.modulus))


def decode_digits(tokens) -> str:
    return " ".join(str(int(t)) for t in tokens)


def _prepare(model: torch.nn.Module, cfg) -> torch.nn.Module:
    device = cfg.model.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device=device, dtype=getattr(torch, cfg.model.dtype)).eval()


def _load_toy(ref: str, cfg) -> LoadedModel:
    from transformers import GPT2LMHeadModel

    m = TOY_REF.match(ref)
    archs = cfg.toy.archs
    if not m or m["arch"] not in archs:
        raise ValueError(f"unknown toy model {ref!r}: use {TOY_REF_HELP} (archs here: {', '.join(archs)})")
    task, seed = toy_task(cfg), int(m["seed"] or 0)
    if cfg.space.bos_token_id not in (None, task.bos_token_id):
        raise ValueError(f"toy models use BOS = space.vocab_size = {task.bos_token_id}: unset space.bos_token_id")
    arch = {k: int(v) for k, v in archs[m["arch"]].items()}
    train = dict(steps=int(cfg.toy.train_steps), lr=float(cfg.toy.lr), batch_size=int(cfg.toy.batch_size))
    key = hashlib.sha256(json.dumps(dict(task=[task.length, task.vocab_size, task.modulus], arch=arch, seed=seed,
                                         train=train), sort_keys=True).encode()).hexdigest()[:16]
    out = cache_root() / "toy" / key
    if not (out / "config.json").exists():
        # train into a private directory and rename, so a concurrent or interrupted run never sees half a model
        tmp = out.with_name(f"{key}.tmp{os.getpid()}")
        report = train_and_save(task, arch, tmp, seed=seed, progress=False, **train)
        (tmp / "train_report.json").write_text(json.dumps({"ref": ref, **report}, indent=1))
        try:
            tmp.rename(out)
        except OSError:  # another process finished first: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
    model = GPT2LMHeadModel.from_pretrained(out)
    return LoadedModel(_prepare(model, cfg), None, f"toy:{key}", task.space, ref, decode_digits)


def dir_identity(path: Path) -> str:
    """config.json plus the names, sizes and mtimes of the weight files (hashing GBs of weights is too slow)."""
    h = hashlib.sha256((path / "config.json").read_bytes())
    for f in sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return f"dir:{h.hexdigest()[:16]}"


def _hf_space(model, tokenizer, cfg) -> InputSpace:
    sp = cfg.space
    toy = getattr(model.config, "modeldiff_toy", None)  # a saved toy: its digits, BOS = V
    if sp.vocab_size is not None:
        ids = tuple(range(int(sp.vocab_size)))
    elif toy:
        ids = tuple(range(int(toy["vocab_size"])))
    else:
        special = set(tokenizer.all_special_ids) if tokenizer is not None else set()
        special |= {model.config.bos_token_id, model.config.eos_token_id} - {None}
        ids = tuple(i for i in range(model.config.vocab_size) if i not in special)
    candidates = (sp.bos_token_id, getattr(tokenizer, "bos_token_id", None), model.config.bos_token_id)
    bos = next((b for b in candidates if b is not None), None)
    return InputSpace(int(sp.length), ids, bos)


def _load_hf(ref: str, cfg, identity: str | None) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trust = bool(cfg.model.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(ref, trust_remote_code=trust)
    tokenizer = None
    local = Path(ref)
    has_tokenizer = not local.is_dir() or any((local / f).exists() for f in ("tokenizer.json", "tokenizer_config.json"))
    if has_tokenizer:
        try:
            tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=trust)
        except (OSError, ValueError):  # weights without a tokenizer: ids are shown as numbers
            tokenizer = None
    if identity is None:
        identity = f"hub:{ref}:{hashlib.sha256(model.config.to_json_string().encode()).hexdigest()[:16]}"
    decode = (lambda t: tokenizer.decode([int(i) for i in t])) if tokenizer is not None else decode_digits
    return LoadedModel(_prepare(model, cfg), tokenizer, identity, _hf_space(model, tokenizer, cfg), ref, decode)


def load_model(ref: str, cfg) -> LoadedModel:
    ref = str(ref).strip()
    if ref.startswith("toy:"):
        return _load_toy(ref, cfg)
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"model directory {ref!r} has no config.json: pass a directory written by "
                             "save_pretrained, a hub id, or a toy ref")
        try:
            return _load_hf(str(path), cfg, dir_identity(path))
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load model directory {ref!r} ({str(e).splitlines()[0]}): "
                             "check that it holds a causal LM saved with save_pretrained") from None
    if path.exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise ValueError(f"model {ref!r} is not a model directory: pass a directory written by save_pretrained, "
                         f"a Hugging Face hub id, or {TOY_REF_HELP}")
    try:
        return _load_hf(ref, cfg, None)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot load model {ref!r} ({str(e).splitlines()[0]}): it is neither {TOY_REF_HELP}, "
                         "a local directory, nor a reachable Hugging Face hub id; check the spelling, or "
                         "download the model and pass its directory") from None


def describe_space(space: InputSpace) -> str:
    ids = space.token_ids
    contiguous = ids == tuple(range(ids[0], ids[0] + len(ids)))
    tokens = f"ids {ids[0]}..{ids[-1]}" if contiguous else f"{len(ids)} token ids"
    return f"length {space.length}, {tokens}, BOS {space.bos_token_id}"


def _vocab_hash(tokenizer) -> str:
    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


def check_comparable(a: LoadedModel, b: LoadedModel):
    """Models compare only over one input space (and, with tokenizers, one vocabulary)."""
    if a.space != b.space:
        raise ValueError(f"models {a.ref!r} and {b.ref!r} are not comparable: their input spaces differ "
                         f"({describe_space(a.space)} vs {describe_space(b.space)}); compare models that share "
                         "a tokenizer/toy vocabulary, or set space.vocab_size and space.bos_token_id to a space "
                         "both share")
    if a.tokenizer is not None and b.tokenizer is not None and _vocab_hash(a.tokenizer) != _vocab_hash(b.tokenizer):
        raise ValueError(f"models {a.ref!r} and {b.ref!r} are not comparable: their tokenizers' vocabularies differ; "
                         "compare models that share a tokenizer")
