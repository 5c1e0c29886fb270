"""The `modeldiff` console script: `modeldiff <command> [entry point arguments]`.

Each command runs the MLproject entry point of the same name in this process, so
`modeldiff run-main --model_a toy:small` is `mlflow run . -e main -P model_a=toy:small` without MLflow
Projects (the entry point still logs to MLflow).
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "run-main": ("main", "the whole chain as child runs, reusing finished identical runs"),
    "sample-outdist": ("sample_outdist", "stage 1: one model's output distribution"),
    "cross-eval": ("cross_eval", "stage 2: one model's draws scored by the other"),
    "normalize": ("normalize", "stage 3: the ratio from an A→B and a B→A cross_eval run"),
}


def usage() -> str:
    lines = ["usage: modeldiff <command> [arguments]  (modeldiff <command> --help for its arguments)", "",
             "Compare two language models in their input space (Model-diff).", "", "commands:"]
    lines += [f"  {name:<16}{text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"modeldiff: error: unknown command {argv[0]!r}\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"entrypoints.{COMMANDS[argv[0]][0]}")
    module.main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
