"""Registry screening end to end: a real `mlflow server` (SQLite backend, proxied artifacts, loopback webhooks allowed
through MLflow's own settings) and the real screening service (`modeldiff screen serve`), both on 127.0.0.1.

A registered noise copy gets tagged `suspected_copy_of` its parent by way of MLflow's own webhook delivery; forged and
stale deliveries get 401 and start nothing; a replayed delivery starts nothing; killing the service in the middle of
a burst of registrations and starting it again leaves every version screened exactly once.

Hostile and faulty input (every request loop bounded in count and time): bad Content-Length answered before any body
is read (the service's memory does not grow), stalled clients neither starve a delivery nor stay, a burst of signed
deliveries is one job with no connection reset, non-object JSON gets 400 and its delivery id back, a version that
does not exist gets a 4xx, a by-reference version outside the allow-list fails with a one-line tag and nothing
opened, an unloadable counterpart is skipped and reported, one service per registry, and `screen poll` stops at
SIGTERM while the registry is down."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import pytest
from cryptography.fernet import Fernet
from mlflow.tracking import MlflowClient

from modeldiff.config import load_config
from modeldiff.models import load_model, vocabulary_key
from modeldiff.platform.model_registry import register_model
from modeldiff.platform.screening import (
    COUNTERPART_TAG,
    ERROR_TAG,
    EXPERIMENT,
    LEASE_STALE,
    LEASE_TAG,
    MAX_BODY,
    RUN_ID_TAG,
    SCREENED_TAG,
    SKIPPED_TAG,
    STATUS_TAG,
    VERDICT_TAG,
    DeliveryLog,
    Lease,
    Screener,
    ScreeningServer,
    make_handler,
    signature,
)
from support import ROOT
from support.registry import by_reference, craft_version
from support.servers import (
    SCREEN_OVERRIDES,
    free_port,
    get_json,
    get_json_ok,
    open_request,
    post,
    read_status,
    rss_bytes,
    wait_for,
)

pytestmark = pytest.mark.integration
SECRET = "test-secret-" + uuid.uuid4().hex
JOB_TIMEOUT = 600
REQUEST_TIMEOUT = 2  # the service drops a client that stalls this long
COPY = "noise:1e-2:relative:toy:small"  # the suspect of `lineage`


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
            "--request-timeout",
            str(REQUEST_TIMEOUT),
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
    return body, signed(body, delivery_id, timestamp, secret)


def signed(body: bytes, delivery_id: str, timestamp: int | None = None, secret: str = SECRET) -> dict:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "X-MLflow-Delivery-Id": delivery_id,
        "X-MLflow-Timestamp": ts,
        "X-MLflow-Signature": signature(secret, delivery_id, ts, body),
    }


def head(content_length: str | None, headers: dict) -> bytes:
    """A POST /webhook request line and headers, with this Content-Length (None: none)."""
    lines = ["POST /webhook HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [f"Content-Length: {content_length}"] if content_length is not None else []
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def idle(service) -> dict:
    """The service's health once no job is queued or running."""
    return wait_for(
        lambda: (h := service.health()) and not h["queued"] and h["current"] is None and h, JOB_TIMEOUT, "an idle queue"
    )


@pytest.fixture(scope="module")
def lineage(server, service):
    """A parent and its noise copy, registered one after the other; each screened through MLflow's webhook."""
    register_model("toy:small", "parent", cfg())
    register_model(COPY, "suspect", cfg())
    tags = screened("parent"), screened("suspect")
    # `done` is tagged inside the check's run, which ends just after: wait until the service has counted both jobs, so
    # no test starts while the suspect's job is still finishing (a run seen RUNNING, a job counted late)
    wait_for(lambda: service.health()["jobs_done"] >= 2, 60, "the service to finish both jobs")
    return tags


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


@pytest.fixture(scope="module")
def done_version(server, service):
    """A modeldiff version whose screening is done: a delivery for it gets 202 and starts no job."""
    v = craft_version(
        "probe", by_reference("toy:small"), "ids:probe", tags={STATUS_TAG: "done", VERDICT_TAG: "independent"}
    )
    return v.name, str(v.version)


@pytest.fixture(scope="module")
def toy_vocabulary(server):
    return vocabulary_key(load_model("toy:small", cfg()))


