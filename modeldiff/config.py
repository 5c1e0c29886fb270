"""Configuration: `configs/base.yaml` holds every key; a preset and a dot-list of overrides merge over it.

The merged config is in OmegaConf struct mode, so a misspelt key fails at load time (naming the
valid keys) instead of silently doing nothing. `config_hash` fingerprints the keys a stage depends
on, so a changed parameter invalidates only the stages it affects.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .annotate import check_annotator_name
from .cross_eval import WITHIN_BIN
from .kernels import KERNELS
from .outdist import check_z_range
from .scoring import OUTPUTS
from .tokendiff import Settings, resolve_measure

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
BASE = CONFIG_DIR / "base.yaml"
DTYPES = ("float32", "bfloat16", "float16")
# Subtrees whose keys are free-form (each kernel takes its own parameters).
OPEN_NODES = ("sampler.kernel_params",)
# Keys whose default is null, with the type(s) they take when set.
NULLABLE = {"space.vocab_size": int, "space.bos_token_id": int, "space.allowed_tokens": (list, str),
            "annotate.judge.threshold": float}

# The config keys each stage's result depends on; models and upstream runs enter through `extra`.
STAGE_KEYS = {
    "sample_outdist": ("seed", "space", "z_range", "output", "bins", "sampler", "reweighting", "model.dtype"),
    "cross_eval": ("seed", "output", "cross_eval", "model.dtype",  # + what its token-view page depends on:
                   "tokendiff.top_k", "tokendiff.clamp_rank", "tokendiff.cross_eval_views", "tokendiff.hist_bins"),
    "normalize": ("lambda",),
    "plagiarism_check": ("seed", "plagiarism"),
    # the window's default and the annotators (toy rule, judge) read these (not annotate.in_main, so main and a
    # standalone run share results); the cross_eval run, window and annotator identity enter through extra
    "annotate": ("seed", "lambda", "space", "z_range", "output", "model.dtype", "toy.modulus",
                 "annotate.annotator", "annotate.per_bin", "annotate.bin_width", "annotate.judge"),
}


class ConfigError(ValueError):
    pass


def presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "base")


def split_overrides(overrides: str | list[str] | None) -> list[str]:
    """`"a=1 z_range=[1.8, 2.1]"` -> `["a=1", "z_range=[1.8, 2.1]"]`: spaces split, except inside brackets."""
    if not overrides:
        return []
    if isinstance(overrides, str):
        overrides = re.findall(r"(?:[^\s\[{]+|\[[^\]]*\]|\{[^}]*\})+", overrides)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value: write overrides like \"space.length=6 lambda=0.1\"")
    return list(overrides)


def _resolve_path(path_or_preset: str) -> Path:
    # a path, a preset name, or a path relative to the project (the entry points' default configs/toy.yaml works
    # from any working directory)
    for candidate in (Path(path_or_preset), CONFIG_DIR / f"{path_or_preset}.yaml", CONFIG_DIR.parent / path_or_preset):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config {path_or_preset!r} not found: pass a YAML file or a preset name "
                      f"({', '.join(presets())})")


def _merge(base: DictConfig, other: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except ConfigKeyError as e:
        parent = e.full_key.rpartition(".")[0]
        node = OmegaConf.select(base, parent) if parent else base
        where = f"under {parent!r}" if parent else "at the top level"
        raise ConfigError(f"unknown config key {e.full_key!r} in {source}; valid keys {where}: "
                          f"{', '.join(map(str, node.keys()))}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot merge {source}: {str(e).splitlines()[0]}") from None


def load_config(path_or_preset: str | Path = "toy", overrides: str | list[str] | None = None) -> DictConfig:
    cfg = OmegaConf.load(BASE)
    OmegaConf.set_struct(cfg, True)
    for key in OPEN_NODES:
        OmegaConf.set_struct(OmegaConf.select(cfg, key), False)
    path = _resolve_path(str(path_or_preset))
    try:
        preset = OmegaConf.load(path)
    except Exception as e:  # YAML syntax errors come in several types
        raise ConfigError(f"cannot read config {path}: {str(e).splitlines()[0]}") from None
    cfg = _merge(cfg, preset, str(path))
    try:
        dotlist = OmegaConf.from_dotlist(split_overrides(overrides))
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot parse overrides {overrides!r}: {str(e).splitlines()[0]}") from None
    cfg = _merge(cfg, dotlist, "overrides")
    validate(cfg)
    return cfg


def _flat(node, prefix="") -> dict:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def flatten(cfg: DictConfig) -> dict:
    """{"sampler.steps": 3000, ...} (e.g. for MLflow params)."""
    return _flat(OmegaConf.to_container(cfg, resolve=True))


def _check_types(cfg: DictConfig):
    """Each value must have its base default's type (an int key gets an int, not 1.5 or "abc")."""
    base = flatten(OmegaConf.load(BASE))
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list"}
    for key, value in flatten(cfg).items():
        want = NULLABLE.get(key) if base.get(key) is None else type(base[key])
        if want is None or value is None and key in NULLABLE:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = number if want is float else isinstance(value, want) and (want is bool or not isinstance(value, bool))
        if not ok:
            need = " or ".join(names[w] for w in want) if isinstance(want, tuple) else names[want]
            raise ConfigError(f"config key {key!r} must be {need}, got {value!r}: "
                              f"fix it in the config or with overrides \"{key}=...\"")


