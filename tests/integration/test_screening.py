"""Registry screening end to end: a real `mlflow server` (SQLite backend, proxied artifacts, loopback webhooks allowed
through MLflow's own settings) and the real screening service (`modeldiff screen serve`), both on 127.0.0.1.

A registered noise copy gets tagged `suspected_copy_of` its parent by way of MLflow's own webhook delivery; forged and
stale deliveries get 401 and start nothing; a replayed delivery starts nothing; killing the service in the middle of
a burst of registrations and starting it again leaves every version screened exactly once."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import mlflow
import pytest
from cryptography.fernet import Fernet
from mlflow.tracking import MlflowClient

from modeldiff.config import load_config
from modeldiff.models import load_model
from modeldiff.platform.model_registry import register_model
from modeldiff.platform.screening import (
    COUNTERPART_TAG,
    EXPERIMENT,
    RUN_ID_TAG,
    SCREENED_TAG,
    STATUS_TAG,
    VERDICT_TAG,
    signature,
)
from support import ROOT
from support.servers import SCREEN_OVERRIDES, free_port, get_json, get_json_ok, post, wait_for

pytestmark = pytest.mark.integration
SECRET = "test-secret-" + uuid.uuid4().hex
JOB_TIMEOUT = 600


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("screening")
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        "MLFLOW_WEBHOOK_CACHE_TTL": "1",
    }
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(
        [
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp / 'registry.db'}",
            "--serve-artifacts",
            "--artifacts-destination",
            str(tmp / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is None and get_json_ok(f"{uri}/health"), 120, "mlflow server to start")
        client_env = {
            "MLFLOW_TRACKING_URI": uri,
            "MODELDIFF_CACHE": str(tmp / "cache"),
            "OMP_NUM_THREADS": "1",
            "TQDM_DISABLE": "1",
            "MODELDIFF_WEBHOOK_SECRET": SECRET,
        }
        with pytest.MonkeyPatch.context() as mp:
            for k, v in client_env.items():
                mp.setenv(k, v)
            mlflow.set_tracking_uri(uri)
            yield {"uri": uri, "tmp": tmp, "env": {**os.environ, **client_env}}
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


class Service:
    """`modeldiff screen serve` in a child process, restartable on the same port and state directory."""

    def __init__(self, server):
        self.server, self.port = server, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.starts = 0

    def start(self):
        self.starts += 1
        log = open(self.server["tmp"] / f"service-{self.starts}.log", "w")
        cmd = [
            sys.executable,
            "-m",
            "modeldiff.cli",
            "screen",
            "serve",
            "--port",
            str(self.port),
            "--config",
            "configs/toy.yaml",
            "--overrides",
            SCREEN_OVERRIDES,
            "--state-dir",
            str(self.server["tmp"] / "state"),
            "--register-webhook",
            f"{self.url}/webhook",
            "--job-timeout",
            str(JOB_TIMEOUT),
        ]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.server["env"], stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.proc.poll() is None and self.health(), 120, "the screening service to start")

    def health(self) -> dict | None:
        return get_json(f"{self.url}/health")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(60)


@pytest.fixture(scope="module")
def service(server):
    svc = Service(server)
    svc.start()
    yield svc
    svc.stop()


def cfg():
    return load_config("toy", SCREEN_OVERRIDES)


def tags(name: str, version="1") -> dict:
    return MlflowClient().get_model_version(name, str(version)).tags


def screened(name: str, version="1", timeout=JOB_TIMEOUT) -> dict:
    return wait_for(
        lambda: (t := tags(name, version)).get(STATUS_TAG) in ("done", "failed") and t,
        timeout,
        f"models:/{name}/{version} to be screened",
    )


def check_runs(name: str, version="1") -> list:
    exp = MlflowClient().get_experiment_by_name(EXPERIMENT)
    return MlflowClient().search_runs([exp.experiment_id], f"tags.`{SCREENED_TAG}` = '{name}/{version}'")


def delivery(name: str, version: str, delivery_id: str, timestamp: int | None = None, secret: str = SECRET):
    body = json.dumps(
        {
            "entity": "model_version",
            "action": "created",
            "timestamp": "now",
            "data": {"name": name, "version": version, "tags": {}},
        }
    ).encode()
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return body, {
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": ts,
        "X-MLflow-Signature": signature(secret, delivery_id, ts, body),
    }


@pytest.fixture(scope="module")
def lineage(server, service):
    """A parent and its noise copy, registered one after the other; each screened through MLflow's webhook."""
    register_model("toy:small", "parent", cfg())
    register_model("noise:1e-2:relative:toy:small", "suspect", cfg())
    return screened("parent"), screened("suspect")


