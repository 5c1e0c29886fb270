"""The `modeldiff` console script: `modeldiff <command> [entry point arguments]`.

Each command runs the MLproject entry point of the same name in this process, so
`modeldiff run-main --model_a toy:small` is `mlflow run . -e main -P model_a=toy:small` without MLflow
Projects (the entry point still logs to MLflow). `register` is not an entry point: it adds a model
version to the registry of the configured tracking URI.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "run-main": ("main", "the whole chain as child runs, reusing finished identical runs"),
    "sample-outdist": ("sample_outdist", "stage 1: one model's output distribution"),
    "cross-eval": ("cross_eval", "stage 2: one model's draws scored by the other"),
    "normalize": ("normalize", "stage 3: the ratio from an A→B and a B→A cross_eval run"),
    "annotate": ("annotate", "Sec. 3.4: annotation sheets, automatic annotators, precision and recall"),
    "register": (None, "register a model ref as an MLflow model version (models:/<name>/<version>)"),
}


def register(argv) -> int:
    """`modeldiff register REF --name NAME [--no-copy]`: prints the registered name and version."""
    from entrypoints._common import parser, user_errors
    from modeldiff import tracking
    from modeldiff.config import load_config
    from modeldiff.registry import register_model

    p = parser("Register a model ref (toy, GGUF, noise copy, directory, hub id) as an MLflow model version.")
    p.add_argument("ref", help="the model ref, e.g. toy:small, smollm2, noise:1e-3:smollm2 or a directory")
    p.add_argument("--name", required=True, help="registered model name")
    p.add_argument("--no-copy", dest="copy", action="store_false",
                   help="record only the ref instead of copying local weights into the version")
    args = p.parse_args(argv)
    with user_errors():
        tracking.setup()
        version = register_model(args.ref, args.name, load_config(args.config, args.overrides), copy=args.copy)
    print(f"registered {version.name} version {version.version}: models:/{version.name}/{version.version}")
    return 0


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
    if COMMANDS[argv[0]][0] is None:
        return register(argv[1:])
    module = importlib.import_module(f"entrypoints.{COMMANDS[argv[0]][0]}")
    module.main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
