"""Registry screening: every new model version gets a plagiarism_check against the registered models of its
vocabulary, and lineage tags (DESIGN §4).

`serve` receives MLflow registry webhooks (`model_version.created`) from an `mlflow server`: it checks the
HMAC signature and the timestamp (stale deliveries are rejected), ignores a delivery id it has seen before,
and queues a job. `poll` finds unscreened versions by listing the registry, for stores without webhooks.
A job is `python -m entrypoints.plagiarism_check --version models:/name/N` in a child process that dies with
the service.

Nothing is lost: the job's state lives on the model version as the tag `modeldiff.lineage.status` (queued,
running, done, failed). At start-up the service queues every modeldiff version that is not done or failed,
so a version whose delivery arrived while the service was down, or whose job was killed with it, is screened
after a restart; a killed job's runs are marked KILLED first, so each version ends with one finished
plagiarism_check run. One service per registry: jobs run one at a time, oldest version first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .model_registry import IDENTITY_TAG, TOKENIZER_TAG, get_version

VERDICT_TAG = "modeldiff.lineage.verdict"
COUNTERPART_TAG = "modeldiff.lineage.counterpart"
STATISTIC_TAG = "modeldiff.lineage.statistic"
RUN_ID_TAG = "modeldiff.lineage.run_id"
STATUS_TAG = "modeldiff.lineage.status"  # queued | running | done | failed
JOB_TAG = "modeldiff.lineage.job"  # host:pid:start time of the job in progress
ERROR_TAG = "modeldiff.lineage.error"
SCREENED_TAG = "modeldiff.screened_version"  # on the plagiarism_check run: name/version
EXPERIMENT = "modeldiff-screening"
WEBHOOK_NAME = "modeldiff-screening"
EVENT = "model_version.created"
SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_HEADER = "X-MLflow-Signature", "X-MLflow-Timestamp", "X-MLflow-Delivery-Id"
MAX_BODY = 1 << 20
log = logging.getLogger("modeldiff.screening")


# ---- the registry side: versions, counterparts, tags ------------------------------------------------------------


def version_key(version) -> str:
    return f"{version.name}/{version.version}"


def version_uri(version) -> str:
    return f"models:/{version_key(version)}"


def parse_version(uri: str):
    """The ModelVersion of `models:/name/N`, which must have been registered by modeldiff."""
    version = get_version(uri)
    if not version.tags.get(IDENTITY_TAG):
        raise ValueError(
            f"{uri} was not registered by modeldiff (no {IDENTITY_TAG} tag), so it cannot be loaded for "
            "screening: register the model with modeldiff register REF --name NAME"
        )
    return version


def _all_versions(client: MlflowClient, filter_string: str | None = None) -> list:
    out, token = [], None
    while True:
        page = client.search_model_versions(filter_string, max_results=200, page_token=token)
        out += list(page)
        token = page.token
        if not token:
            return out


def _order(version) -> tuple:
    return int(version.creation_timestamp or 0), version.name, int(version.version)


def counterparts(version) -> list[tuple[str, bool]]:
    """[(models:/ URI, same identity)] of the modeldiff versions with this version's vocabulary key that were
    registered before it, oldest first (a copy is compared with what existed when it arrived)."""
    key = version.tags.get(TOKENIZER_TAG, "")
    if not key:
        return []
    found = _all_versions(MlflowClient(), f"tags.`{TOKENIZER_TAG}` = '{key}'")
    earlier = [v for v in found if v.tags.get(IDENTITY_TAG) and _order(v) < _order(version)]
    identity = version.tags[IDENTITY_TAG]
    return [(version_uri(v), v.tags[IDENTITY_TAG] == identity) for v in sorted(earlier, key=_order)]


def identical_report(parent_uri: str, uri: str) -> dict:
    """A pair whose registrations carry the same weights identity: no sampling needed."""
    return {
        "model_a": parent_uri,
        "model_b": uri,
        "verdict": "suspected_copy_of",
        "copy": "B",
        "parent": "A",
        "direction_evidence": "argument_order",
        "reason": "registered with identical weights (same identity)",
        "black_box": {
            "A": {"other_wins": 0.5, "interval": [0.0, 1.0]},
            "B": {"other_wins": 0.5, "interval": [0.0, 1.0]},
            "abs_D_q95": 0.0,
        },
        "white_box": {"applicable": True, "p_value": 0.0, "structure_p_value": 1.0, "direction_z": 0.0},
    }


def write_lineage(uri: str, verdict: str, counterpart: str, statistic: dict, run_id: str):
    """The DESIGN §4 tags on a version; `status` last, so a reader that sees `done` sees the rest too."""
    version = get_version(uri)
    client = MlflowClient()
    for key, value in (
        (VERDICT_TAG, verdict),
        (COUNTERPART_TAG, counterpart),
        (STATISTIC_TAG, json.dumps(statistic, sort_keys=True)),
        (RUN_ID_TAG, run_id),
        (STATUS_TAG, "done"),
    ):
        client.set_model_version_tag(version.name, version.version, key, value)
    if ERROR_TAG in version.tags:
        client.delete_model_version_tag(version.name, version.version, ERROR_TAG)


def unscreened(client: MlflowClient) -> list:
    """modeldiff versions whose screening is not done (nor failed: those wait for `modeldiff screen run`)."""
    return sorted(
        (
            v
            for v in _all_versions(client)
            if v.tags.get(IDENTITY_TAG) and v.tags.get(STATUS_TAG) not in ("done", "failed")
        ),
        key=_order,
    )


def kill_stale_runs(client: MlflowClient, experiment_id: str, key: str) -> int:
    """A job that died with its service left its plagiarism_check run (and child runs) RUNNING: mark them KILLED."""
    runs = client.search_runs([experiment_id], f"tags.`{SCREENED_TAG}` = '{key}' and attributes.status = 'RUNNING'")
    n = 0
    for run in runs:
        for child in client.search_runs(
            [experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}' and attributes.status = 'RUNNING'"
        ):
            client.set_terminated(child.info.run_id, "KILLED")
        client.set_terminated(run.info.run_id, "KILLED")
        n += 1
    return n


def ensure_webhook(url: str, secret: str, name: str = WEBHOOK_NAME):
    """Create, or update in place, the registry webhook that calls this service for new versions."""
    client = MlflowClient()
    token, existing = None, None
    while existing is None:
        page = client.list_webhooks(max_results=100, page_token=token)
        existing = next((w for w in page if w.name == name), None)
        token = page.token
        if not token:
            break
    if existing is None:
        return client.create_webhook(
            name, url, [EVENT], secret=secret, description="modeldiff: screen every new model version"
        )
    return client.update_webhook(existing.webhook_id, url=url, events=[EVENT], secret=secret, status="ACTIVE")


# ---- deliveries: signature, timestamp, replay -------------------------------------------------------------------


class DeliveryRejected(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def signature(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """MLflow's scheme (Standard Webhooks): v1,base64(HMAC-SHA256(secret, "id.timestamp.body"))."""
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def check_delivery(headers, body: bytes, secret: str, now: float, tolerance: float) -> tuple[str, dict]:
    """(delivery id, payload) of an authentic, fresh delivery, or DeliveryRejected with the HTTP status to answer."""
    delivery_id, timestamp = headers.get(DELIVERY_HEADER), headers.get(TIMESTAMP_HEADER)
    given = headers.get(SIGNATURE_HEADER)
    if not (delivery_id and timestamp and given):
        raise DeliveryRejected(401, f"missing {DELIVERY_HEADER}, {TIMESTAMP_HEADER} or {SIGNATURE_HEADER}")
    expected = signature(secret, delivery_id, timestamp, body)
    # the header may carry several space-separated signatures (key rotation); one must match
    if not any(hmac.compare_digest(expected, s) for s in given.split()):
        raise DeliveryRejected(401, "signature does not match")
    try:
        age = now - int(timestamp)
    except ValueError:
        raise DeliveryRejected(401, f"{TIMESTAMP_HEADER} is not a Unix time") from None
    if abs(age) > tolerance:
        raise DeliveryRejected(401, f"stale delivery: timestamp {age:+.0f} s from now (tolerance {tolerance:.0f} s)")
    try:
        payload = json.loads(body)
    except ValueError:
        raise DeliveryRejected(400, "body is not JSON") from None
    return delivery_id, payload


