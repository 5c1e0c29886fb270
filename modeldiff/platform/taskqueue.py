"""Screening jobs on a task queue: procrastinate, which keeps each job's state in the team stack's PostgreSQL.

The service (`modeldiff screen serve --queue DSN`) defers one job per version it is told about (webhook deliveries,
its start-up reconciliation); any number of workers (`modeldiff screen worker --queue DSN`), on any number of
machines, run them. What makes every version screened exactly once:
- a version's job is deferred with the queueing lock `<name>/<version>`: while one waits, another is refused
  (AlreadyEnqueued), however many services and deliveries see the version;
- it also takes the lock `<name>/<version>`: two jobs of one version never run at once;
- the job itself (`Screener.run_job`) skips a version already screened, and marks the runs of an interrupted job
  KILLED before it starts its own, so a version ends with one finished plagiarism_check run;
- a worker that dies (SIGKILL, a lost machine) stops its heartbeat; every worker runs a periodic task that puts the
  jobs of workers silent for STALLED_AFTER seconds back in the queue (procrastinate's stalled-job retry).
The single-machine modes (`serve` without --queue, `poll`, `run`) do not use this module.
"""

from __future__ import annotations

import datetime
import logging
import socket
from pathlib import Path

import procrastinate
import psycopg
from procrastinate.exceptions import AlreadyEnqueued

from .screening import Screener

QUEUE = "modeldiff-screening"
HEARTBEAT = 5.0  # seconds between a worker's heartbeats
STALLED_AFTER = 20.0  # seconds without a heartbeat before a worker's jobs go back to the queue
RETRY_CRON = "* * * * * */5"  # every 5 seconds (croniter: the sixth field is seconds)
SCHEMA_LOCK = 74_530_117  # pg_advisory_lock key: one process applies procrastinate's schema, the others wait
log = logging.getLogger("modeldiff.screening.queue")

tasks = procrastinate.Blueprint()


def lock_of(name: str, version: str) -> str:
    return f"{name}/{version}"


@tasks.task(name="screen_version", queue=QUEUE, pass_context=True)
def screen_version(
    context, name: str, version: str, config: str, overrides: str, experiment: str, job_timeout: float | None
) -> str:
    """One version's plagiarism_check (the same job the single-machine service runs). A job cut short by a
    worker's shutdown raises, so that it is retried rather than recorded as done."""
    state_dir = Path(context.additional_context["state_dir"])
    status = Screener(config, overrides, state_dir, experiment, job_timeout).run_job(name, str(version))
    if status == "running":
        raise RuntimeError(f"the screening of models:/{name}/{version} was interrupted: it is retried")
    return status


@tasks.periodic(cron=RETRY_CRON)
@tasks.task(name="retry_stalled", queue=QUEUE, queueing_lock="retry_stalled", pass_context=True)
async def retry_stalled(context, timestamp: int) -> int:
    """Jobs of workers that stopped sending heartbeats (killed, or their machine lost) go back to the queue."""
    manager = context.app.job_manager
    stalled = await manager.get_stalled_jobs(queue=QUEUE, seconds_since_heartbeat=STALLED_AFTER)
    now = datetime.datetime.now(datetime.timezone.utc)
    retried = 0
    for job in stalled:
        log.warning("job %s (%s) of a worker without heartbeat: back in the queue", job.id, job.task_kwargs)
        try:
            await manager.retry_job_by_id_async(job.id, retry_at=now)
            retried += 1
        except Exception as e:  # e.g. a newer job of the same version already waits (its queueing lock)
            log.warning("job %s stays stalled: %s", job.id, e)
    return retried


def make_app(dsn: str) -> procrastinate.App:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))
    app.add_tasks_from(tasks, namespace="modeldiff")
    return app


def ensure_schema(dsn: str, app: procrastinate.App) -> bool:
    """Apply procrastinate's schema to the database unless it is there (under an advisory lock: several workers
    may start at once); True when it was applied now."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
        try:
            if conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()[0] is not None:
                return False
            conn.execute(app.schema_manager.get_schema())
            log.info("applied procrastinate's schema")
            return True
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (SCHEMA_LOCK,))


def defer(
    app: procrastinate.App,
    name: str,
    version: str,
    config: str,
    overrides: str,
    experiment: str,
    job_timeout: float | None,
) -> bool:
    """Queue the screening of one version; False when a job of it is already waiting."""
    key = lock_of(name, version)
    try:
        app.tasks["modeldiff:screen_version"].configure(lock=key, queueing_lock=key).defer(
            name=name,
            version=str(version),
            config=config,
            overrides=overrides,
            experiment=experiment,
            job_timeout=job_timeout,
        )
        return True
    except AlreadyEnqueued:
        return False


def work(dsn: str, state_dir: Path, name: str | None = None, concurrency: int = 1):
    """Run a worker until SIGTERM/SIGINT (procrastinate's own handlers: the job in progress finishes first)."""
    state_dir = Path(state_dir)
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    app = make_app(dsn)
    with app.open():
        ensure_schema(dsn, app)
        log.info("worker %s on queue %s", name or socket.gethostname(), QUEUE)
        app.run_worker(
            queues=[QUEUE],
            name=name or f"modeldiff-{socket.gethostname()}",
            concurrency=concurrency,
            additional_context={"state_dir": str(state_dir)},
            update_heartbeat_interval=HEARTBEAT,
            stalled_worker_timeout=STALLED_AFTER,
            delete_jobs="never",
            wait=True,
        )


class QueueScreener(Screener):
    """The service's side on the team stack: a version to screen becomes a queued job (the workers run it), not an
    entry of this process's own queue."""

    def __init__(self, dsn: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.app = make_app(dsn)
        self.app.open()
        ensure_schema(dsn, self.app)

    def enqueue(self, name: str, version: str) -> bool:
        queued = defer(self.app, name, str(version), self.config, self.overrides, self.experiment, self.job_timeout)
        if queued:
            self.stats.count("jobs_queued")
        return queued

    def start(self):  # the workers run the jobs
        pass

    def drain(self):
        pass

    def stop(self):
        with self.cond:
            self.stopping = True
        self.app.close()
