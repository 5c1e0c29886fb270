"""The files that follow from the stage list (modeldiff.platform.stages.STAGES): `MLproject`, `docker/project/MLproject`
and the launchers `entrypoints/<stage>.py`.

    python -m modeldiff.platform.project          # rewrite them after changing STAGES
    python -m modeldiff.platform.project --check  # exit 1 if any of them differs (tests/unit/test_packaging.py)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .stages import STAGES, Stage

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = "configs/toy.yaml"
ACCELERATE_CONFIG = "configs/accelerate/single.yaml"
DOCKER_WORKDIR = "/opt/modeldiff/"  # where docker/Dockerfile puts the project

ROOT_HEADER = """\
# Generated from modeldiff/platform/stages/__init__.py (STAGES) by `python -m modeldiff.platform.project`: edit there.
name: modeldiff

conda_env: conda.yaml

# Every entry point also takes `config` (a YAML file or preset name) and `overrides` (an OmegaConf
# dot-list, space-separated). Run `accelerate launch --config_file configs/accelerate/cpu2.yaml -m
# entrypoints.<name> --config ...` to split the work over processes (only the main process logs).
"""

DOCKER_HEADER = """\
# modeldiff's entry points in the CUDA image of docker/Dockerfile (../../MLproject keeps its conda environment: an
# MLproject has one environment type). The same entry points and parameters as ../../MLproject (both are generated from
# modeldiff/platform/stages/__init__.py by `python -m modeldiff.platform.project`); they run the modeldiff installed in
# the image, so rebuild the image after changing the code:
#
#   docker build -f docker/Dockerfile -t modeldiff:0.1.0 .          # from the repository root
#   pip install docker                                             # MLflow's Docker client, where `mlflow run` runs
#   mlflow run docker/project -e main --build-image -A gpus=all -A network=host -P config=gpt2-25
#
# `-A network=host` lets the container reach a tracking server on this machine (MLFLOW_TRACKING_URI=http://127.0.0.1:5000);
# with a tracking server elsewhere it is not needed. Presets and configs/... paths resolve inside the image.
name: modeldiff-docker

docker_env:
  image: modeldiff:0.1.0
  volumes: ["modeldiff-cache:/cache"]   # a named volume: toy models, dequantised GGUFs and hub downloads persist
"""


def _quoted(value: str) -> str:
    return '""' if value == "" else value


def _entry(stage: Stage, accelerate_config: str) -> str:
    lines = [
        f"  {stage.name}:",
        "    parameters:",
        f"      config: {{type: string, default: {DEFAULT_CONFIG}}}",
        '      overrides: {type: string, default: ""}',
    ]
    args = ["--config {config}", "--overrides {overrides}"]
    for p in stage.params:
        spec = "string" if p.default is None else f"{{type: string, default: {_quoted(p.default)}}}"
        lines.append(f"      {p.name}: {spec}" + (f"   # {p.help}" if p.help and p.default is not None else ""))
        args.append(f"--{p.name}={{{p.name}}}" if p.equals else f"--{p.name} {{{p.name}}}")
    launch = "python"
    if stage.launcher == "accelerate":
        lines.append(f"      accelerate_config: {{type: string, default: {accelerate_config}}}")
        # --quiet: a failed process's own one-line error is the whole story (without it Accelerate re-raises it
        # inside a CalledProcessError traceback)
        launch = "accelerate launch --quiet --config_file {accelerate_config}"
    if any(p.equals for p in stage.params):
        lines.append("    # --name={value}: a value such as -1,-0.6 would otherwise read as an option")
    lines.append(f'    command: "{launch} -m entrypoints.{stage.name} {" ".join(args)}"')
    return "\n".join(lines)


def mlproject(docker: bool = False) -> str:
    accelerate_config = DOCKER_WORKDIR + ACCELERATE_CONFIG if docker else ACCELERATE_CONFIG
    entries = "\n\n".join(_entry(s, accelerate_config) for s in STAGES)
    return f"{DOCKER_HEADER if docker else ROOT_HEADER}\nentry_points:\n{entries}\n"


def launcher(stage: Stage) -> str:
    return (
        f'"""MLproject entry point `{stage.name}`: modeldiff/platform/stages/{stage.name}.py does the work.\n\n'
        'Generated from the stage list by `python -m modeldiff.platform.project`."""\n\n'
        "from modeldiff.platform.stages import entry_point\n\n"
        f'main = entry_point("{stage.name}")\n\n'
        'if __name__ == "__main__":\n'
        "    main()\n"
    )


def generated() -> dict[Path, str]:
    """Every generated file under the project root, with the text it should have."""
    files = {ROOT / "MLproject": mlproject(), ROOT / "docker" / "project" / "MLproject": mlproject(docker=True)}
    files.update({ROOT / "entrypoints" / f"{s.name}.py": launcher(s) for s in STAGES})
    return files


def stale() -> list[Path]:
    return [path for path, text in generated().items() if not path.is_file() or path.read_text() != text]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description="Write MLproject, docker/project/MLproject and entrypoints/<stage>.py from the stage list."
    )
    p.add_argument("--check", action="store_true", help="only report files that differ (exit 1 if any)")
    args = p.parse_args(argv)
    if args.check:
        out = stale()
        for path in out:
            print(f"{path.relative_to(ROOT)} differs from the stage list: run python -m modeldiff.platform.project")
        return 1 if out else 0
    for path, text in generated().items():
        path.write_text(text)
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