def test_bad_content_length_is_answered_before_any_body_is_read(service, done_version):
    _, headers = delivery(*done_version, "length-" + uuid.uuid4().hex)
    # no body is sent: an answer shows the service did not wait for one
    for length, status in (("-1", 400), ("abc", 400), (str(MAX_BODY + 1), 413), (None, 411)):
        with open_request(service.port, head(length, headers)) as sock:
            assert read_status(sock) == status, length
    # the probe of the issue: Content-Length -1 and a stream behind it, which the service must not take in
    rss, sent, chunk = rss_bytes(service.proc.pid), 0, b"\0" * (1 << 20)
    with open_request(service.port, head("-1", headers)) as sock:
        try:
            for _ in range(64):  # 64 MB at most
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:  # the service answered and closed the connection: the rest goes nowhere
            pass
    assert sent < 32 << 20, f"the service took {sent >> 20} MB of a body it had refused"  # (socket buffers: a few MB)
    assert rss_bytes(service.proc.pid) - rss < 16 << 20


def test_stalled_clients_neither_starve_a_delivery_nor_stay(service, done_version):
    stalled = []
    try:
        for i in range(100):  # signed headers announcing a body that never comes
            body, headers = delivery(*done_version, f"stalled-{i}-" + uuid.uuid4().hex)
            stalled.append(open_request(service.port, head(str(len(body)), headers), timeout=REQUEST_TIMEOUT + 30))
        body, headers = delivery(*done_version, "among-stalled-" + uuid.uuid4().hex)
        assert post(f"{service.url}/webhook", body, headers, timeout=5) == 202
        # each stalled client is dropped after the request timeout: its connection ends without an answer
        assert [read_status(sock) for sock in stalled] == [None] * len(stalled)
    finally:
        for sock in stalled:
            sock.close()


def test_a_connection_over_the_cap_gets_503_at_once(server, tmp_path):
    """The cap of the HTTP server itself, on a real Screener and delivery log (a second service would be refused)."""
    screener = Screener("configs/toy.yaml", SCREEN_OVERRIDES, tmp_path / "state")
    handler = make_handler(screener, DeliveryLog(tmp_path / "d.sqlite", 300), SECRET, 300, request_timeout=30)
    http = ScreeningServer(("127.0.0.1", 0), handler, 4, screener.stats)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    port, stalled = http.server_address[1], []
    try:
        stalled = [open_request(port, b"GET /hea") for _ in range(4)]  # every slot held (accepted in order)
        with open_request(port, b"GET /health HTTP/1.0\r\n\r\n") as sock:
            assert read_status(sock) == 503
        assert screener.stats.connections_refused == 1
        for sock in stalled:  # a client that leaves gives its slot back
            sock.close()
        assert wait_for(lambda: get_json(f"http://127.0.0.1:{port}/health"), 10, "a free slot")["ok"]
    finally:
        for sock in stalled:
            sock.close()
        http.shutdown()
        http.server_close()


def test_a_burst_of_signed_deliveries_is_one_job_without_connection_resets(service):
    before = idle(service)
    register_model(COPY, "burst", cfg())  # the suspect's weights: a short job (its pairs are reused after lineage)
    barrier = threading.Barrier(200)

    def deliver(i: int):
        body, headers = delivery("burst", "1", f"burst-{i}-" + uuid.uuid4().hex)
        barrier.wait(30)
        try:
            return post(f"{service.url}/webhook", body, headers, timeout=60)
        except OSError as e:  # e.g. a connection reset
            return repr(e)

    with ThreadPoolExecutor(200) as pool:
        answers = list(pool.map(deliver, range(200)))
    assert answers == [202] * 200, sorted(set(map(str, answers)))
    assert screened("burst")[STATUS_TAG] == "done"
    # one job, whether MLflow's own delivery or one of these queued it
    assert idle(service)["jobs_started"] == before["jobs_started"] + 1 and len(check_runs("burst")) == 1


def test_non_object_json_is_400_and_gives_its_delivery_id_back(service, done_version):
    for i, raw in enumerate((b"[]", b'"x"', b"null")):
        delivery_id = f"not-an-object-{i}-" + uuid.uuid4().hex
        assert post(f"{service.url}/webhook", raw, signed(raw, delivery_id)) == 400
        body, headers = delivery(*done_version, delivery_id)  # its retry, well-formed: not a "duplicate"
        assert post(f"{service.url}/webhook", body, headers) == 202
    # a version that does not exist: a 4xx, which MLflow does not retry
    body, headers = delivery("no-such-model", "1", "missing-" + uuid.uuid4().hex)
    assert post(f"{service.url}/webhook", body, headers) == 404