class DeliveryLog:
    """Delivery ids already acted on, in a SQLite file, so a replay is ignored across restarts too. Ids older
    than twice the timestamp tolerance are dropped: a replay of those fails the timestamp check anyway."""

    def __init__(self, path: Path, tolerance: float):
        self.path, self.tolerance = Path(path), tolerance
        self.lock = threading.Lock()
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("create table if not exists deliveries (id text primary key, seen real)")

    def claim(self, delivery_id: str) -> bool:
        """True the first time an id is seen; False for a replay."""
        with self.lock:
            now = time.time()
            self.db.execute("delete from deliveries where seen < ?", (now - 2 * self.tolerance,))
            try:
                self.db.execute("insert into deliveries values (?, ?)", (delivery_id, now))
                return True
            except sqlite3.IntegrityError:
                return False

    def release(self, delivery_id: str):
        """Forget an id whose handling failed, so the sender's retry (same id) is accepted."""
        with self.lock:
            self.db.execute("delete from deliveries where id = ?", (delivery_id,))


# ---- jobs ----------------------------------------------------------------------------------------------------------


def _die_with_parent():  # pragma: no cover - runs in the child between fork and exec
    """Linux: the job gets SIGKILL when the service's worker thread goes, so no orphan finishes a job twice."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Stats:
    deliveries_accepted: int = 0
    deliveries_rejected: int = 0
    deliveries_duplicate: int = 0
    deliveries_ignored: int = 0
    jobs_queued: int = 0
    jobs_started: int = 0
    jobs_done: int = 0
    jobs_failed: int = 0
    jobs_skipped: int = 0
    current: str | None = None
    history: list = field(default_factory=list)


class Screener:
    """A queue of versions to screen and one worker that runs their jobs in order."""

    def __init__(
        self,
        config: str,
        overrides: str,
        state_dir: Path,
        experiment: str = EXPERIMENT,
        job_timeout: float | None = None,
    ):
        self.config, self.overrides, self.experiment = config, overrides, experiment
        self.state_dir = Path(state_dir)
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.job_timeout = job_timeout
        self.queue: deque[tuple[str, str]] = deque()
        self.pending: set[tuple[str, str]] = set()
        self.cond = threading.Condition()
        self.stats = Stats()
        self.stopping = False
        self.child: subprocess.Popen | None = None
        self.worker: threading.Thread | None = None
        self.client = MlflowClient()
        self.experiment_id = self._experiment_id()

    def _experiment_id(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        return exp.experiment_id if exp else self.client.create_experiment(self.experiment)

    def enqueue(self, name: str, version: str) -> bool:
        with self.cond:
            key = (name, str(version))
            if key in self.pending:
                return False
            self.pending.add(key)
            self.queue.append(key)
            self.stats.jobs_queued += 1
            self.cond.notify()
            return True

    def accept(self, name: str, version: str) -> str:
        """A delivery's version: mark it queued (so a crash before its job leaves a trace) and queue it."""
        v = self.client.get_model_version(name, str(version))
        if not v.tags.get(IDENTITY_TAG):
            return "ignored: not registered by modeldiff"
        if v.tags.get(STATUS_TAG) == "done":
            return "ignored: already screened"
        if v.tags.get(STATUS_TAG) != "running":
            self.client.set_model_version_tag(name, str(version), STATUS_TAG, "queued")
        return "queued" if self.enqueue(name, str(version)) else "already queued"

    def reconcile(self) -> int:
        """Queue every modeldiff version whose screening is not done (start-up, and each poll)."""
        return sum(self.enqueue(v.name, str(v.version)) for v in unscreened(self.client))

    def start(self):
        self.worker = threading.Thread(target=self._work, name="screening-worker", daemon=True)
        self.worker.start()

    def stop(self):
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if self.child is not None and self.child.poll() is None:
            self.child.terminate()

    def drain(self):
        """Run every queued job in this thread (poll mode)."""
        while True:
            with self.cond:
                if not self.queue or self.stopping:
                    return
                key = self.queue.popleft()
            self._run(*key)

    def _work(self):
        while True:
            with self.cond:
                while not self.queue and not self.stopping:
                    self.cond.wait()
                if self.stopping:
                    return
                key = self.queue.popleft()
            self._run(*key)

    def _run(self, name: str, version: str):
        key = f"{name}/{version}"
        try:
            self.run_job(name, version)
        except Exception as e:  # a registry hiccup must not kill the worker: the version stays unscreened
            log.exception("screening %s failed: %s", key, e)
            self.stats.jobs_failed += 1
        finally:
            with self.cond:
                self.pending.discard((name, version))
                self.stats.current = None

    def run_job(self, name: str, version: str) -> str:
        """Screen one version (unless done): returns its final status."""
        key = f"{name}/{version}"
        v = self.client.get_model_version(name, version)
        if v.tags.get(STATUS_TAG) == "done" and v.tags.get(VERDICT_TAG):
            self.stats.jobs_skipped += 1
            return "done"
        killed = kill_stale_runs(self.client, self.experiment_id, key)
        if killed:
            log.info("%s: marked %d run(s) of an interrupted job KILLED", key, killed)
        self.client.set_model_version_tag(name, version, STATUS_TAG, "running")
        self.client.set_model_version_tag(
            name, version, JOB_TAG, f"{socket.gethostname()}:{os.getpid()}:{time.time():.0f}"
        )
        self.stats.current, self.stats.jobs_started = key, self.stats.jobs_started + 1
        log.info("screening %s", key)
        cmd = [
            sys.executable,
            "-m",
            "entrypoints.plagiarism_check",
            "--config",
            self.config,
            "--overrides",
            self.overrides,
            "--version",
            f"models:/{key}",
        ]
        env = {
            **os.environ,
            "MLFLOW_EXPERIMENT_NAME": self.experiment,
            "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
        }
        logfile = self.state_dir / "logs" / f"{name}-{version}.log"
        with open(logfile, "ab") as out:
            self.child = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
            try:
                rc = self.child.wait(timeout=self.job_timeout)
            except subprocess.TimeoutExpired:
                self.child.kill()
                rc = self.child.wait()
        if self.stopping:  # terminated by a shutdown: left `running`, redone at the next start
            return "running"
        if rc == 0 and self.client.get_model_version(name, version).tags.get(STATUS_TAG) == "done":
            self.stats.jobs_done += 1
            self.stats.history.append(key)
            log.info("screened %s", key)
            return "done"
        lines = [line for line in logfile.read_text(errors="replace").splitlines() if line.strip()]
        error = (lines[-1] if lines else f"exit code {rc}")[:1000]
        self.client.set_model_version_tag(name, version, STATUS_TAG, "failed")
        self.client.set_model_version_tag(name, version, ERROR_TAG, error)
        self.stats.jobs_failed += 1
        log.error("screening %s failed (exit code %s): %s; log: %s", key, rc, error, logfile)
        return "failed"


