"""The `modeldiff` console script: `modeldiff <command> [entry point arguments]`.

Each stage's command (modeldiff.platform.stages.STAGES) runs that MLproject entry point in this process, so
`modeldiff run-main --model_a toy:small` is `mlflow run . -e main -P model_a=toy:small` without MLflow
Projects (the entry point still logs to MLflow). `register` is not an entry point: it adds a model
version to the registry of the configured tracking URI. `screen serve|poll|run` screens registry versions for
plagiarism (modeldiff.platform.screening). `stack up|down|status` runs the team stack (PostgreSQL, mlflow server,
screening service) without Docker (modeldiff.ops.stack). `z-quantiles` prints the z quantiles of a model's own
samples, to choose z_range from.
"""

from __future__ import annotations

import sys

from modeldiff.platform.stages import STAGES

# command -> (the stage it runs, or None, one line of help)
COMMANDS = {
    **{s.command: (s.name, s.summary) for s in sorted(STAGES, key=lambda s: s.name != "main")},
    "register": (None, "register a model ref as an MLflow model version (models:/<name>/<version>)"),
    "screen": (None, "screen new registry versions for plagiarism: serve (webhooks), poll, or run one version"),
    "stack": (None, "the team stack without Docker: PostgreSQL, mlflow server, screening service (up, down, status)"),
    "z-quantiles": (None, "quantiles of z over a model's own samples, and a z_range to choose from them"),
}


def z_quantiles(argv) -> int:
    """`modeldiff z-quantiles --model REF [--n N] [--tau T]`: prints the quantiles and a suggested z_range."""
    from modeldiff import pipeline
    from modeldiff.config import load_config
    from modeldiff.models import load_model
    from modeldiff.platform.runtime import parser, user_errors

    p = parser(
        "Sample a model's own inputs of length space.length (ancestral, at temperature --tau over the allowed tokens) "
        "and print the quantiles of z (mean NLL): choose z_range on the low side, where the model's likely inputs are."
    )
    p.add_argument("--model", required=True, help="a model ref, e.g. smollm2 or toy:small")
    p.add_argument("--n", type=int, default=2048, help="samples (default 2048)")
    p.add_argument("--tau", type=float, default=1.0, help="sampling temperature (default 1: the model itself)")
    args = p.parse_args(argv)
    with user_errors():
        cfg = load_config(args.config, args.overrides)
        out = pipeline.z_quantiles(cfg, load_model(args.model, cfg), args.n, args.tau, progress=True)
    qs = "  ".join(f"{float(k):.0%}: {v:.3f}" for k, v in out["quantiles"].items())
    lo, hi = out["suggested_z_range"]
    print(f"z of {out['n_samples']} samples of {args.model} at L = {out['length']}, tau = {out['tau']:g}:\n  {qs}")
    print(
        f"suggested: z_range=[{lo:g},{hi:g}] (from the 10th to the 50th percentile: inputs the model finds likely, "
        "where its samples still reach; widen it towards lower z if the sampler reaches there)"
    )
    return 0


def register(argv) -> int:
    """`modeldiff register REF --name NAME [--no-copy]`: prints the registered name and version."""
    from modeldiff.config import load_config
    from modeldiff.platform import tracking
    from modeldiff.platform.model_registry import register_model
    from modeldiff.platform.runtime import parser, user_errors

    p = parser("Register a model ref (toy, GGUF, noise copy, directory, hub id) as an MLflow model version.")
    p.add_argument("ref", help="the model ref, e.g. toy:small, smollm2, noise:1e-3:smollm2 or a directory")
    p.add_argument("--name", required=True, help="registered model name")
    p.add_argument(
        "--no-copy",
        dest="copy",
        action="store_false",
        help="record only the ref instead of copying local weights into the version",
    )
    args = p.parse_args(argv)
    with user_errors():
        tracking.setup()
        version = register_model(args.ref, args.name, load_config(args.config, args.overrides), copy=args.copy)
    print(f"registered {version.name} version {version.version}: models:/{version.name}/{version.version}")
    return 0


