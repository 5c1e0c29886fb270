"""One small plug-in registry: a name -> object table with lazy `module:attr` entries.

Kernels (`sampler.kernel`), annotators (`annotate.annotator`) and model-ref schemes all use it. An entry may be
the object itself or the string "module:attr", imported on first use, so a registry of built-ins can be declared
where nothing heavy is imported (the config checks names without importing torch). A name that is not registered
but reads as `module:attr` is a user's plug-in: `sampler.kernel=mypkg.kernels:MyKernel`.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

MODULE_ATTR = re.compile(r"^(?P<module>[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_][\w.]*)$")


class Registry:
    """`what` names the setting in error messages (e.g. "sampler.kernel")."""

    def __init__(self, what: str, entries: dict[str, Any] | None = None):
        self.what = what
        self._entries: dict[str, Any] = dict(entries or {})

    def register(self, name: str, obj: Any = None):
        """`register(name, obj)`, or `@register(name)` on a class or function; returns the object."""
        if obj is None:
            return lambda o: self.register(name, o)
        self._entries[name] = obj
        return obj

    def unregister(self, name: str):
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self._entries)

    def _unknown(self, name: str) -> ValueError:
        return ValueError(
            f"unknown {self.what} {name!r}; available: {', '.join(self._entries)}, "
            "or module:attr for your own (e.g. mypackage.module:Name)"
        )

    def check(self, name: str):
        """A registered name or the `module:attr` form (whether that imports is known when it is used)."""
        if name not in self._entries and not MODULE_ATTR.match(str(name)):
            raise self._unknown(name)

    def get(self, name: str) -> Any:
        """The object registered as `name` (imported now if registered lazily), or the `module:attr` it names."""
        if name in self._entries:
            entry = self._entries[name]
            if isinstance(entry, str) and MODULE_ATTR.match(entry):
                entry = self._entries[name] = load_attr(entry, self.what)
            return entry
        if MODULE_ATTR.match(str(name)):
            return load_attr(name, self.what)
        raise self._unknown(name)

    def items(self):
        return [(name, self.get(name)) for name in self._entries]


def load_attr(spec: str, what: str = "plug-in") -> Any:
    """The object `module:attr` names (attr may be dotted), or a ValueError saying what to fix."""
    m = MODULE_ATTR.match(spec)
    if not m:
        raise ValueError(f"{what} {spec!r} is not module:attr (e.g. mypackage.module:Name)")
    try:
        obj = importlib.import_module(m["module"])
    except ImportError as e:
        raise ValueError(
            f"{what} {spec!r}: cannot import {m['module']!r} ({e}): make the module importable "
            "(in the working directory or installed)"
        ) from None
    for part in m["attr"].split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {spec!r}: {m['module']} has no {m['attr']!r}")
        obj = getattr(obj, part)
    return obj
