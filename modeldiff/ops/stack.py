"""The team stack, defined once: PostgreSQL, `mlflow server` (PostgreSQL backend, proxied artifact store), the
screening service (`modeldiff screen serve`, which registers its own registry webhook at start-up and queues one job
per new version in PostgreSQL) and its workers (`modeldiff screen worker`, procrastinate: any number, on any machine
that reaches the database; a dead worker's job is taken up by another, modeldiff.platform.taskqueue).

`modeldiff stack up` runs the three on this machine without Docker (PostgreSQL from Debian's packages) with every
piece of state under one directory, so `up` after `down` keeps the runs, the registry and the secrets;
`docker/compose.yaml` runs the same commands in containers. Both come from `services()` here: the compose file is
written by hand for people to read, and tests/test_stack.py fails when its commands, ports, environment, health
checks or volumes drift from what this module would run. Only the host names and paths differ (a `Layout`).

Secrets (the database password, the webhook HMAC secret, and the Fernet key with which MLflow encrypts webhook secrets,
which must stay fixed for a server) are generated once into DIR/secrets.env, or come from docker/.env under compose;
they reach the processes through the environment only, never their command lines.

Standard library only: the stack is started from the CLI before anything heavy is needed.
"""

from __future__ import annotations

import base64
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the project: the screening service runs its jobs from here
DB_USER = DB_NAME = "mlflow"
SECRETS = ("POSTGRES_PASSWORD", "MODELDIFF_WEBHOOK_SECRET", "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY")
# start order; each waits for the one before it to be healthy (a worker has no health check: it runs)
ORDER = ("postgres", "mlflow", "screening", "worker")
DEFAULT_SCREEN_WORKERS = 2  # screening workers (`modeldiff screen worker`): they run the jobs the service queues
DEFAULT_PORT_BASE = 5000
DEFAULT_WORKERS = 2
# Host headers the server accepts (MLflow's DNS-rebinding guard): MLflow's own defaults, loopback and private
# addresses, plus the server's name on the stack's network; more via --allowed-hosts (e.g. a team DNS name).
ALLOWED_HOSTS = (
    "localhost",
    "localhost:*",
    "127.0.0.1",
    "127.0.0.1:*",
    "[::1]",
    "[[]::1]:*",
    "10.*",
    "192.168.*",
    "172.1[6-9].*",
    "172.2[0-9].*",
    "172.3[0-1].*",
)
PG_USER = "postgres"  # the OS user PostgreSQL runs as when the stack is started by root (initdb refuses root)


@dataclass(frozen=True)
class Ports:
    mlflow: int
    screening: int
    postgres: int

    @classmethod
    def from_base(cls, base: int = DEFAULT_PORT_BASE) -> Ports:
        if not 1024 <= base <= 65533:
            raise ValueError(
                f"--port-base {base} is out of range: pass a port from 1024 to 65533 (the stack uses "
                "it and the next two)"
            )
        return cls(mlflow=base, screening=base + 1, postgres=base + 2)


@dataclass(frozen=True)
class Layout:
    """Where the services reach each other, which interfaces they bind, and where they keep their data."""

    postgres_host: str
    mlflow_host: str
    screening_host: str
    listen: str  # interface mlflow and the screening service bind
    pg_listen: str  # PostgreSQL's listen_addresses
    pgdata: str
    pgsocket: str
    artifacts: str
    state: str
    cache: str


def _reach(listen: str) -> str:
    """The address to reach a server bound to `listen` from this machine."""
    return "127.0.0.1" if listen in ("0.0.0.0", "::", "") else listen


def local_layout(root: Path, listen: str = "127.0.0.1") -> Layout:
    root, host = Path(root).resolve(), _reach(listen)
    return Layout(
        "127.0.0.1",
        host,
        host,
        listen,
        "127.0.0.1",
        pgdata=str(root / "postgres"),
        pgsocket=str(root / "postgres"),
        artifacts=str(root / "artifacts"),
        state=str(root / "screening"),
        cache=str(root / "cache"),
    )