def screen(argv) -> int:
    """`modeldiff screen serve|worker|poll|run`: registry screening (see modeldiff/platform/screening.py)."""
    import argparse
    import logging
    import os
    from pathlib import Path

    from modeldiff.platform import screening, tracking
    from modeldiff.platform.runtime import user_errors

    p = argparse.ArgumentParser(
        prog="modeldiff screen",
        description="Screen registry versions for plagiarism: each "
        "new version gets a plagiarism_check against the registered models of its vocabulary.",
    )
    sub = p.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default="configs/toy.yaml", help="config (YAML file or preset) of the checks")
    common.add_argument("--overrides", default="", help="OmegaConf dot-list for the checks")
    common.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".modeldiff_screening"),
        help="job logs and the delivery-id log (default ./.modeldiff_screening)",
    )
    common.add_argument("--experiment", default=screening.EXPERIMENT, help="MLflow experiment of the check runs")
    common.add_argument("--job-timeout", type=float, default=None, help="seconds before a job is killed (default none)")
    s = sub.add_parser("serve", parents=[common], help="receive MLflow registry webhooks and screen new versions")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument(
        "--secret-env",
        default="MODELDIFF_WEBHOOK_SECRET",
        help="environment variable holding the webhook's HMAC secret",
    )
    s.add_argument("--tolerance", type=float, default=300.0, help="seconds a delivery's timestamp may be off")
    s.add_argument(
        "--request-timeout",
        type=float,
        default=screening.REQUEST_TIMEOUT,
        help="seconds a client may pause while sending a request before it is dropped (default %(default)s)",
    )
    s.add_argument(
        "--max-connections",
        type=int,
        default=screening.MAX_CONNECTIONS,
        help="connections handled at once; more get 503, which MLflow retries (default %(default)s)",
    )
    s.add_argument(
        "--register-webhook",
        default="",
        metavar="URL",
        help="create or update the registry webhook to call URL (e.g. http://127.0.0.1:8765/webhook)",
    )
    s.add_argument(
        "--queue",
        default=os.environ.get("MODELDIFF_QUEUE_DSN", ""),
        metavar="DSN",
        help="PostgreSQL database of the task queue (default $MODELDIFF_QUEUE_DSN): queue the jobs for "
        "`modeldiff screen worker`s instead of running them here",
    )
    w = sub.add_parser("worker", parents=[common], help="run the screening jobs of a task queue (team stack)")
    w.add_argument(
        "--queue",
        default=os.environ.get("MODELDIFF_QUEUE_DSN", ""),
        metavar="DSN",
        help="PostgreSQL database of the task queue (default $MODELDIFF_QUEUE_DSN)",
    )
    w.add_argument("--name", default=None, help="the worker's name in the queue (default modeldiff-<host>)")
    q = sub.add_parser("poll", parents=[common], help="screen unscreened versions by listing the registry")
    q.add_argument("--interval", type=float, default=60.0, help="seconds between registry scans")
    q.add_argument("--once", action="store_true", help="one scan, run its jobs, exit")
    r = sub.add_parser("run", parents=[common], help="screen one version now (also one that failed before)")
    r.add_argument("version", help="models:/<name>/<version>")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s modeldiff-screen %(levelname)s %(message)s")
    with user_errors():
        tracking.setup()
        if args.mode == "serve":
            screening.serve(
                args.host,
                args.port,
                os.environ.get(args.secret_env, ""),
                args.config,
                args.overrides,
                args.state_dir,
                args.tolerance,
                args.register_webhook or None,
                args.experiment,
                args.job_timeout,
                args.request_timeout,
                args.max_connections,
                _queue_screener(args) if args.queue else None,
            )
        elif args.mode == "worker":
            if not args.queue:
                raise ValueError(
                    "a worker needs the task queue's database: --queue postgresql://... or MODELDIFF_QUEUE_DSN"
                )
            from modeldiff.platform import taskqueue

            taskqueue.work(args.queue, args.state_dir, args.name)
        elif args.mode == "poll":
            screening.poll(
                args.config, args.overrides, args.state_dir, args.interval, args.once, args.experiment, args.job_timeout
            )
        else:
            version = screening.parse_version(args.version)
            status = screening.Screener(
                args.config, args.overrides, args.state_dir, args.experiment, args.job_timeout
            ).run_job(version.name, str(version.version))
            print(f"{args.version}: {status}")
            return 0 if status == "done" else 1
    return 0


