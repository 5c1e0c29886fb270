"""The team stack's files (modeldiff/ops/stack.py, docker/): without a Docker engine here, docker/compose.yaml,
docker/Dockerfile and docker/project/MLproject are checked by parsing them: the compose services must run exactly the
commands, ports, environment, health checks and volumes that `modeldiff stack up` runs (modulo host names and paths),
and every version must be pinned and allowed by pyproject.toml; secrets are made once; bad input is one line."""

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from modeldiff import cli
from modeldiff.ops import stack
from support import ROOT

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11


DOCKER = ROOT / "docker"


PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


COMPOSE = yaml.safe_load((DOCKER / "compose.yaml").read_text())


SECRET = re.compile(r"\$\{(\w+):\?[^}]*\}")


VARIABLE = re.compile(r"\$\{(\w+)(?::([-+?])([^}]*))?\}")


def interpolate(value, env: dict):
    """Compose's variable substitution with `env` as the environment: ${V:-default}, ${V:+alt}, and ${V:?error}
    (a required secret: stands as <V> when unset)."""
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if not isinstance(value, str):
        return str(value)

    def sub(m):
        name, op, arg = m.groups()
        got = env.get(name, "")
        if op == "?":
            return got or f"<{name}>"
        if op == "+":
            return arg if got else ""
        return got or arg or ""

    return VARIABLE.sub(sub, value)


def compose_service(name: str, env: dict | None = None) -> dict:
    return interpolate(COMPOSE["services"][name], env or {})


def container_ports(svc: dict) -> set:
    return {int(str(p).rsplit(":", 1)[-1]) for p in svc.get("ports", []) + svc.get("expose", [])}