# ---- the HTTP service ----------------------------------------------------------------------------------------------


def make_handler(screener: Screener, deliveries: DeliveryLog, secret: str, tolerance: float):
    stats = screener.stats

    class Handler(BaseHTTPRequestHandler):
        server_version = "modeldiff-screening"

        def _reply(self, status: int, body: dict):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):
            log.debug("%s " + fmt, self.address_string(), *args)

        def do_GET(self):
            if self.path.rstrip("/") in ("/health", ""):
                with screener.cond:
                    queued = [f"{n}/{v}" for n, v in screener.queue]
                self._reply(200, {"ok": True, "queued": queued, **{k: v for k, v in vars(stats).items()}})
            else:
                self._reply(404, {"error": "unknown path: GET /health, POST /webhook"})

        def do_POST(self):
            if self.path.rstrip("/") != "/webhook":
                return self._reply(404, {"error": "unknown path: POST /webhook"})
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                return self._reply(413, {"error": "body too large"})
            body = self.rfile.read(length)
            try:
                delivery_id, payload = check_delivery(self.headers, body, secret, time.time(), tolerance)
            except DeliveryRejected as e:
                stats.deliveries_rejected += 1
                log.warning("rejected a delivery from %s: %s", self.address_string(), e.reason)
                return self._reply(e.status, {"error": e.reason})
            if not deliveries.claim(delivery_id):
                stats.deliveries_duplicate += 1
                log.warning("ignored a replayed delivery %s", delivery_id)
                return self._reply(200, {"status": "duplicate delivery: ignored"})
            event = f"{payload.get('entity')}.{payload.get('action')}"
            data = payload.get("data") or {}
            if event != EVENT or "name" not in data or "version" not in data:
                stats.deliveries_ignored += 1
                return self._reply(200, {"status": f"ignored: event {event}"})
            try:
                status = screener.accept(str(data["name"]), str(data["version"]))
            except MlflowException as e:  # the registry is unreachable or the version unknown: let MLflow retry
                deliveries.release(delivery_id)
                return self._reply(503, {"error": str(e).splitlines()[0]})
            stats.deliveries_accepted += 1
            return self._reply(202, {"status": status})

    return Handler