# inside docker/compose.yaml's containers: service names, all interfaces, the images' own paths and named volumes
COMPOSE_LAYOUT = Layout(
    "postgres",
    "mlflow",
    "screening",
    "0.0.0.0",
    "*",
    pgdata="/var/lib/postgresql/data",
    pgsocket="/var/run/postgresql",
    artifacts="/mlartifacts",
    state="/state",
    cache="/cache/modeldiff",
)


@dataclass(frozen=True)
class Service:
    name: str
    argv: list  # program name first: postgres, mlflow or modeldiff (see `program`)
    port: int
    env: dict  # plain environment
    secret_env: dict  # environment variable -> the SECRETS key whose value it takes
    health: list | str | None  # a command (argv) that succeeds once ready, an HTTP path answering 200 on `port`,
    # or None: running is ready (a worker serves nothing)
    data: list = field(default_factory=list)  # directories the service keeps its state in (volumes under compose)


def services(
    ports: Ports,
    layout: Layout,
    screen_config: str = "configs/toy.yaml",
    screen_overrides: str = "",
    workers: int = DEFAULT_WORKERS,
    allowed_hosts: tuple = (),
) -> dict:
    """The services for these ports and layout, in start order (the worker's is run as many times as asked)."""
    # the driver named: SQLAlchemy 2.1 takes a bare postgresql:// to mean psycopg 3; the password comes as PGPASSWORD
    backend = f"postgresql+psycopg2://{DB_USER}@{layout.postgres_host}:{ports.postgres}/{DB_NAME}"
    # the task queue of the screening jobs (procrastinate's tables, in the same database; libpq takes PGPASSWORD)
    queue = f"postgresql://{DB_USER}@{layout.postgres_host}:{ports.postgres}/{DB_NAME}"
    checks = ["--config", screen_config, "--overrides", screen_overrides, "--state-dir", layout.state]
    hosts = list(dict.fromkeys((f"{layout.mlflow_host}:{ports.mlflow}", *ALLOWED_HOSTS, *allowed_hosts)))
    out = [
        Service(
            "postgres",
            [
                "postgres",
                "-D",
                layout.pgdata,
                "-k",
                layout.pgsocket,
                "-p",
                str(ports.postgres),
                "-c",
                f"listen_addresses={layout.pg_listen}",
            ],
            ports.postgres,
            {"POSTGRES_USER": DB_USER, "POSTGRES_DB": DB_NAME},
            {"POSTGRES_PASSWORD": "POSTGRES_PASSWORD"},
            ["pg_isready", "-h", "127.0.0.1", "-p", str(ports.postgres), "-U", DB_USER, "-d", DB_NAME],
            [layout.pgdata],
        ),
        Service(
            "mlflow",
            [
                "mlflow",
                "server",
                "--backend-store-uri",
                backend,
                "--serve-artifacts",
                "--artifacts-destination",
                layout.artifacts,
                "--host",
                layout.listen,
                "--port",
                str(ports.mlflow),
                "--workers",
                str(workers),
            ],
            ports.mlflow,
            {
                "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
                # webhooks to loopback or private addresses (the screening service's)
                "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
                "MLFLOW_SERVER_ALLOWED_HOSTS": ",".join(hosts),
            },
            {
                "PGPASSWORD": "POSTGRES_PASSWORD",
                "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY",
            },
            "/health",
            [layout.artifacts],
        ),
        Service(
            "screening",
            [
                "modeldiff",
                "screen",
                "serve",
                "--host",
                layout.listen,
                "--port",
                str(ports.screening),
                *checks,
                "--register-webhook",
                f"http://{layout.screening_host}:{ports.screening}/webhook",
                "--queue",
                queue,
            ],
            ports.screening,
            {"MLFLOW_TRACKING_URI": f"http://{layout.mlflow_host}:{ports.mlflow}", "MODELDIFF_CACHE": layout.cache},
            {"MODELDIFF_WEBHOOK_SECRET": "MODELDIFF_WEBHOOK_SECRET", "PGPASSWORD": "POSTGRES_PASSWORD"},
            "/health",
            [layout.state, layout.cache],
        ),
        Service(
            "worker",
            ["modeldiff", "screen", "worker", *checks, "--queue", queue],
            None,
            {"MLFLOW_TRACKING_URI": f"http://{layout.mlflow_host}:{ports.mlflow}", "MODELDIFF_CACHE": layout.cache},
            {"PGPASSWORD": "POSTGRES_PASSWORD"},
            None,
            [layout.state, layout.cache],
        ),
    ]
    return {s.name: s for s in out}