def _queue_screener(args):
    """The service's jobs go to the task queue (PostgreSQL) for `modeldiff screen worker`s."""
    from modeldiff.platform import taskqueue

    return taskqueue.QueueScreener(
        args.queue, args.config, args.overrides, args.state_dir, args.experiment, args.job_timeout
    )


def stack(argv) -> int:
    """`modeldiff stack up|down|status [--dir DIR]`: the team stack on this machine (see modeldiff/ops/stack.py)."""
    import argparse
    import json
    from pathlib import Path

    from modeldiff.ops import stack as st

    p = argparse.ArgumentParser(
        prog="modeldiff stack",
        description="PostgreSQL, mlflow server (PostgreSQL backend, "
        "proxied artifacts) and the screening service on this machine, without Docker; the "
        "same services as docker/compose.yaml. Everything is kept under --dir.",
    )
    sub = p.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dir",
        type=Path,
        default=Path(".modeldiff_stack"),
        help="the stack's data, logs, secrets and stack.json (default ./.modeldiff_stack)",
    )
    u = sub.add_parser("up", parents=[common], help="start the stack in the background (keeps earlier data)")
    u.add_argument(
        "--port-base",
        type=int,
        default=st.DEFAULT_PORT_BASE,
        help="mlflow listens here, the screening service on the next port, PostgreSQL on the one after",
    )
    u.add_argument(
        "--listen",
        default="127.0.0.1",
        help="interface of mlflow and the screening service (0.0.0.0 for a team; PostgreSQL stays local)",
    )
    u.add_argument("--screen-config", default="configs/toy.yaml", help="config of the screening checks")
    u.add_argument("--screen-overrides", default="", help="OmegaConf dot-list for the screening checks")
    u.add_argument("--workers", type=int, default=st.DEFAULT_WORKERS, help="mlflow server worker processes")
    u.add_argument(
        "--screen-workers",
        type=int,
        default=st.DEFAULT_SCREEN_WORKERS,
        help="screening workers: they run the jobs the screening service queues in PostgreSQL (default %(default)s)",
    )
    u.add_argument(
        "--allowed-hosts",
        default="",
        help="more Host names the server accepts, comma-separated (e.g. the team's name for this machine)",
    )
    sub.add_parser("down", parents=[common], help="stop the stack (its data stays)")
    sub.add_parser("status", parents=[common], help="the stack's addresses and whether each service is up, as JSON")
    args = p.parse_args(argv)
    try:  # no user_errors(): it would import MLflow and torch, and stop and status should answer at once
        if args.mode == "up":
            hosts = tuple(h.strip() for h in args.allowed_hosts.split(",") if h.strip())
            state = st.up(
                args.dir,
                args.port_base,
                args.listen,
                args.screen_config,
                args.screen_overrides,
                args.workers,
                hosts,
                screen_workers=args.screen_workers,
            )
            print(
                f"modeldiff stack is up; data in {state['dir']}\n"
                f"  export MLFLOW_TRACKING_URI={state['tracking_uri']}\n"
                f"  UI: {state['ui_url']}    screening: {state['screening_url']}/health\n"
                f"  PostgreSQL: {state['postgres_uri']} (password in {state['dir']}/secrets.env)\n"
                f"  stop: modeldiff stack down --dir {args.dir}"
            )
        elif args.mode == "down":
            stopped = st.down(args.dir)
            print(f"modeldiff: stopped {', '.join(stopped) if stopped else 'nothing (no service was running)'}")
        else:
            print(json.dumps(st.status(args.dir), indent=1))
    except (ValueError, OSError) as e:
        print(f"modeldiff: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


def usage() -> str:
    lines = [
        "usage: modeldiff <command> [arguments]  (modeldiff <command> --help for its arguments)",
        "",
        "Compare two language models in their input space (Model-diff).",
        "",
        "commands:",
    ]
    lines += [f"  {name:<18}{text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"modeldiff: error: unknown command {argv[0]!r}\n{usage()}", file=sys.stderr)
        return 2
    if argv[0] == "screen":
        return screen(argv[1:])
    if argv[0] == "stack":
        return stack(argv[1:])
    if argv[0] == "z-quantiles":
        return z_quantiles(argv[1:])
    if COMMANDS[argv[0]][0] is None:
        return register(argv[1:])
    from modeldiff.platform.stages import STAGE

    STAGE[COMMANDS[argv[0]][0]].main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