def validate(cfg: DictConfig):
    _check_types(cfg)
    z = cfg.z_range
    if len(z) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in z):
        raise ConfigError(f"z_range must be two numbers [z_min, z_max], got {list(z)}: "
                          "e.g. overrides \"z_range=[1.8,2.1]\"")
    try:
        check_z_range(z)
    except ValueError as e:
        raise ConfigError(f"{e} (e.g. overrides \"z_range=[{min(z)},{max(z)}]\")") from None
    _check_allowed_tokens(cfg.space)
    s, t = cfg.sampler, cfg.toy
    checks = [
        ("space.length", cfg.space.length >= 1, ">= 1"),
        ("space.vocab_size", cfg.space.vocab_size is None or cfg.space.vocab_size >= 2, ">= 2 or null"),
        ("lambda", cfg["lambda"] >= 0, ">= 0"),
        ("output", cfg.output in OUTPUTS, f"one of {list(OUTPUTS)}"),
        ("bins.width", cfg.bins.width > 0, "> 0"),
        ("sampler.kernel", s.kernel in KERNELS, f"one of {sorted(KERNELS)}"),
        ("sampler.t_min", 0 < s.t_min <= s.t_max, "> 0 and <= sampler.t_max"),
        ("sampler.n_temperatures", s.n_temperatures >= 1, ">= 1"),
        ("sampler.ladders", s.ladders >= 1, ">= 1"),
        ("sampler.burn_in", 0 <= s.burn_in < s.steps, ">= 0 and < sampler.steps"),
        ("sampler.thin", s.thin >= 1, ">= 1"),
        ("sampler.swap_every", s.swap_every >= 1, ">= 1"),
        ("checkpoint.every", cfg.checkpoint.every >= 0, ">= 0"),
        ("reweighting.n_bootstrap", cfg.reweighting.n_bootstrap >= 0, ">= 0"),
        ("cross_eval.n_draws", cfg.cross_eval.n_draws >= 1, ">= 1"),
        ("cross_eval.within_bin", cfg.cross_eval.within_bin in WITHIN_BIN, f"one of {list(WITHIN_BIN)}"),
        ("model.dtype", cfg.model.dtype in DTYPES, f"one of {list(DTYPES)}"),
        ("model.batch_size", cfg.model.batch_size >= 1, ">= 1"),
        ("toy.modulus", t.modulus >= 1, ">= 1"),
        ("toy.train_steps", t.train_steps >= 1, ">= 1"),
        ("toy.lr", t.lr > 0, "> 0"),
        ("toy.batch_size", t.batch_size >= 1, ">= 1"),
        ("plagiarism.dominated", 0 <= cfg.plagiarism.dominated < 1, ">= 0 and < 1"),
        ("plagiarism.own_wins", 0 < cfg.plagiarism.own_wins <= 1, "> 0 and <= 1"),
        ("plagiarism.confidence", 0 < cfg.plagiarism.confidence < 1, "> 0 and < 1"),
        ("plagiarism.near_identical", cfg.plagiarism.near_identical >= 0, ">= 0"),
        ("plagiarism.identical_tolerance", cfg.plagiarism.identical_tolerance >= 0, ">= 0"),
        ("plagiarism.weight_alpha", 0 < cfg.plagiarism.weight_alpha < 1, "> 0 and < 1"),
        ("plagiarism.noise_alpha", 0 < cfg.plagiarism.noise_alpha < 1, "> 0 and < 1"),
        ("plagiarism.direction_z", cfg.plagiarism.direction_z > 0, "> 0"),
        ("plagiarism.permutations", cfg.plagiarism.permutations >= 1, ">= 1"),
        ("plagiarism.simulations", cfg.plagiarism.simulations >= 1, ">= 1"),
        *_annotate_checks(cfg.annotate),
    ]
    for key, ok, need in checks:
        if not ok:
            raise ConfigError(f"config key {key!r} must be {need}, got {OmegaConf.select(cfg, key)!r}: "
                              f"fix it in the config or with overrides \"{key}=...\"")
    _check_tokendiff(cfg)