def test_a_by_reference_version_outside_the_allow_list_fails_with_a_one_line_tag(service, toy_vocabulary, tmp_path):
    """Registered by reference to a directory the service does not allow: refused before anything is opened (its
    files are FIFOs: a job that opened one would hang until its timeout), tagged with the cause and what to do."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    for name in ("config.json", "pytorch_model.bin"):
        os.mkfifo(target / name)
    before = idle(service)
    craft_version("outside", by_reference(str(target)), toy_vocabulary)
    t = screened("outside", timeout=300)
    error = t[ERROR_TAG]
    assert t[STATUS_TAG] == "failed" and "\n" not in error, t
    assert error.startswith(
        f"models:/outside/1 was registered by reference to the path '{target}', outside the directories screening "
        "may open (screening.directories: none): register the model with its weights copied"
    ), error
    assert error.endswith("then rerun: modeldiff screen run models:/outside/1)")
    log = Path(error.rsplit("(log: ", 1)[1].split(";")[0])
    assert "Traceback" not in log.read_text()
    # a new signed delivery does not queue a failed version again: it waits for `modeldiff screen run`
    body, headers = delivery("outside", "1", "failed-" + uuid.uuid4().hex)
    assert post(f"{service.url}/webhook", body, headers) == 202
    after = idle(service)
    assert after["jobs_started"] == before["jobs_started"] + 1 and tags("outside")[STATUS_TAG] == "failed"


def test_an_unloadable_counterpart_is_skipped_and_reported(service, lineage, toy_vocabulary):
    # screened before, unloadable now (no modeldiff_ref.json in its model/ artifact); and one whose screening failed
    craft_version("gone", None, toy_vocabulary, tags={STATUS_TAG: "done", VERDICT_TAG: "independent"})
    craft_version("broken", None, toy_vocabulary, tags={STATUS_TAG: "failed"})
    register_model(COPY, "good", cfg())  # the suspect's weights: its pairs are reused
    t = screened("good")
    assert t[STATUS_TAG] == "done" and t[SKIPPED_TAG] == "models:/gone/1", t
    assert t[VERDICT_TAG] == "suspected_copy_of"  # a finding stands; only "independent" would need every counterpart
    body = mlflow.artifacts.load_dict(f"runs:/{t[RUN_ID_TAG]}/plagiarism.json")
    assert list(body["skipped"]) == ["models:/gone/1"] and "no readable model/modeldiff_ref.json" in str(
        body["skipped"]
    )
    assert "models:/gone/1" in body["counterparts"] and "models:/broken/1" not in body["counterparts"]
    assert {"models:/parent/1", "models:/suspect/1"} <= set(body["pairs"])


def test_a_second_service_on_the_registry_refuses_to_start(server, service):
    cmd = [sys.executable, "-m", "modeldiff.cli", "screen", "serve", "--port", str(free_port())]
    cmd += ["--state-dir", str(server["tmp"] / "state-2")]
    res = subprocess.run(cmd, cwd=ROOT, env=server["env"], capture_output=True, text=True, timeout=120)
    errors = [line for line in res.stderr.splitlines() if line.startswith("modeldiff: error: ")]
    assert res.returncode == 2 and len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert errors[0].startswith("modeldiff: error: another screening service (") and "stop that one first" in errors[0]
    assert service.health()["ok"]


def test_the_lease_is_taken_over_only_when_its_holder_is_gone(server):
    client = MlflowClient()
    exp = client.create_experiment("lease-" + uuid.uuid4().hex[:8])
    lease = Lease(client, exp, settle=0)

    def holder(value: str):
        client.set_experiment_tag(exp, LEASE_TAG, value)

    holder(f"elsewhere:4242:{time.time():.0f}")  # alive elsewhere
    with pytest.raises(ValueError, match=r"another screening service \(elsewhere:4242, heartbeat \d+ s ago\)"):
        lease.acquire()
    finished = subprocess.Popen(["true"])
    finished.wait()
    for gone in (
        f"elsewhere:4242:{time.time() - LEASE_STALE - 5:.0f}",
        f"{socket.gethostname()}:{finished.pid}:{time.time():.0f}",
    ):
        holder(gone)  # no heartbeat for too long; a process of this host that has ended
        lease.acquire()
        assert client.get_experiment(exp).tags[LEASE_TAG].startswith(lease.holder + ":")
        lease.release()
        assert LEASE_TAG not in client.get_experiment(exp).tags


def test_poll_stops_at_sigterm_while_the_registry_is_down(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
    log_path = tmp_path / "poll.log"
    cmd = [sys.executable, "-m", "modeldiff.cli", "screen", "poll", "--state-dir", str(tmp_path / "state")]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "Retrying" in log_path.read_text(), 120, "MLflow to retry the unreachable registry")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0  # MLflow alone would go on retrying for minutes
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "stopping (SIGTERM)" in log_path.read_text()


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