def compose_healthcheck(service: Service) -> list:
    """The service's readiness check as a compose healthcheck `test` (both images have Python); None for none."""
    if service.health is None:
        return None
    if isinstance(service.health, list):
        return ["CMD", *service.health]
    url = f"http://127.0.0.1:{service.port}{service.health}"
    return ["CMD", "python", "-c", f"import urllib.request; urllib.request.urlopen('{url}', timeout=5)"]


# ---- running the stack on this machine --------------------------------------------------------------------------


def postgres_bin() -> Path:
    """The directory of the PostgreSQL server binaries (Debian keeps them off PATH, in /usr/lib/postgresql/N/bin)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if versions:
        return versions[-1].parent
    raise ValueError(
        "PostgreSQL's server binaries (initdb, postgres) were not found: install them "
        "(apt-get install postgresql) or put their directory on PATH"
    )


def program(argv: list, bin_dir: Path) -> list:
    """A service's command as run here: the same Python for mlflow and modeldiff, the PostgreSQL binaries' dir."""
    head, rest = argv[0], list(argv[1:])
    if head == "mlflow":
        return [sys.executable, "-m", "mlflow", *rest]
    if head == "modeldiff":
        return [sys.executable, "-m", "modeldiff.cli", *rest]
    return [str(bin_dir / head), *rest]


def fernet_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def load_secrets(root: Path) -> dict:
    """DIR/secrets.env (KEY=value lines, mode 600), created with fresh secrets the first time."""
    path = Path(root) / "secrets.env"
    values = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip()
    fresh = {
        "POSTGRES_PASSWORD": secrets.token_urlsafe(24),
        "MODELDIFF_WEBHOOK_SECRET": secrets.token_hex(24),
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": fernet_key(),
    }
    if set(SECRETS) - set(values):
        values = {**fresh, **values}
        path.touch(mode=0o600)
        path.write_text(
            "# modeldiff stack secrets: keep this file; the Fernet key must stay fixed for the server\n"
            + "".join(f"{k}={values[k]}\n" for k in SECRETS)
        )
    return values


def _pg_user():
    """(uid, gid) to run PostgreSQL as: None when not root."""
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam(PG_USER)
    except KeyError:
        raise ValueError(
            f"PostgreSQL refuses to run as root and there is no '{PG_USER}' user to run it as: install "
            "Debian's postgresql package (it creates one) or start the stack as a regular user"
        ) from None
    return pw.pw_uid, pw.pw_gid


def _as(user) -> dict:
    return {} if user is None else {"user": user[0], "group": user[1], "extra_groups": []}


def _run(cmd: list, what: str, user=None, env=None, cwd=None):
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, **_as(user))
    if res.returncode != 0:
        raise ValueError(f"{what} failed (exit code {res.returncode}): {(res.stderr or res.stdout).strip()[-500:]}")
    return res.stdout


def _init_postgres(svc: Service, layout: Layout, bin_dir: Path, password: str, user):
    """initdb once: a cluster whose superuser is the stack's database user, password-only (scram) logins."""
    data = Path(layout.pgdata)
    if (data / "PG_VERSION").exists():
        return
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    pwfile = data.parent / ".pg_password"
    pwfile.touch(mode=0o600)
    pwfile.write_text(password + "\n")
    try:
        if user is not None:
            os.chown(data, *user)
            os.chown(pwfile, *user)
            probe = subprocess.run(["test", "-w", str(data)], **_as(user))
            if probe.returncode != 0:
                raise ValueError(
                    f"user '{PG_USER}' cannot reach {data}: a directory above it is closed to other "
                    "users; pass a --dir outside /root (e.g. /srv/modeldiff-stack) or start the stack "
                    "as a regular user"
                )
        _run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                svc.env["POSTGRES_USER"],
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
            ],
            "initdb",
            user,
            cwd=data,
        )
    finally:
        pwfile.unlink(missing_ok=True)