def test_compose_runs_the_stacks_services():
    want = stack.services(stack.Ports.from_base(), stack.COMPOSE_LAYOUT)
    assert list(COMPOSE["services"]) == list(stack.ORDER) == list(want)
    for i, (name, svc) in enumerate(want.items()):
        got = compose_service(name)
        assert got["command"] == svc.argv, name
        assert container_ports(got) == {svc.port} - {None}, name
        assert got["environment"] == {**svc.env, **{k: f"<{s}>" for k, s in svc.secret_env.items()}}, name
        assert got.get("healthcheck", {}).get("test") == stack.compose_healthcheck(svc), name
        targets = [v.split(":", 1)[1] for v in got["volumes"]]
        for path in svc.data:  # every directory the service keeps state in is on a named volume
            assert any(path == t or path.startswith(t + "/") for t in targets), (name, path)
        assert all(v.split(":", 1)[0] in COMPOSE["volumes"] for v in got["volumes"]), name
        before = stack.ORDER[i - 1] if i else None
        assert got.get("depends_on", {}) == ({before: {"condition": "service_healthy"}} if before else {}), name
    # optional settings reach the same places as `modeldiff stack up`'s options
    settings = {
        "MODELDIFF_SCREEN_CONFIG": "smollm2",
        "MODELDIFF_SCREEN_OVERRIDES": "seed=1",
        "MLFLOW_EXTRA_ALLOWED_HOSTS": "mlflow.lab:5000,10.1.2.3:5000",
    }
    custom = stack.services(
        stack.Ports.from_base(),
        stack.COMPOSE_LAYOUT,
        screen_config="smollm2",
        screen_overrides="seed=1",
        allowed_hosts=("mlflow.lab:5000", "10.1.2.3:5000"),
    )
    assert compose_service("screening", settings)["command"] == custom["screening"].argv
    assert compose_service("worker", settings)["command"] == custom["worker"].argv
    assert (
        compose_service("mlflow", settings)["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"]
        == custom["mlflow"].env["MLFLOW_SERVER_ALLOWED_HOSTS"]
    )
    # without Docker, the same commands bind loopback and keep every byte under the stack's directory
    local = stack.services(stack.Ports.from_base(7000), stack.local_layout(Path("/srv/st")))
    assert all(p.startswith("/srv/st/") for s in local.values() for p in s.data)
    assert [s.port for s in local.values()] == [7002, 7000, 7001, None]
    # the service queues, the workers run: both on the stack's database, the password from the environment only
    queue = "postgresql://mlflow@127.0.0.1:7002/mlflow"
    assert local["screening"].argv[-2:] == ["--queue", queue] and local["worker"].argv[-2:] == ["--queue", queue]
    assert local["worker"].argv[:3] == ["modeldiff", "screen", "worker"]
    assert local["worker"].secret_env == {"PGPASSWORD": "POSTGRES_PASSWORD"}
    assert compose_service("worker", {"MODELDIFF_SCREEN_WORKERS": "5"})["deploy"]["replicas"] in (5, "5")
    assert stack.instances(3) == ["postgres", "mlflow", "screening", "worker-1", "worker-2", "worker-3"]
    assert "listen_addresses=127.0.0.1" in local["postgres"].argv and "127.0.0.1" in local["mlflow"].argv
    assert local["screening"].env["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:7000"
    assert stack.program(local["mlflow"].argv, Path("/pg"))[:3] == [sys.executable, "-m", "mlflow"]
    assert stack.program(local["postgres"].argv, Path("/pg"))[0] == "/pg/postgres"


def test_env_example_names_every_setting_and_holds_no_secret():
    example = dict(
        line.split("=", 1)
        for line in (DOCKER / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    text = (DOCKER / "compose.yaml").read_text()
    assert {m.group(1) for m in VARIABLE.finditer(text)} == set(example)
    assert {m.group(1) for m in SECRET.finditer(text)} == set(stack.SECRETS)
    assert all(example[k] == "" for k in stack.SECRETS)  # empty: compose stops and names the missing one
    assert "docker/.env" in (ROOT / ".gitignore").read_text().split()


def _pins() -> dict:
    lines = [line.split("#")[0].strip() for line in (DOCKER / "constraints.txt").read_text().splitlines()]
    reqs = [Requirement(line) for line in lines if line]
    assert all(len(r.specifier) == 1 and next(iter(r.specifier)).operator == "==" for r in reqs), "pin with =="
    return {r.name: Version(next(iter(r.specifier)).version) for r in reqs}


def test_images_and_python_packages_are_pinned_within_pyproject():
    pins = _pins()
    deps = [
        Requirement(d)
        for d in PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["server"]
    ]
    assert set(pins) == {d.name for d in deps}
    for d in deps:
        assert d.specifier.contains(pins[d.name]), f"{d.name}=={pins[d.name]} is outside pyproject's {d}"
    bases = re.findall(r"^FROM\s+(\S+)", (DOCKER / "Dockerfile").read_text(), re.M)
    assert len(bases) == 2 and all(re.search(r":\d+\.\d+\.\d+-", b) for b in bases), bases  # full versions, no latest
    assert bases[1].startswith("nvidia/cuda:") and "runtime" in bases[1]
    images = {name: svc["image"] for name, svc in COMPOSE["services"].items()}
    assert images["mlflow"] == f"modeldiff-mlflow:{pins['mlflow']}"
    assert images["screening"] == f"modeldiff:{PYPROJECT['project']['version']}"
    assert COMPOSE["services"]["mlflow"]["build"]["target"] == "server"
    assert COMPOSE["services"]["screening"]["build"]["target"] == "modeldiff"
    assert re.fullmatch(r"postgres:\d+\.\d+-bookworm", images["postgres"])
    try:  # the compose PostgreSQL is the major version the stack's tests run on here
        out = subprocess.run(
            [str(stack.postgres_bin() / "postgres"), "--version"], capture_output=True, text=True
        ).stdout
    except ValueError:
        return
    assert images["postgres"].split(":")[1].split(".")[0] == re.search(r"(\d+)\.\d+", out).group(1)


def test_docker_mlproject_has_the_entry_points_of_the_root_one():
    from mlflow.projects import _project_spec

    root = yaml.safe_load((ROOT / "MLproject").read_text())
    docker = yaml.safe_load((DOCKER / "project" / "MLproject").read_text())
    assert "conda_env" in root and "docker_env" not in root  # `mlflow run . --env-manager local` stays as it was
    assert docker["docker_env"]["image"] == COMPOSE["services"]["screening"]["image"]
    assert "modeldiff-cache:/cache" in docker["docker_env"]["volumes"]
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "VOLUME /cache" in dockerfile and "WORKDIR /opt/modeldiff\n" in dockerfile
    moved = root["entry_points"]["main"]["parameters"]["accelerate_config"]["default"]
    assert docker["entry_points"]["main"]["parameters"]["accelerate_config"]["default"] == "/opt/modeldiff/" + moved
    docker["entry_points"]["main"]["parameters"]["accelerate_config"]["default"] = moved
    assert docker["entry_points"] == root["entry_points"], (
        "docker/project/MLproject has drifted from MLproject: copy MLproject's entry_points block into it, with "
        "accelerate_config's default under /opt/modeldiff/"
    )
    project = _project_spec.load_project(str(DOCKER / "project"))  # MLflow's own reading of it
    assert project.env_type == "docker_env" and project.docker_env["image"] == docker["docker_env"]["image"]


def test_secrets_are_made_once_and_kept(tmp_path):
    from cryptography.fernet import Fernet

    first = stack.load_secrets(tmp_path)
    assert set(first) == set(stack.SECRETS) and (tmp_path / "secrets.env").stat().st_mode & 0o777 == 0o600
    Fernet(first["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"])  # a valid key, or this raises
    assert stack.load_secrets(tmp_path) == first
    assert len({first[k] for k in stack.SECRETS}) == 3 and min(len(v) for v in first.values()) >= 32


def test_bad_input_is_one_line_and_exits_2(tmp_path, capsys):
    def fails(argv, match):
        assert cli.main(["stack", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("modeldiff: error: ") and "\n" not in err and match in err, err

    fails(["down", "--dir", str(tmp_path)], "no stack in")
    fails(["status", "--dir", str(tmp_path)], "no stack in")
    fails(["up", "--dir", str(tmp_path), "--port-base", "80"], "--port-base 80 is out of range")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        if port > 65533:
            pytest.skip("the kernel gave a port too high to be a base")
        fails(["up", "--dir", str(tmp_path), "--port-base", str(port)], f"mlflow {port}")
    assert not (tmp_path / "stack.json").exists()
