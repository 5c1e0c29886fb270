"""Views: the run pages' figures (plots), the token view and the annotation sheet as self-contained HTML pages.
Their HTML, CSS and JS are package data under assets/."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def asset(name: str) -> str:
    """A file of the pages (package data under assets/)."""
    return resources.files(__package__).joinpath("assets", name).read_text(encoding="utf-8")