def serve(
    host: str,
    port: int,
    secret: str,
    config: str,
    overrides: str,
    state_dir: Path,
    tolerance: float = 300.0,
    webhook_url: str | None = None,
    experiment: str = EXPERIMENT,
    job_timeout: float | None = None,
):
    """Run until SIGTERM/SIGINT: reconcile, then take deliveries and run jobs."""
    if not secret:
        raise ValueError(
            "the screening service needs the webhook secret: set MODELDIFF_WEBHOOK_SECRET (the same "
            "secret the MLflow webhook signs with)"
        )
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    screener = Screener(config, overrides, state_dir, experiment, job_timeout)
    deliveries = DeliveryLog(state_dir / "deliveries.sqlite", tolerance)
    server = ThreadingHTTPServer((host, port), make_handler(screener, deliveries, secret, tolerance))
    n = screener.reconcile()
    log.info("%d unscreened version(s) queued from the registry", n)
    screener.start()
    if webhook_url:
        hook = ensure_webhook(webhook_url, secret)
        log.info("registry webhook %s -> %s", hook.webhook_id, webhook_url)

    def shutdown(signum, frame):
        screener.stop()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    log.info(
        "listening on http://%s:%d/webhook (tracking %s)", host, server.server_address[1], mlflow.get_tracking_uri()
    )
    server.serve_forever()
    server.server_close()


def poll(
    config: str,
    overrides: str,
    state_dir: Path,
    interval: float = 60.0,
    once: bool = False,
    experiment: str = EXPERIMENT,
    job_timeout: float | None = None,
):
    """Screen unscreened versions by listing the registry every `interval` seconds (or once)."""
    screener = Screener(config, overrides, state_dir, experiment, job_timeout)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: (stop.set(), screener.stop()))
    while not stop.is_set():
        n = screener.reconcile()
        if n:
            log.info("%d unscreened version(s) found", n)
        screener.drain()
        if once:
            return screener.stats
        stop.wait(interval)
    return screener.stats
