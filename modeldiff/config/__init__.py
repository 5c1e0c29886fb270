"""The config: `configs/base.yaml` plus a preset plus overrides (loading.py), checked section by section through
typed views (sections.py). Loading a config imports neither torch nor transformers."""

from .loading import BASE, CONFIG_DIR, config_hash, flatten, load_config, presets, split_overrides, validate
from .sections import ConfigError, RunConfig

__all__ = [
    "BASE",
    "CONFIG_DIR",
    "ConfigError",
    "RunConfig",
    "config_hash",
    "flatten",
    "load_config",
    "presets",
    "split_overrides",
    "validate",
]
