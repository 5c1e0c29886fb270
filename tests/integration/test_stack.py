"""The team stack for real: `modeldiff stack up` starts PostgreSQL (Debian's binaries), `mlflow server` on it and
the screening service on 127.0.0.1; two `main` chains run against it at once and lose nothing; a registered noise
copy gets tagged by the stack's screening service; `down` stops every process and `up` again finds the runs,
artifacts and registry tags where they were."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from modeldiff.config import load_config
from modeldiff.models import load_model
from modeldiff.ops import stack
from modeldiff.platform.model_registry import register_model
from modeldiff.platform.screening import (
    COUNTERPART_TAG,
    EXPERIMENT,
    SCREENED_TAG,
    STATUS_TAG,
    VERDICT_TAG,
    WEBHOOK_NAME,
)
from support import ROOT, artifacts, missing_system_part, ratio_of
from support.browser import start_browser
from support.chains import ARTIFACTS
from support.mlflow_ui import check_main_run_in_ui
from support.servers import SCREEN_OVERRIDES as OVERRIDES
from support.servers import get_json, wait_for


def _three_free_ports() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base <= 65533 and all(stack._port_free(base + i) for i in range(3)):
            return base
    raise AssertionError("no three consecutive free ports")


def _cli(*argv, env, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "modeldiff.cli", "stack", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """`modeldiff stack up` in a fresh directory on free ports; `down` at the end."""
    import importlib.util

    if importlib.util.find_spec("psycopg2") is None:
        missing_system_part("the stack's mlflow server needs psycopg2 (pip install -e '.[server]')")
    try:
        stack.postgres_bin()
    except ValueError as e:
        missing_system_part(str(e))
    # as root, PostgreSQL runs as an unprivileged user, who must be able to reach the directory
    base = Path(tempfile.mkdtemp(prefix="modeldiff-stack-"))
    base.chmod(0o711)
    root, port = base / "stack", _three_free_ports()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
        "TQDM_DISABLE": "1",
    }
    up = ["up", "--dir", str(root), "--port-base", str(port), "--screen-overrides", OVERRIDES]
    res = _cli(*up, env=env)
    try:
        assert res.returncode == 0, res.stderr[-3000:]
        state = json.loads((root / "stack.json").read_text())
        client_env = {"MLFLOW_TRACKING_URI": state["tracking_uri"], "MODELDIFF_CACHE": str(root / "cache")}
        with pytest.MonkeyPatch.context() as mp:
            for k, v in client_env.items():
                mp.setenv(k, v)
            mlflow.set_tracking_uri(state["tracking_uri"])
            yield {"root": root, "state": state, "up": up, "env": {**env, **client_env}}
    finally:
        _cli("down", "--dir", str(root), env=env)
        shutil.rmtree(base, ignore_errors=True)


def expected_metrics(entry_point: str, cfg) -> dict:
    """{metric: number of logged points} of a run of `entry_point` with config `cfg`."""
    terms = ["PD_AB", "PA_AB", "PA_BA", "PD_BA"]
    ratio = [
        *terms,
        *(f"ratio_{t}" for t in terms),
        *(f"{t}_count" for t in terms),
        "n_A",
        "n_A_in_B",
        "n_B",
        "n_B_in_A",
        "D_A_min",
        "D_A_max",
        "D_B_min",
        "D_B_max",
        *(f"{e}_{side}" for e in ("ess_inputs", "ess_units", "n_units") for side in "AB"),
        *(f"{q}_{end}" for q in (*terms, *(f"ratio_{t}" for t in terms)) for end in ("lo", "hi", "std")),
    ]
    k = int(cfg.sampler.n_temperatures)
    return {
        "sample_outdist": {
            **dict.fromkeys(
                [
                    "n_records",
                    "n_in_z",
                    "n_distinct_in_z",
                    "n_empty_bins_in_z",
                    "sampling_seconds",
                    "acceptance_mean",
                    "swap_acceptance_min",
                    "wham_iterations",
                    "round_trips_min",
                    "round_trips_mean",
                    "rhat_max_in_z",
                    "ess_min_in_z",
                ],
                1,
            ),
            "acceptance": k,
            "temperature": k,
            "swap_acceptance": k - 1,
        },
        "cross_eval": dict.fromkeys(
            [
                "n_draws",
                "n_in_z_other",
                "n_distinct",
                "D_min",
                "D_max",
                "D_mean",
                "frac_D_negative_in_z",
                "ess_inputs",
                "ess_units",
                "n_units",
            ],
            1,
        ),
        "normalize": dict.fromkeys(ratio, 1),
        "main": dict.fromkeys(ratio, 1),
    }[entry_point]


PAIRS = [("toy:small", "toy:large"), ("toy:small:seed=1", "toy:large:seed=1")]  # no step in common: nothing reused


@pytest.fixture(scope="module")
def chains(live):
    """Two `mlflow run . -e main` at once against the stack, on two model pairs: {pair: parent run id}."""
    experiment = "stack-chains"
    experiment_id = MlflowClient().create_experiment(experiment)  # once: two runs creating it at once would race
    procs = {}
    for a, b in PAIRS:
        cmd = [
            "mlflow",
            "run",
            str(ROOT),
            "-e",
            "main",
            "--env-manager",
            "local",
            "--experiment-name",
            experiment,
            "-P",
            f"model_a={a}",
            "-P",
            f"model_b={b}",
            "-P",
            f"overrides={OVERRIDES}",
        ]
        log = open(live["root"] / f"chain-{a}.log", "w")
        procs[(a, b)] = (subprocess.Popen(cmd, cwd=ROOT, env=live["env"], stdout=log, stderr=subprocess.STDOUT), log)
    for (a, _), (proc, log) in procs.items():
        rc = proc.wait(900)
        log.close()
        assert rc == 0, (live["root"] / f"chain-{a}.log").read_text()[-3000:]
    parents = MlflowClient().search_runs([experiment_id], "tags.`modeldiff.entry_point` = 'main'")
    assert len(parents) == 2
    return {(p.data.tags["modeldiff.model_a"], p.data.tags["modeldiff.model_b"]): p.info.run_id for p in parents}


@pytest.mark.integration
def test_two_chains_at_once_finish_with_every_run_artifact_and_metric(live, chains):
    client, cfg = MlflowClient(), load_config("toy", OVERRIDES)
    assert set(chains) == set(PAIRS)
    for (a, b), parent_id in chains.items():
        parent = client.get_run(parent_id)
        assert parent.info.status == "FINISHED" and parent.info.artifact_uri.startswith("mlflow-artifacts:")
        children = {
            k.removeprefix("modeldiff.run."): v for k, v in parent.data.tags.items() if k.startswith("modeldiff.run.")
        }
        assert set(children) == {"sample_outdist_A", "sample_outdist_B", "cross_eval_AB", "cross_eval_BA", "normalize"}
        for name, run_id in children.items():
            run = client.get_run(run_id)
            entry_point = name.rsplit("_", 1)[0] if name != "normalize" else name
            assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent_id, (a, name)
            assert set(ARTIFACTS[entry_point]) <= set(artifacts(run_id)), (a, name)
            want = expected_metrics(entry_point, cfg)
            assert set(run.data.metrics) == set(want), (a, name)
            for key, n in want.items():
                history = client.get_metric_history(run_id, key)
                assert sorted(m.step for m in history) == list(range(n)), (a, name, key)
        models = {"sample_outdist_A": a, "sample_outdist_B": b}
        for name, ref in models.items():
            run = client.get_run(children[name])
            assert run.data.tags["modeldiff.model"] == ref
            s = cfg.sampler
            assert run.data.metrics["n_records"] == (s.steps - s.burn_in) // s.thin * s.n_temperatures * s.ladders
        for name in ("cross_eval_AB", "cross_eval_BA"):
            assert client.get_run(children[name]).data.metrics["n_draws"] == cfg.cross_eval.n_draws
        ratio = ratio_of(children["normalize"])
        assert (
            ratio_of(parent_id) == ratio and ratio["counts"]["n_A"] == ratio["counts"]["n_B"] == cfg.cross_eval.n_draws
        )
        for run_id in (children["normalize"], parent_id):
            metrics = client.get_run(run_id).data.metrics
            assert {k: metrics[k] for k in ratio["terms"]} == ratio["terms"]
            assert {k: metrics[k] for k in ratio["counts"]} == ratio["counts"]
        assert (parent.data.tags["modeldiff.model_a"], parent.data.tags["modeldiff.model_b"]) == (a, b)


@pytest.mark.integration
def test_the_ui_shows_the_runs_table_the_ratio_in_words_the_plot_and_the_token_view(live, chains, tmp_path_factory):
    """What a user sees after `main`: the link it prints opens the experiment's runs table (MLflow 3's training view)
    in headless Chromium; the rest is in modeldiff's tests/support/mlflow_ui.py. Screenshots: $MODELDIFF_TEST_OUTPUT
    (else a temporary directory, printed)."""
    (a, _), parent = PAIRS[0], chains[PAIRS[0]]
    printed = (live["root"] / f"chain-{a}.log").read_text()
    experiment_url = re.search(r"modeldiff: open (http://\S+) \(the experiment's runs table\)", printed).group(1)
    assert f"modeldiff: this run: {experiment_url.split('?')[0]}/runs/{parent}" in printed
    out = Path(os.environ.get("MODELDIFF_TEST_OUTPUT") or tmp_path_factory.mktemp("mlflow-ui"))
    out.mkdir(parents=True, exist_ok=True)
    browser = start_browser(tmp_path_factory.mktemp("chromium-profile"))
    try:
        shots = check_main_run_in_ui(browser, experiment_url, list(chains.values()), out)
    finally:
        browser.close()
    print(f"screenshots: {', '.join(str(p) for p in shots.values())}")
    assert all(p.stat().st_size > 10_000 for p in shots.values())


@pytest.fixture(scope="module")
def lineage(live):
    """A parent and its noise copy registered with the stack; each screened by the stack's own service."""
    for ref, name in (("toy:small", "parent"), ("noise:1e-2:relative:toy:small", "suspect")):
        res = subprocess.run(
            [sys.executable, "-m", "modeldiff.cli", "register", ref, "--name", name, "--overrides", OVERRIDES],
            cwd=ROOT,
            env=live["env"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert res.returncode == 0 and f"models:/{name}/1" in res.stdout, res.stderr[-2000:]

    def screened(name):
        tags = MlflowClient().get_model_version(name, "1").tags
        return tags.get(STATUS_TAG) in ("done", "failed") and tags

    return {
        name: wait_for(lambda n=name: screened(n), 900, f"models:/{name}/1 to be screened")
        for name in ("parent", "suspect")
    }


@pytest.mark.integration
def test_registered_noise_copy_is_tagged_by_the_stacks_screening(live, lineage):
    assert lineage["parent"][STATUS_TAG] == "done" and lineage["parent"][VERDICT_TAG] == "independent"
    assert lineage["suspect"][STATUS_TAG] == "done", lineage["suspect"]
    assert lineage["suspect"][VERDICT_TAG] == "suspected_copy_of"
    assert lineage["suspect"][COUNTERPART_TAG] == "models:/parent/1"
    hooks = [w for w in MlflowClient().list_webhooks() if w.name == WEBHOOK_NAME]
    assert [w.url for w in hooks] == [f"{live['state']['screening_url']}/webhook"]
    # both deliveries came from MLflow, signed; the service queued one job each for the workers, which ran them
    health = get_json(f"{live['state']['screening_url']}/health")
    assert health["deliveries_accepted"] == 2 and health["deliveries_rejected"] == 0 and health["jobs_queued"] == 2
    # a job's tags are written just before it returns and procrastinate records it succeeded
    jobs = wait_for(lambda: (j := _queue_jobs(live)) and "doing" not in j and "todo" not in j and j, 30, "jobs to end")
    assert jobs == {"succeeded": 2}


def _queue_rows(live, sql: str) -> list[tuple]:
    """Rows of a query on the stack's PostgreSQL (procrastinate's tables live there)."""
    import psycopg

    password = stack.load_secrets(live["root"])["POSTGRES_PASSWORD"]
    with psycopg.connect(live["state"]["postgres_uri"], password=password) as conn:
        return conn.execute(sql).fetchall()


def _queue_jobs(live) -> dict:
    """The screening jobs in procrastinate's table, counted by status."""
    rows = _queue_rows(
        live,
        "SELECT status, count(*) FROM procrastinate_jobs WHERE task_name = 'modeldiff:screen_version' GROUP BY status",
    )
    return {status: n for status, n in rows}


def _starts_per_job(live) -> list[int]:
    """How many times each screening job was started (procrastinate's events), sorted."""
    rows = _queue_rows(
        live,
        "SELECT count(e.id) FROM procrastinate_jobs j LEFT JOIN procrastinate_events e "
        "ON e.job_id = j.id AND e.type = 'started' WHERE j.task_name = 'modeldiff:screen_version' GROUP BY j.id",
    )
    return sorted(n for (n,) in rows)


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of a process's children (Linux /proc)."""
    out = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out.append((int(proc.name), (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
        except (OSError, IndexError, ValueError):
            continue
    return out


@pytest.mark.integration
def test_a_burst_is_screened_exactly_once_when_a_worker_is_killed_mid_job(live, lineage):
    """Two workers on the queue, a burst of three registrations, one worker SIGKILLed while it runs a job: the other
    worker takes the dead one's job up (its heartbeat stopped), every version ends with one finished check run (an
    interrupted one, if it had started, KILLED), and no job is left waiting or running."""
    client, cfg = MlflowClient(), load_config("toy", OVERRIDES)
    refs = {
        "burst-seed": "toy:small:seed=1",
        "burst-copy": "noise:1e-3:relative:toy:small:seed=1",
        "burst-large": "toy:large",
    }
    for ref in refs.values():  # train (and cache) first, so the registrations come in a burst
        load_model(ref, cfg)
    for name, ref in refs.items():
        register_model(ref, name, cfg)
    workers = {n: p["pid"] for n, p in live["state"]["processes"].items() if n.startswith("worker-")}
    assert len(workers) == 2

    def busy():
        for name, pid in workers.items():
            if any("entrypoints.plagiarism_check" in cmd for _, cmd in _children(pid)):
                return name
        return None

    victim = wait_for(busy, 300, "a worker to run a screening job")
    os.kill(workers[victim], signal.SIGKILL)  # its job's process dies with it (PR_SET_PDEATHSIG)

    def screened(name):
        tags = client.get_model_version(name, "1").tags
        return tags.get(STATUS_TAG) in ("done", "failed") and tags

    results = {name: wait_for(lambda n=name: screened(n), 600, f"models:/{name}/1 to be screened") for name in refs}
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    killed = 0
    for name, tags in results.items():
        assert tags[STATUS_TAG] == "done", (name, tags)
        runs = client.search_runs([exp], f"tags.`{SCREENED_TAG}` = '{name}/1'")
        statuses = [r.info.status for r in runs]
        assert statuses.count("FINISHED") == 1 and set(statuses) <= {"FINISHED", "KILLED"}, (name, statuses)
        killed += statuses.count("KILLED")
    # the dead worker's job ran again, on the other worker: one job started twice. Its first check run is KILLED
    # when the worker was killed after that run was created (not when it died while the check started up)
    assert killed <= 1
    assert _starts_per_job(live) == [1, 1, 1, 1, 2]
    assert not client.search_runs([exp], "attributes.status = 'RUNNING'")
    assert results["burst-copy"][VERDICT_TAG] == "suspected_copy_of"
    assert results["burst-copy"][COUNTERPART_TAG] == "models:/burst-seed/1"
    # every job ran to its end once; none waits or runs (the periodic stall check is not a screening job)
    jobs = wait_for(lambda: (j := _queue_jobs(live)) and "doing" not in j and "todo" not in j and j, 30, "jobs to end")
    assert jobs == {"succeeded": 5}


@pytest.mark.integration
def test_down_stops_every_process_and_up_again_keeps_the_data(live, chains, lineage):
    before = json.loads((live["root"] / "stack.json").read_text())
    res = _cli("down", "--dir", str(live["root"]), env=live["env"])
    assert res.returncode == 0 and "screening, mlflow, postgres" in res.stdout, res.stderr
    for name, proc in before["processes"].items():
        assert not stack._alive(proc), name
    assert all(stack._port_free(p) for p in before["ports"].values())
    assert all(p is None for p in json.loads((live["root"] / "stack.json").read_text())["processes"].values())

    res = _cli(*live["up"], env=live["env"])  # the same directory: same database, artifacts and secrets
    assert res.returncode == 0, res.stderr[-3000:]
    status = json.loads(_cli("status", "--dir", str(live["root"]), env=live["env"]).stdout)
    assert status["running"] == {
        "postgres": True,
        "mlflow": True,
        "screening": True,
        "worker-1": True,
        "worker-2": True,
    }
    client = MlflowClient()
    for parent_id in chains.values():
        assert client.get_run(parent_id).info.status == "FINISHED"
        assert set(ratio_of(parent_id)) == {"lambda", "terms", "ratio", "counts", "D_range", "ci", "std"}
    assert client.get_model_version("suspect", "1").tags == lineage["suspect"]
    assert len([w for w in client.list_webhooks() if w.name == WEBHOOK_NAME]) == 1  # updated, not duplicated
