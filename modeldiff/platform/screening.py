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
plagiarism_check run. One service per registry: jobs run one at a time, oldest version first, and a service holds a
lease on the registry (a tag with its heartbeat) that a second service refuses to start against.

The HTTP side is bounded with the standard library's own means: a listen backlog for bursts, a socket timeout per
connection, a cap on connections handled at once (one over it gets 503, which MLflow retries), and a body is read
only after its Content-Length and headers pass the cheap checks. Versions are untrusted input: jobs load them under
`model_registry.screening_policy()`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from .model_registry import IDENTITY_TAG, MISSING, TOKENIZER_TAG, get_version

VERDICT_TAG = "modeldiff.lineage.verdict"
COUNTERPART_TAG = "modeldiff.lineage.counterpart"
STATISTIC_TAG = "modeldiff.lineage.statistic"
RUN_ID_TAG = "modeldiff.lineage.run_id"
STATUS_TAG = "modeldiff.lineage.status"  # queued | running | done | failed
JOB_TAG = "modeldiff.lineage.job"  # host:pid:start time of the job in progress
ERROR_TAG = "modeldiff.lineage.error"  # why the screening failed, and what to do
SKIPPED_TAG = "modeldiff.lineage.skipped"  # counterparts that could not be compared (reasons in plagiarism.json)
SCREENED_TAG = "modeldiff.screened_version"  # on the plagiarism_check run: name/version
LEASE_TAG = "modeldiff.screening.lease"  # on the screening experiment: host:pid:heartbeat of the service holding it
EXPERIMENT = "modeldiff-screening"
WEBHOOK_NAME = "modeldiff-screening"
EVENT = "model_version.created"
SIGNATURE_HEADER, TIMESTAMP_HEADER, DELIVERY_HEADER = "X-MLflow-Signature", "X-MLflow-Timestamp", "X-MLflow-Delivery-Id"
MAX_BODY = 1 << 20
MAX_DELIVERY_ID = 200  # characters (MLflow's are UUIDs)
LISTEN_BACKLOG = 128  # socketserver's default of 5 resets connections in a burst of deliveries
REQUEST_TIMEOUT = 10.0  # seconds each read of a request may wait (a stalled client is dropped)
MAX_CONNECTIONS = 256  # connections handled at once; one more gets 503 at once
LEASE_BEAT, LEASE_STALE = 15.0, 60.0  # seconds between heartbeats; a lease without one for this long is free
ERROR_PREFIX = "modeldiff: error: "  # how a job states a user error (modeldiff.platform.runtime.user_errors)
log = logging.getLogger("modeldiff.screening")


# ---- the registry side: versions, counterparts, tags ------------------------------------------------------------


def experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


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
    registered before it, oldest first (a copy is compared with what existed when it arrived). A version whose own
    screening failed is none: it could not be loaded."""
    identity = version.tags[IDENTITY_TAG]
    return [(version_uri(v), v.tags[IDENTITY_TAG] == identity) for v in earlier_versions(version)]


def earlier_versions(version) -> list:
    """The ModelVersions behind `counterparts` (with their tags), oldest first."""
    key = version.tags.get(TOKENIZER_TAG, "")
    if not key:
        return []
    if not re.fullmatch(r"[\w:.-]+", key):
        raise ValueError(
            f"{version_uri(version)} has a malformed {TOKENIZER_TAG} tag {key[:80]!r}: register the model again "
            "with modeldiff register REF --name NAME"
        )
    found = _all_versions(MlflowClient(), f"tags.`{TOKENIZER_TAG}` = '{key}'")
    earlier = [
        v
        for v in found
        if v.tags.get(IDENTITY_TAG) and v.tags.get(STATUS_TAG) != "failed" and _order(v) < _order(version)
    ]
    return sorted(earlier, key=_order)


def identical_report(parent_uri: str, uri: str) -> dict:
    """A pair whose registrations carry the same weights identity: no sampling needed."""
    return {
        "model_a": parent_uri,
        "model_b": uri,
        "verdict": "suspected_copy_of",
        "copy": "B",
        "parent": "A",
        "direction_evidence": "registration_order",
        "reason": "registered with identical weights (same identity)",
        "black_box": {
            "A": {"other_wins": 0.5, "interval": [0.0, 1.0]},
            "B": {"other_wins": 0.5, "interval": [0.0, 1.0]},
            "abs_D_q95": 0.0,
        },
        "white_box": {"applicable": True, "p_value": 0.0, "structure_p_value": 1.0, "direction_z": 0.0},
    }


def write_lineage(uri: str, verdict: str, counterpart: str, statistic: dict, run_id: str, skipped=()):
    """The DESIGN §4 tags on a version, and the counterparts `skipped`; `status` last, so a reader that sees `done`
    sees the rest too."""
    version = get_version(uri)
    client = MlflowClient()
    tags = [
        (VERDICT_TAG, verdict),
        (COUNTERPART_TAG, counterpart),
        (STATISTIC_TAG, json.dumps(statistic, sort_keys=True)),
        (RUN_ID_TAG, run_id),
    ]
    if skipped:
        tags.append((SKIPPED_TAG, " ".join(skipped)))
    for key, value in (*tags, (STATUS_TAG, "done")):
        client.set_model_version_tag(version.name, version.version, key, value)
    for stale in (ERROR_TAG, *(() if skipped else (SKIPPED_TAG,))):
        if stale in version.tags:
            client.delete_model_version_tag(version.name, version.version, stale)


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


def content_length(headers) -> int:
    """The body's length from a strict Content-Length (digits only, at most MAX_BODY), before any of it is read."""
    if headers.get("Transfer-Encoding"):
        raise DeliveryRejected(411, "chunked bodies are not accepted: send Content-Length")
    values = headers.get_all("Content-Length") or []
    if len(values) != 1:
        raise DeliveryRejected(411 if not values else 400, "exactly one Content-Length header is required")
    value = values[0]
    if not re.fullmatch(r"[0-9]{1,12}", value.strip()):
        raise DeliveryRejected(400, f"Content-Length {value[:20]!r} is not a non-negative integer")
    if int(value) > MAX_BODY:
        raise DeliveryRejected(413, f"body too large ({int(value)} bytes; at most {MAX_BODY})")
    return int(value)


def check_headers(headers, now: float, tolerance: float) -> tuple[str, str, list[str]]:
    """(delivery id, timestamp, signatures) of a fresh delivery, checked before its body is read."""
    delivery_id, timestamp = headers.get(DELIVERY_HEADER), headers.get(TIMESTAMP_HEADER)
    given = headers.get(SIGNATURE_HEADER)
    if not (delivery_id and timestamp and given):
        raise DeliveryRejected(401, f"missing {DELIVERY_HEADER}, {TIMESTAMP_HEADER} or {SIGNATURE_HEADER}")
    if len(delivery_id) > MAX_DELIVERY_ID:
        raise DeliveryRejected(400, f"{DELIVERY_HEADER} is longer than {MAX_DELIVERY_ID} characters")
    if not re.fullmatch(r"[0-9]{1,12}", timestamp.strip()):
        raise DeliveryRejected(401, f"{TIMESTAMP_HEADER} is not a Unix time")
    offset = int(timestamp) - now
    if abs(offset) > tolerance:
        raise DeliveryRejected(401, f"stale delivery: timestamp {offset:+.0f} s from now (tolerance {tolerance:.0f} s)")
    return delivery_id, timestamp, given.split()  # several space-separated signatures: key rotation


def check_body(secret: str, delivery_id: str, timestamp: str, signatures: list[str], body: bytes) -> dict:
    """The payload of a body signed by `secret`: a JSON object."""
    expected = signature(secret, delivery_id, timestamp, body)
    if not any(hmac.compare_digest(expected, s) for s in signatures):
        raise DeliveryRejected(401, "signature does not match")
    try:
        payload = json.loads(body)
    except ValueError:
        raise DeliveryRejected(400, "body is not JSON") from None
    if not isinstance(payload, dict):
        raise DeliveryRejected(400, f"body is JSON but not an object (a {type(payload).__name__})")
    return payload