def _create_database(svc: Service, bin_dir: Path, password: str):
    env = {**os.environ, "PGPASSWORD": password}
    conn = ["-h", "127.0.0.1", "-p", str(svc.port), "-U", svc.env["POSTGRES_USER"]]
    db = svc.env["POSTGRES_DB"]
    found = _run(
        [str(bin_dir / "psql"), *conn, "-d", "postgres", "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{db}'"],
        "psql",
        env=env,
    )
    if found.strip() != "1":
        _run([str(bin_dir / "createdb"), *conn, db], "createdb", env=env)


def _healthy(svc: Service, bin_dir: Path, host: str = "127.0.0.1") -> bool:
    if svc.health is None:
        return True
    if isinstance(svc.health, list):
        return subprocess.run(program(svc.health, bin_dir), capture_output=True).returncode == 0
    try:
        with urllib.request.urlopen(f"http://{host}:{svc.port}{svc.health}", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (Linux), so a recycled pid is never taken for a service; None when
    it is gone (or a zombie)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in "ZX" else fields[19]


def _alive(proc: dict) -> bool:
    started = _start_time(proc["pid"])
    return started is not None and started == proc["started"]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:500] if lines else ""


def read_state(root: Path) -> dict | None:
    path = Path(root) / "stack.json"
    return json.loads(path.read_text()) if path.exists() else None


def _write_state(root: Path, state: dict):
    tmp = Path(root) / "stack.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(Path(root) / "stack.json")


def status(root: Path) -> dict:
    """stack.json plus whether each service's process is alive and healthy now."""
    state = read_state(root)
    if state is None:
        raise ValueError(f"no stack in {Path(root).resolve()}: start one with modeldiff stack up --dir {root}")
    settings = {k: v for k, v in state["settings"].items() if k != "screen_workers"}
    svcs = services(Ports(**state["ports"]), local_layout(root, state["listen"]), **settings)
    bin_dir = Path(state["postgres_bin"])
    state["running"] = {
        name: bool(p) and _alive(p) and _healthy(svcs[_service_of(name)], bin_dir, _reach(state["listen"]))
        for name, p in state["processes"].items()
    }
    return state


def _service_of(process: str) -> str:
    """worker-2 -> worker: the service a process of the stack runs."""
    return process.rsplit("-", 1)[0] if process.startswith("worker-") else process


def instances(screen_workers: int) -> list[str]:
    """The stack's processes in start order: one per service, `screen_workers` workers."""
    return [
        n
        for name in ORDER
        for n in ([name] if name != "worker" else [f"worker-{i + 1}" for i in range(screen_workers)])
    ]


