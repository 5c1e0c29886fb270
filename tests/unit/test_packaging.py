"""pyproject.toml is the one dependency list; conda.yaml and MLproject follow it and DESIGN §4."""

import re
from pathlib import Path

import pytest
import yaml

from modeldiff import cli
from modeldiff.platform import project
from modeldiff.platform.stages import STAGES

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parents[2]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_conda_env_lists_the_pyproject_dependencies():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert {_name(d): d.replace(" ", "") for d in pip} == {_name(d): d.replace(" ", "") for d in deps}
    assert "pip" in conda["dependencies"]


def test_mlproject_entry_points_follow_the_contract():
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    assert project["name"] == "modeldiff" and project["conda_env"] == "conda.yaml"
    expected = {
        "sample_outdist": {"model", "resume"},
        "cross_eval": {"outdist_run", "other_model", "direction"},
        "normalize": {"ab_run", "ba_run"},
        "main": {"model_a", "model_b", "accelerate_config"},
        "plagiarism_check": {"model_a", "model_b", "version"},
        "tokendiff": {"model_a", "model_b", "corpus", "column", "text", "measure"},
        "annotate": {"cross_eval_run", "window", "scores"},
        "compare": {"reference", "models"},
    }
    # the chain can scale out; --quiet: a user error stays one line
    launcher = {"main": "accelerate launch --quiet --config_file {accelerate_config} "}
    eps = project["entry_points"]
    assert set(eps) == set(expected)
    for name, params in expected.items():
        assert set(eps[name]["parameters"]) == params | {"config", "overrides"}
        assert eps[name]["command"].startswith(launcher.get(name, "python ") + f"-m entrypoints.{name} ")
        for p in eps[name]["parameters"]:
            assert (
                f"--{p} {{{p}}}" in eps[name]["command"]
                or f"--{p}={{{p}}}" in eps[name]["command"]
                or p == "accelerate_config"
            )
    assert eps["main"]["parameters"]["config"]["default"] == "configs/toy.yaml"
    assert eps["main"]["parameters"]["model_a"]["default"] == ""  # "" = the config's models.a (toy:small in toy)
    assert eps["main"]["parameters"]["model_b"]["default"] == ""
    assert eps["cross_eval"]["parameters"]["direction"]["default"] == "AB"


def test_console_script(capsys):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["modeldiff"] == "modeldiff.cli:main"
    assert cli.main(["--help"]) == 0
    assert "run-main" in capsys.readouterr().out
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_files_generated_from_the_stage_list_are_up_to_date():
    """MLproject, docker/project/MLproject and entrypoints/<stage>.py follow modeldiff.platform.stages.STAGES."""
    stale = [str(p.relative_to(ROOT)) for p in project.stale()]
    assert not stale, f"{stale} differ from the stage list: run python -m modeldiff.platform.project"
    launchers = {p.stem for p in (ROOT / "entrypoints").glob("*.py")} - {"__init__"}
    assert launchers == {s.name for s in STAGES}, "entrypoints/ holds a launcher that is not a stage: remove it"


def test_cli_commands_are_the_stages_plus_the_tools():
    stages = {name for name, _ in cli.COMMANDS.values() if name}
    assert stages == {s.name for s in STAGES}
    assert {c for c, (name, _) in cli.COMMANDS.items() if name is None} == {
        "register",
        "screen",
        "stack",
        "z-quantiles",
    }
    for s in STAGES:
        assert cli.COMMANDS[s.command] == (s.name, s.summary)
        assert set(vars(s.parser().parse_args(REQUIRED.get(s.name, [])))) == {"config", "overrides"} | {
            p.name for p in s.params
        }


REQUIRED = {
    "sample_outdist": ["--model", "m"],
    "cross_eval": ["--outdist_run", "r", "--other_model", "m"],
    "normalize": ["--ab_run", "a", "--ba_run", "b"],
    "annotate": ["--cross_eval_run", "r"],
    "compare": ["--models", "m1 m2"],
}


def test_a_missing_system_part_fails_the_test_and_says_what_to_install():
    from support import missing_system_part

    with pytest.raises(pytest.fail.Exception, match="apt-get install postgresql.*install it"):
        missing_system_part("PostgreSQL is missing: apt-get install postgresql")