def check_delivery(headers, body: bytes, secret: str, now: float, tolerance: float) -> tuple[str, dict]:
    """(delivery id, payload) of an authentic, fresh delivery, or DeliveryRejected with the HTTP status to answer."""
    delivery_id, timestamp, signatures = check_headers(headers, now, tolerance)
    return delivery_id, check_body(secret, delivery_id, timestamp, signatures, body)


def created_version(payload: dict) -> tuple[str, str] | None:
    """(name, version) of a `model_version.created` payload; None for another event."""
    if f"{payload.get('entity')}.{payload.get('action')}" != EVENT:
        return None
    data = payload.get("data")
    name, version = (data.get("name"), data.get("version")) if isinstance(data, dict) else (None, None)
    if not (isinstance(name, str) and name.strip() and re.fullmatch(r"[0-9]{1,12}", str(version))):
        raise DeliveryRejected(400, f"a {EVENT} payload needs data.name (a string) and data.version (a number)")
    return name, str(version)


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
    connections_refused: int = 0  # over MAX_CONNECTIONS: answered 503
    jobs_queued: int = 0
    jobs_started: int = 0
    jobs_done: int = 0
    jobs_failed: int = 0
    jobs_skipped: int = 0
    current: str | None = None
    history: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, name: str):
        """Add one to a counter (request threads count at once: `+=` alone could lose some)."""
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)

    def snapshot(self) -> dict:
        with self.lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "lock"}


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
        self.client = MlflowClient()  # contacts the registry only when first used

    @functools.cached_property
    def experiment_id(self) -> str:
        return experiment_id(self.client, self.experiment)

    def enqueue(self, name: str, version: str) -> bool:
        with self.cond:
            key = (name, str(version))
            if key in self.pending:
                return False
            self.pending.add(key)
            self.queue.append(key)
            self.stats.count("jobs_queued")
            self.cond.notify()
            return True

    def accept(self, name: str, version: str) -> str:
        """A delivery's version: mark it queued (so a crash before its job leaves a trace) and queue it. A version
        that failed waits for `modeldiff screen run`, which says why it failed."""
        v = self.client.get_model_version(name, str(version))
        if not v.tags.get(IDENTITY_TAG):
            return "ignored: not registered by modeldiff"
        if v.tags.get(STATUS_TAG) == "done":
            return "ignored: already screened"
        if v.tags.get(STATUS_TAG) == "failed":
            return (
                f"ignored: its screening failed (see its {ERROR_TAG} tag); rerun: modeldiff screen run {version_uri(v)}"
            )
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
            self.stats.count("jobs_failed")
        finally:
            with self.cond:
                self.pending.discard((name, version))
                self.stats.current = None

    def run_job(self, name: str, version: str) -> str:
        """Screen one version (unless done): returns its final status."""
        key = f"{name}/{version}"
        v = self.client.get_model_version(name, version)
        if v.tags.get(STATUS_TAG) == "done" and v.tags.get(VERDICT_TAG):
            self.stats.count("jobs_skipped")
            return "done"
        killed = kill_stale_runs(self.client, self.experiment_id, key)
        if killed:
            log.info("%s: marked %d run(s) of an interrupted job KILLED", key, killed)
        self.client.set_model_version_tag(name, version, STATUS_TAG, "running")
        self.client.set_model_version_tag(
            name, version, JOB_TAG, f"{socket.gethostname()}:{os.getpid()}:{time.time():.0f}"
        )
        self.stats.current = key
        self.stats.count("jobs_started")
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
            start = out.tell()  # this job's part of the log begins here (the file is appended to per version)
            self.child = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
            try:
                rc, timed_out = self.child.wait(timeout=self.job_timeout), False
            except subprocess.TimeoutExpired:
                self.child.kill()
                rc, timed_out = self.child.wait(), True
        # terminated by a shutdown (this service's, or a worker's process group being stopped): left `running`,
        # redone at the next start; a timeout kills with SIGKILL and is a failure below
        if self.stopping or (not timed_out and rc in (-signal.SIGTERM, -signal.SIGINT)):
            return "running"
        if rc == 0 and self.client.get_model_version(name, version).tags.get(STATUS_TAG) == "done":
            self.stats.count("jobs_done")
            self.stats.history.append(key)
            log.info("screened %s", key)
            return "done"
        with open(logfile, "rb") as f:
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines()
        error = failure_reason(lines, rc, self.job_timeout if timed_out else None, f"models:/{key}", logfile)
        self.client.set_model_version_tag(name, version, STATUS_TAG, "failed")
        self.client.set_model_version_tag(name, version, ERROR_TAG, error)
        self.stats.count("jobs_failed")
        log.error("screening %s failed (exit code %s): %s", key, rc, error)
        return "failed"