def up(
    root: Path,
    port_base: int = DEFAULT_PORT_BASE,
    listen: str = "127.0.0.1",
    screen_config: str = "configs/toy.yaml",
    screen_overrides: str = "",
    workers: int = DEFAULT_WORKERS,
    allowed_hosts: tuple = (),
    timeout: float = 180.0,
    screen_workers: int = DEFAULT_SCREEN_WORKERS,
) -> dict:
    """Start PostgreSQL, mlflow server and the screening service in the background (each waits for the one before
    to be healthy); returns the state written to DIR/stack.json. Data in DIR is kept from any earlier `up`."""
    root = Path(root).resolve()
    state = read_state(root)
    if state and any(p and _alive(p) for p in state["processes"].values()):
        raise ValueError(
            f"the stack in {root} is already running (modeldiff stack status --dir {root}); stop it "
            f"first with modeldiff stack down --dir {root}"
        )
    ports = Ports.from_base(port_base)
    busy = [f"{n} {p}" for n, p in vars(ports).items() if not _port_free(p)]
    if busy:
        raise ValueError(
            f"port(s) in use: {', '.join(busy)}: pass another --port-base (the stack uses it and the next two)"
        )
    bin_dir = postgres_bin()
    user = _pg_user()
    root.mkdir(parents=True, exist_ok=True)
    if user is not None:
        root.chmod(root.stat().st_mode | 0o011)  # PostgreSQL's user must reach DIR/postgres (nothing more)
    (root / "logs").mkdir(exist_ok=True)
    values = load_secrets(root)
    layout = local_layout(root, listen)
    settings = {
        "screen_config": screen_config,
        "screen_overrides": screen_overrides,
        "workers": workers,
        "allowed_hosts": list(allowed_hosts),
    }
    if screen_workers < 1:
        raise ValueError(f"--screen-workers {screen_workers}: the queued screening jobs need at least one worker")
    svcs = services(ports, layout, **settings)
    settings["screen_workers"] = screen_workers
    _init_postgres(svcs["postgres"], layout, bin_dir, values["POSTGRES_PASSWORD"], user)
    for path in (layout.artifacts, layout.state, layout.cache):
        Path(path).mkdir(parents=True, exist_ok=True)
    host = _reach(listen)
    state = {
        "dir": str(root),
        "tracking_uri": f"http://{host}:{ports.mlflow}",
        "ui_url": f"http://{host}:{ports.mlflow}",
        "screening_url": f"http://{host}:{ports.screening}",
        "postgres_uri": f"postgresql://{DB_USER}@127.0.0.1:{ports.postgres}/{DB_NAME}",
        "ports": vars(ports),
        "listen": listen,
        "settings": settings,
        "postgres_bin": str(bin_dir),
        "processes": {name: None for name in instances(screen_workers)},
    }
    try:
        for name in instances(screen_workers):
            svc = svcs[_service_of(name)]
            env = {**os.environ, **svc.env, **{k: values[s] for k, s in svc.secret_env.items()}}
            if svc.argv[0] == "modeldiff":  # the stack's screening and workers run this very modeldiff
                env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
            with open(root / "logs" / f"{name}.log", "ab") as log:
                proc = subprocess.Popen(
                    program(svc.argv, bin_dir),
                    cwd=ROOT if svc.argv[0] == "modeldiff" else root,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    **_as(user if name == "postgres" else None),
                )
            state["processes"][name] = {"pid": proc.pid, "started": _start_time(proc.pid)}
            _write_state(root, state)
            deadline = time.monotonic() + timeout
            while not _healthy(svc, bin_dir, host):
                if proc.poll() is not None or time.monotonic() > deadline:
                    why = (
                        f"exited with code {proc.returncode}"
                        if proc.poll() is not None
                        else f"was not healthy after {timeout:.0f} s"
                    )
                    log = root / "logs" / f"{name}.log"
                    raise ValueError(f"{name} {why}: see {log} (last line: {_last_line(log)})")
                time.sleep(0.5)
            if name == "postgres":
                _create_database(svc, bin_dir, values["POSTGRES_PASSWORD"])
    except BaseException:
        down(root)
        raise
    return state


def _stop(proc: dict, name: str, grace: float) -> bool:
    """SIGINT to PostgreSQL (fast shutdown: its backends are its own business), SIGTERM to the others' process
    group (uvicorn workers, a screening job); SIGKILL after `grace` seconds. True when it had to kill."""
    pid = proc["pid"]
    try:
        if name == "postgres":
            os.kill(pid, signal.SIGINT)
        else:
            os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _alive(proc):
            return False
        try:  # our own child (an `up` that failed half-way): reap it
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def down(root: Path, grace: float = 30.0) -> list:
    """Stop the stack's processes, last started first; returns the names of those that were running."""
    root = Path(root).resolve()
    state = read_state(root)
    if state is None:
        raise ValueError(f"no stack in {root}: nothing to stop (start one with modeldiff stack up --dir {root})")
    stopped = []
    for name in reversed(list(state["processes"])):
        proc = state["processes"].get(name)
        if proc and _alive(proc):
            if _stop(proc, name, grace):
                print(f"modeldiff: {name} did not stop within {grace:.0f} s and was killed", file=sys.stderr)
            stopped.append(name)
        state["processes"][name] = None
        _write_state(root, state)
    return stopped