def _check_tokendiff(cfg: DictConfig):
    try:
        Settings.from_cfg(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    try:
        resolve_measure(cfg.tokendiff.measure)
    except ValueError as e:
        raise ConfigError(f"config key 'tokendiff.measure': {e}") from None


def _check_allowed_tokens(space: DictConfig):
    """The shape of space.allowed_tokens; whether the ids exist is checked against the model when it loads."""
    allowed = space.allowed_tokens
    if allowed is None:
        return
    if space.vocab_size is not None:
        raise ConfigError("space.vocab_size and space.allowed_tokens are both set: they are two ways to choose the "
                          "allowed token set, so keep one (overrides \"space.vocab_size=null\" or "
                          "\"space.allowed_tokens=null\")")
    if isinstance(allowed, str):
        if not allowed.strip():
            raise ConfigError("space.allowed_tokens is an empty string: give a list of token ids, a file of ids, "
                              "or null")
        return
    bad = [v for v in allowed if not isinstance(v, int) or isinstance(v, bool)]
    if bad:
        raise ConfigError(f"space.allowed_tokens must list integer token ids, got {bad[0]!r}: e.g. overrides "
                          "\"space.allowed_tokens=[17,18,19]\" or a file path")


def _file_fingerprints(flat: dict) -> dict:
    """A token-id file enters the hash by its contents, so editing it in place invalidates reuse."""
    path = flat.get("space.allowed_tokens")
    if isinstance(path, str) and Path(path).is_file():
        flat = {**flat, "space.allowed_tokens": f"{path}#sha256={hashlib.sha256(Path(path).read_bytes()).hexdigest()}"}
    return flat


def config_hash(cfg: DictConfig, extra: dict | None = None, keys=None) -> str:
    """Stable fingerprint of the config (or of `keys` in it) plus `extra` (model identities, upstream run ids)."""
    flat = _file_fingerprints(flatten(cfg))
    if keys is not None:
        flat = {k: v for k, v in flat.items() if any(k == p or k.startswith(p + ".") for p in keys)}
    blob = json.dumps({"config": flat, "extra": extra or {}}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_hash(cfg: DictConfig, stage: str, **extra) -> str:
    return config_hash(cfg, extra, STAGE_KEYS[stage])


def _annotate_checks(a: DictConfig) -> list[tuple]:
    """The annotate section's (key, ok, requirement) rows for `validate`; an unknown annotator is named at once."""
    try:
        check_annotator_name(a.annotator)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return [
        ("annotate.per_bin", a.per_bin >= 0, ">= 0 (0 = every draw in the window)"),
        ("annotate.bin_width", a.bin_width > 0, "> 0"),
        ("annotate.in_main", not a.in_main or a.annotator != "human",
         "false with annotate.annotator=human (people fill sheets outside main), or set an automatic annotator"),
        ("annotate.judge.model", a.annotator != "judge" or bool(a.judge.model.strip()),
         "a model ref with annotate.annotator=judge (e.g. toy:large:seed=1)"),
        ("annotate.judge.softness", a.judge.softness >= 0, ">= 0 (0 = a 0/1 score)"),
    ]