def failure_reason(lines: list[str], rc: int, timed_out_after: float | None, uri: str, logfile: Path) -> str:
    """One line for a failed job's tag: the cause (the job's own one-line error where it gave one) and what to do."""
    errors = [line.removeprefix(ERROR_PREFIX).strip() for line in lines if line.startswith(ERROR_PREFIX)]
    last = next((line.strip() for line in reversed(lines) if line.strip()), "")
    if timed_out_after is not None:
        cause = f"the job ran longer than --job-timeout {timed_out_after:.0f} s and was killed: raise the timeout"
    elif errors:
        cause = errors[-1]
    else:
        cause = f"the job crashed (exit code {rc}; last line of its log: {last[:300]!r}): a bug, report it with the log"
    return f"{cause} (log: {logfile}; then rerun: modeldiff screen run {uri})"[:1000]


# ---- one service per registry -------------------------------------------------------------------------------------


class Lease:
    """The registry's screening lease: the tag LEASE_TAG = host:pid:heartbeat on the screening experiment. A service
    takes it at start-up unless another live one holds it (a heartbeat within LEASE_STALE s, or a live process of this
    host), renews it every LEASE_BEAT s, and gives it back when it stops. MLflow has no compare-and-set: a start reads
    the tag back after a pause, so of two services starting together the later writer wins and the other refuses."""

    def __init__(self, client: MlflowClient, experiment_id: str, settle: float = 1.0):
        self.client, self.experiment_id, self.settle = client, experiment_id, settle
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self.stopped = threading.Event()

    def _read(self) -> tuple[str, float] | None:
        value = self.client.get_experiment(self.experiment_id).tags.get(LEASE_TAG, "")
        holder, _, beat = value.rpartition(":")
        try:
            return holder, float(beat)
        except ValueError:
            return None

    def _write(self):
        self.client.set_experiment_tag(self.experiment_id, LEASE_TAG, f"{self.holder}:{time.time():.0f}")

    def _live_other(self) -> tuple[str, float] | None:
        """(holder, seconds since its heartbeat) of another service that still holds the lease."""
        current = self._read()
        if current is None or current[0] == self.holder:
            return None
        holder, beat = current
        host, _, pid = holder.rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
            return None  # died on this host without giving the lease back
        age = max(0.0, time.time() - beat)  # (beats are written in whole seconds)
        return (holder, age) if age < LEASE_STALE else None

    def acquire(self):
        for attempt in range(2):
            other = self._live_other()
            if other is not None:
                raise ValueError(
                    f"another screening service ({other[0]}, heartbeat {other[1]:.0f} s ago) holds this registry's "
                    f"screening lease (tag {LEASE_TAG} of the experiment {EXPERIMENT}): one service per registry, "
                    f"so stop that one first; a service that died elsewhere frees it after {LEASE_STALE:.0f} s"
                )
            if attempt == 0:
                self._write()
                time.sleep(self.settle)  # a service starting at the same time writes now, and one of us sees it
        threading.Thread(target=self._beat, name="screening-lease", daemon=True).start()

    def _beat(self):
        while not self.stopped.wait(LEASE_BEAT):
            try:
                other = self._live_other()
                if other is not None:
                    log.error("another screening service (%s) took the registry's lease: stopping", other[0])
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
                self._write()
            except (MlflowException, OSError) as e:  # the registry is down: try again at the next beat
                log.warning("cannot renew the screening lease: %s", str(e).splitlines()[0] if str(e) else e)

    def release(self):
        """Give the lease back (best effort, within a few seconds: the registry may be down)."""
        self.stopped.set()

        def clear():
            current = self._read()
            if current is not None and current[0] == self.holder:
                self.client.delete_experiment_tag(self.experiment_id, LEASE_TAG)

        worker = threading.Thread(target=clear, daemon=True)
        worker.start()
        worker.join(5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class Shutdown(BaseException):
    """SIGTERM/SIGINT in the main thread: leaves whatever it was doing at once, even MLflow's minutes of retries of an
    unreachable registry (a BaseException, so no `except Exception` in between swallows it)."""


def _stop_on_signals(screener: Screener):
    def handler(signum, frame):
        screener.stop()
        signal.signal(signum, signal.SIG_DFL)  # a second signal kills at once
        raise Shutdown(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


# ---- the HTTP service ----------------------------------------------------------------------------------------------


class ScreeningServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a listen backlog for bursts and a cap on connections handled at once: a connection over
    the cap gets 503 (with Retry-After, which MLflow honours) from the accepting thread instead of a thread."""

    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True

    def __init__(self, address, handler, max_connections: int, stats: Stats):
        self.slots = threading.BoundedSemaphore(max_connections)
        self.stats = stats
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.stats.count("connections_refused")
            _answer_busy(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


BUSY = json.dumps({"error": "too many connections: retry shortly"}).encode()


def _answer_busy(request):
    try:
        request.settimeout(1.0)
        request.sendall(
            b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
            + f"Content-Length: {len(BUSY)}\r\nConnection: close\r\n\r\n".encode()
            + BUSY
        )
    except OSError:
        pass


def make_handler(
    screener: Screener,
    deliveries: DeliveryLog,
    secret: str,
    tolerance: float,
    request_timeout: float = REQUEST_TIMEOUT,
):
    stats = screener.stats

    class Handler(BaseHTTPRequestHandler):
        server_version = "modeldiff-screening"
        timeout = request_timeout  # StreamRequestHandler's socket timeout: every read and write of a connection

        def _reply(self, status: int, body: dict):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 503:
                self.send_header("Retry-After", "5")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):
            log.debug("%s " + fmt, self.address_string(), *args)

        def do_GET(self):
            if self.path.rstrip("/") in ("/health", ""):
                with screener.cond:
                    queued = [f"{n}/{v}" for n, v in screener.queue]
                self._reply(200, {"ok": True, "queued": queued, **stats.snapshot()})
            else:
                self._reply(404, {"error": "unknown path: GET /health, POST /webhook"})

        def do_POST(self):
            try:
                status, body = self._deliver()
            except DeliveryRejected as e:
                stats.count("deliveries_rejected")
                log.warning("rejected a delivery from %s: %s", self.address_string(), e.reason)
                status, body = e.status, {"error": e.reason}
            except TimeoutError:
                raise  # a client too slow to send its body: dropped without an answer (BaseHTTPRequestHandler)
            except Exception:  # a bug: still an answer, and the delivery id was given back
                log.exception("a delivery from %s failed", self.address_string())
                status, body = 500, {"error": "internal error of the screening service: see its log"}
            self._reply(status, body)

        def _deliver(self) -> tuple[int, dict]:
            """The answer to a delivery; its body is read only after the cheap checks of its request and headers."""
            if self.path.rstrip("/") != "/webhook":
                return 404, {"error": "unknown path: POST /webhook"}
            length = content_length(self.headers)
            delivery_id, timestamp, signatures = check_headers(self.headers, time.time(), tolerance)
            body = self.rfile.read(length)
            if len(body) != length:
                raise DeliveryRejected(400, f"body ended after {len(body)} of {length} bytes")
            payload = check_body(secret, delivery_id, timestamp, signatures, body)
            version = created_version(payload)
            if not deliveries.claim(delivery_id):
                stats.count("deliveries_duplicate")
                log.warning("ignored a replayed delivery %s", delivery_id)
                return 200, {"status": "duplicate delivery: ignored"}
            if version is None:
                stats.count("deliveries_ignored")
                return 200, {"status": f"ignored: event {payload.get('entity')}.{payload.get('action')}"}
            try:
                status = screener.accept(*version)
            except MlflowException as e:
                deliveries.release(delivery_id)  # the sender may retry it
                if e.error_code in MISSING:  # never exists: a 4xx, which MLflow does not retry
                    raise DeliveryRejected(404, f"models:/{version[0]}/{version[1]} is not in the registry") from None
                return 503, {"error": f"the registry is unreachable: {str(e).splitlines()[0]}"}  # retried
            except BaseException:
                deliveries.release(delivery_id)
                raise
            stats.count("deliveries_accepted")
            return 202, {"status": status}

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
    request_timeout: float = REQUEST_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    screener: Screener | None = None,
):
    """Run until SIGTERM/SIGINT: take the registry's lease, reconcile, then take deliveries and run jobs (`screener`:
    another way to run them, e.g. modeldiff.platform.taskqueue.QueueScreener, which queues them for workers)."""
    if not secret:
        raise ValueError(
            "the screening service needs the webhook secret: set MODELDIFF_WEBHOOK_SECRET (the same "
            "secret the MLflow webhook signs with)"
        )
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    screener = screener or Screener(config, overrides, state_dir, experiment, job_timeout)
    deliveries = DeliveryLog(state_dir / "deliveries.sqlite", tolerance)
    handler = make_handler(screener, deliveries, secret, tolerance, request_timeout)
    server = ScreeningServer((host, port), handler, max_connections, screener.stats)
    _stop_on_signals(screener)
    lease = None
    try:
        lease = Lease(screener.client, experiment_id(screener.client, EXPERIMENT))
        lease.acquire()
        n = screener.reconcile()
        log.info("%d unscreened version(s) queued from the registry", n)
        screener.start()
        if webhook_url:
            hook = ensure_webhook(webhook_url, secret)
            log.info("registry webhook %s -> %s", hook.webhook_id, webhook_url)
        log.info(
            "listening on http://%s:%d/webhook (tracking %s)", host, server.server_address[1], mlflow.get_tracking_uri()
        )
        server.serve_forever()
    except Shutdown as e:
        log.info("stopping (%s)", e)
    finally:
        screener.stop()
        if lease is not None:
            lease.release()
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
    """Screen unscreened versions by listing the registry every `interval` seconds (or once). An unreachable registry
    is retried at the next scan (`once`: an error)."""
    screener = Screener(config, overrides, state_dir, experiment, job_timeout)
    _stop_on_signals(screener)
    log.info("polling %s %s", mlflow.get_tracking_uri(), "once" if once else f"every {interval:.0f} s")
    lease = None
    try:
        lease = Lease(screener.client, experiment_id(screener.client, EXPERIMENT))
        lease.acquire()
        while True:
            try:
                n = screener.reconcile()
            except MlflowException as e:
                if once:
                    raise
                log.warning("cannot list the registry (%s): next try in %.0f s", str(e).splitlines()[0], interval)
                n = 0
            if n:
                log.info("%d unscreened version(s) found", n)
            screener.drain()
            if once:
                break
            time.sleep(interval)
    except Shutdown as e:
        log.info("stopping (%s)", e)
    finally:
        if lease is not None:
            lease.release()
    return screener.stats
