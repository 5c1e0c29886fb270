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

from .sections import ConfigError, RunConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
BASE = CONFIG_DIR / "base.yaml"
# Subtrees whose keys are free-form (each kernel takes its own parameters).
OPEN_NODES = ("sampler.kernel_params",)
# Keys that moved: the error names the new one.
RENAMED = {"reweighting.n_bootstrap": "uncertainty.n_replicates"}
# Keys whose default is null, with the type(s) they take when set.
NULLABLE = {
    "space.vocab_size": int,
    "space.bos_token_id": int,
    "space.allowed_tokens": (list, str),
    "annotate.judge.threshold": float,
}


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
            raise ConfigError(f'override {item!r} is not key=value: write overrides like "space.length=6 lambda=0.1"')
    return list(overrides)


def _resolve_path(path_or_preset: str) -> Path:
    # a path, a preset name, or a path relative to the project (the entry points' default configs/toy.yaml works
    # from any working directory)
    for candidate in (Path(path_or_preset), CONFIG_DIR / f"{path_or_preset}.yaml", CONFIG_DIR.parent / path_or_preset):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"config {path_or_preset!r} not found: pass a YAML file or a preset name ({', '.join(presets())})"
    )


def _merge(base: DictConfig, other: DictConfig, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, other)
    except ConfigKeyError as e:
        parent = e.full_key.rpartition(".")[0]
        node = OmegaConf.select(base, parent) if parent else base
        where = f"under {parent!r}" if parent else "at the top level"
        moved = [k for k in RENAMED if k == e.full_key or k.startswith(f"{e.full_key}.")]
        if moved:
            raise ConfigError(f"config key {moved[0]!r} in {source} is now {RENAMED[moved[0]]!r}: rename it") from None
        raise ConfigError(
            f"unknown config key {e.full_key!r} in {source}; valid keys {where}: {', '.join(map(str, node.keys()))}"
        ) from None
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
            raise ConfigError(
                f'config key {key!r} must be {need}, got {value!r}: fix it in the config or with overrides "{key}=..."'
            )


def validate(cfg: DictConfig) -> RunConfig:
    """Every key's type, then every section's own checks (its typed view); returns the typed view."""
    _check_types(cfg)
    return RunConfig.from_cfg(cfg)


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
