"""The package's layers, read from the code's own imports (every import, also those inside functions):

    plugins  <  method  <  models  <  analysis  <  views  <  config  <  pipeline  <  platform, ops  <  cli

(config composes each part's checks, so it sits above the parts it checks; the parts take a config without importing
this package).

A part may import its own layer and those below. Method, analysis, models, views, pipeline, config and plugins import
neither MLflow nor Accelerate nor the platform; nothing in modeldiff imports the entry points; the entry points import
only the platform's stage list. Loading a config, and listing the CLI's commands, import neither torch nor
transformers (a fresh interpreter checks it)."""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "modeldiff"
LAYERS = {
    "__init__": 0,
    "plugins": 0,
    "method": 1,
    "models": 2,
    "analysis": 3,
    "views": 4,
    "config": 5,
    "pipeline": 6,
    "platform": 7,
    "ops": 7,
    "cli": 8,
}
PLATFORM_ONLY = ("mlflow", "accelerate", "modeldiff.platform", "modeldiff.ops", "modeldiff.cli", "entrypoints")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in it, as absolute names (`from a import b` gives a and a.b)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def part(module: str) -> str | None:
    """The layer a modeldiff module belongs to (its first name under modeldiff)."""
    parts = module.split(".")
    if parts[0] != "modeldiff":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


@cache
def library_modules() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_lower_layers_import_no_platform():
    bad = [
        (m, i)
        for m, deps in library_modules().items()
        if LAYERS[part(m)] < LAYERS["platform"]
        for i in deps
        if i.startswith(PLATFORM_ONLY)
    ]
    assert not bad, f"method/analysis/models/views/pipeline/config import the platform or MLflow/Accelerate: {bad}"


def test_imports_go_down_the_layers_only():
    bad = [
        (m, i)
        for m, deps in library_modules().items()
        for i in deps
        if part(i) in LAYERS and LAYERS[part(i)] > LAYERS[part(m)]
    ]
    assert not bad, f"imports that go up a layer: {bad}"


def test_the_graph_of_parts_has_no_cycle():
    graph: dict[str, set[str]] = {}
    for m, deps in library_modules().items():
        graph.setdefault(part(m), set()).update(p for i in deps if (p := part(i)) and p != part(m))
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as e:
        pytest.fail(f"the parts of modeldiff import each other in a circle: {e.args[1]}")
    assert order.index("method") < order.index("analysis") < order.index("platform")


def test_no_cycle_between_modules():
    modules = library_modules()
    graph = {m: {i for i in deps if i in modules} - {m} for m, deps in modules.items()}
    # `from package import name` also lists package.name: keep only edges to modules that exist
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError as e:
        pytest.fail(f"modules import each other in a circle: {e.args[1]}")


def test_entry_points_import_only_the_stage_list():
    for path in sorted((ROOT / "entrypoints").glob("*.py")):
        deps = {i for i in imports(path) if i.startswith(("modeldiff", "mlflow", "accelerate", "torch"))}
        assert deps <= {"modeldiff.platform.stages", "modeldiff.platform.stages.entry_point"}, (path.name, deps)


@pytest.mark.parametrize(
    "code",
    [
        "from modeldiff.config import load_config; load_config('toy', 'sampler.kernel=gwg annotate.annotator=judge "
        "annotate.judge.model=toy:large')",
        "from modeldiff import cli; cli.main(['--help'])",
    ],
)
def test_config_and_cli_listing_import_no_torch(code):
    check = code + "; import sys; print(sorted(m for m in ('torch', 'transformers', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_test_files_have_unique_names_across_tiers():
    """pytest's default import mode imports each test file under its bare name: two tiers with the same file name
    stop the whole run at collection."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