def test_noise_copy_is_tagged_suspected_copy_of_its_parent(lineage, service):
    parent, suspect = lineage
    assert parent[STATUS_TAG] == "done" and parent[VERDICT_TAG] == "independent" and parent[COUNTERPART_TAG] == ""
    assert suspect[STATUS_TAG] == "done", suspect
    assert suspect[VERDICT_TAG] == "suspected_copy_of" and suspect[COUNTERPART_TAG] == "models:/parent/1"
    stat = json.loads(suspect["modeldiff.lineage.statistic"])
    assert stat["weight_p"] < 1e-6 and stat["noise_p"] > 1e-3  # related weights, and an i.i.d. difference
    run = MlflowClient().get_run(suspect[RUN_ID_TAG])
    assert run.info.status == "FINISHED" and run.data.tags["modeldiff.entry_point"] == "plagiarism_check"
    body = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/plagiarism.json")
    assert body["verdict"] == "suspected_copy_of" and body["counterparts"] == ["models:/parent/1"]
    pair = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/pairs/parent_1.json")
    assert pair["copy_model"] == "models:/suspect/1" and pair["parent_model"] == "models:/parent/1"
    assert {"black_box", "white_box", "thresholds", "ratio"} <= set(pair)
    # both deliveries came from MLflow itself and each started exactly one job
    health = wait_for(lambda: (h := service.health())["jobs_done"] >= 2 and h, 60, "the service to count both jobs")
    assert health["deliveries_accepted"] == 2 and health["jobs_started"] == 2 and health["deliveries_rejected"] == 0
    assert [r.info.status for r in check_runs("suspect")] == ["FINISHED"]


def test_forged_or_stale_delivery_gets_401_and_starts_no_job(lineage, service):
    before = service.health()
    body, headers = delivery("parent", "1", "forged-" + uuid.uuid4().hex, secret="not-the-secret")
    assert post(f"{service.url}/webhook", body, headers) == 401
    body, headers = delivery("parent", "1", "stale-" + uuid.uuid4().hex, timestamp=int(time.time()) - 3600)
    assert post(f"{service.url}/webhook", body, headers) == 401
    body, headers = delivery("parent", "1", "unsigned-" + uuid.uuid4().hex)
    assert post(f"{service.url}/webhook", body, {k: v for k, v in headers.items() if "Signature" not in k}) == 401
    after = service.health()
    assert after["deliveries_rejected"] == before["deliveries_rejected"] + 3
    assert (after["jobs_queued"], after["jobs_started"]) == (before["jobs_queued"], before["jobs_started"])
    assert tags("parent")[STATUS_TAG] == "done" and len(check_runs("parent")) == 1


def test_replayed_delivery_starts_no_job(lineage, service):
    client = MlflowClient()
    for key in (STATUS_TAG, VERDICT_TAG):  # make parent/1 unscreened again, so an authentic delivery starts a job
        client.delete_model_version_tag("parent", "1", key)
    before = service.health()
    body, headers = delivery("parent", "1", "replayed-" + uuid.uuid4().hex)
    assert post(f"{service.url}/webhook", body, headers) == 202
    wait_for(lambda: service.health()["jobs_done"] == before["jobs_done"] + 1, JOB_TIMEOUT, "the job to finish")
    assert post(f"{service.url}/webhook", body, headers) == 200  # the very same delivery again
    after = service.health()
    assert (
        after["jobs_started"] == before["jobs_started"] + 1
        and after["deliveries_duplicate"] == before["deliveries_duplicate"] + 1
    )
    assert tags("parent")[VERDICT_TAG] == "independent"
    assert sorted(r.info.status for r in check_runs("parent")) == ["FINISHED", "FINISHED"]  # the first, and this one


@pytest.mark.slow
def test_killed_service_screens_every_version_of_a_burst_exactly_once(server, service, lineage):
    config = cfg()
    refs = {
        "burst-seed": "toy:small:seed=1",
        "burst-copy": "noise:1e-3:relative:toy:small:seed=1",
        "burst-large": "toy:large",
    }
    for ref in refs.values():  # train (and cache) first, so the registrations come in a burst
        load_model(ref, config)
    for name, ref in refs.items():
        register_model(ref, name, config)
    # kill the service while a job of the burst is inside its plagiarism_check run (the child job dies with it)
    wait_for(
        lambda: any(r.info.status == "RUNNING" for n in refs for r in check_runs(n)), 180, "a burst job's run to start"
    )
    service.kill()
    time.sleep(2)  # deliveries sent now are lost for good (nothing listens): the restart must find them
    service.start()
    results = {name: screened(name) for name in refs}
    for name, t in results.items():
        assert t[STATUS_TAG] == "done", (name, t)
        runs = check_runs(name)
        assert [r.info.status for r in runs].count("FINISHED") == 1, (name, [r.info.status for r in runs])
        assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}
        assert MlflowClient().get_run(t[RUN_ID_TAG]).info.status == "FINISHED"
    killed = [r for n in refs for r in check_runs(n) if r.info.status == "KILLED"]
    assert len(killed) == 1  # the interrupted job, marked KILLED at the restart, with its child runs
    exp = MlflowClient().get_experiment_by_name(EXPERIMENT).experiment_id
    assert not MlflowClient().search_runs([exp], "attributes.status = 'RUNNING'")
    assert results["burst-copy"][VERDICT_TAG] == "suspected_copy_of"
    assert results["burst-copy"][COUNTERPART_TAG] == "models:/burst-seed/1"
    assert results["burst-seed"][VERDICT_TAG] != "suspected_copy_of"  # an independent seed is no copy
    assert results["burst-large"][VERDICT_TAG] != "suspected_copy_of"
