"""The job queue seen from the library: queue names, routing, Celery config, and a producer.

The queue layout lives here, in one place, so that both the producer side (`skillstore learn`,
the HTTP API) and the workers (`workers.app.create_app`) read it; skillstore never imports
`workers`, it sends tasks by their dotted names.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from celery import Celery
from kombu import Queue

from .errors import ConfigError
from .settings import Settings
from .sqlbroker import split_url

GPU_QUEUE = "gpu"
CPU_QUEUE = "cpu"
QUEUES = (GPU_QUEUE, CPU_QUEUE)

# Redis redelivers an unacknowledged task once its visibility timeout passes, so the timeout
# must outlast the longest task (training a real model on one GPU) with margin to spare.
LONGEST_TASK_S = 6 * 3600
WORKER_THREADS = "1"
VISIBILITY_TIMEOUT_S = 2 * LONGEST_TASK_S

# The learning job's steps in order, and the queue each runs on. Evaluation runs models, so it
# is never on the CPU queue; the gate only decides (a stale evaluation is sent back to `gpu`).
LEARN_STAGES = ("prepare", "train", "compress", "evaluate", "gate")
STAGE_QUEUES = {"prepare": CPU_QUEUE, "train": GPU_QUEUE, "compress": CPU_QUEUE,
                "evaluate": GPU_QUEUE, "gate": CPU_QUEUE}
# One name per task, read by the worker that registers it, the routes, and the producer.
LEARN_TASKS = {stage: f"workers.learn.{stage}" for stage in LEARN_STAGES}
PING_TASK, NOOP_TASK = "workers.ops.ping", "workers.ops.noop"
# One experiment run (method, seed): it trains and evaluates models, so it runs on `gpu`.
EXPERIMENT_RUN_TASK = "workers.experiments.run"

# A worker that finishes a step while the broker restarts must still hand the chain on: retry
# the publish for about two minutes (Celery's default gives up within a second, which left the
# job running forever). `skillstore learn` passes its own short policy.
PUBLISH_RETRY_POLICY = {"max_retries": 60, "interval_start": 0.5, "interval_step": 0.5,
                        "interval_max": 2}


def publish_window_s(policy: dict = PUBLISH_RETRY_POLICY) -> float:
    """How long a publish retried under ``policy`` may go on: the sum of its waits."""
    start, step, most = policy["interval_start"], policy["interval_step"], policy["interval_max"]
    return sum(min(start + i * step, most) for i in range(policy["max_retries"]))


TASK_ROUTES = {
    **{LEARN_TASKS[stage]: {"queue": STAGE_QUEUES[stage]} for stage in LEARN_STAGES},
    EXPERIMENT_RUN_TASK: {"queue": GPU_QUEUE},
    PING_TASK: {"queue": CPU_QUEUE},
    NOOP_TASK: {"queue": CPU_QUEUE},
}


def celery_config(settings: Settings) -> dict:
    """Celery settings shared by producers and workers: JSON only, long-job safety."""
    if settings.broker_url.startswith("sqla+sqlite"):
        settings.home.mkdir(parents=True, exist_ok=True)
    broker_url, transport = split_url(settings.broker_url)
    config = {
        "broker_url": broker_url,
        "result_backend": settings.result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_queues": [Queue(name) for name in QUEUES],
        "task_default_queue": CPU_QUEUE,
        "task_routes": TASK_ROUTES,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Pool processes import the ML stack at start-up (workers.learn), which takes longer
        # than Celery's 4 s default allowance for a new process to report alive.
        "worker_proc_alive_timeout": 120,
        "task_track_started": True,
        "broker_connection_retry_on_startup": True,
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        "worker_hijack_root_logger": False,
        "enable_utc": True,
        "timezone": "UTC",
    }
    if transport:
        config["broker_transport"] = transport
    if settings.broker_url.startswith(("redis", "rediss", "sqs")):
        config["broker_transport_options"] = {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    if settings.result_backend.startswith(("redis", "rediss")):
        config["result_backend_transport_options"] = {"visibility_timeout": VISIBILITY_TIMEOUT_S}
    return config


def producer(settings: Settings) -> Celery:
    """A Celery app that only sends tasks by name; it loads no task code."""
    app = Celery("skillstore")
    app.conf.update(celery_config(settings))
    return app


def parse_queues(queues: str) -> list[str]:
    """`gpu,cpu` -> ["gpu", "cpu"], refusing names that no task is routed to."""
    names = [q.strip() for q in queues.split(",") if q.strip()]
    unknown = [q for q in names if q not in QUEUES]
    if not names or unknown:
        raise ConfigError(
            f"Unknown queue {', '.join(unknown) or '(none given)'!s}; "
            f"choose from {', '.join(QUEUES)} (comma-separated)."
        )
    return names


def worker_command(queues: Sequence[str], concurrency: int, *, pool: str = "prefork",
                   loglevel: str = "INFO", hostname: str | None = None) -> list[str]:
    """The argv that starts a real Celery worker process on the given queues."""
    argv = [sys.executable, "-m", "celery", "-A", "workers.main", "worker",
            "-Q", ",".join(queues), "-c", str(concurrency), "-P", pool, "-l", loglevel,
            "--without-gossip", "--without-mingle"]
    if hostname:
        argv += ["-n", hostname]
    return argv


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that hands these settings to a child process."""
    env = dict(os.environ)
    # One intra-op thread per worker process unless the user says otherwise: scale with
    # --concurrency instead. Several processes each spinning a full OpenMP pool on a shared
    # CPU run tiny models 20x slower than one thread each.
    env.setdefault("OMP_NUM_THREADS", WORKER_THREADS)
    env.update({
        "SKILLSTORE_HOME": str(settings.home),
        "SKILLSTORE_DATABASE_URL": settings.database_url,
        "SKILLSTORE_BLOB_URL": settings.blob_url,
        "SKILLSTORE_BROKER_URL": settings.broker_url,
        "SKILLSTORE_RESULT_BACKEND": settings.result_backend,
        "SKILLSTORE_STRANDED_AFTER_S": str(settings.stranded_after_s),
        **settings.s3_env(),
    })
    return env


def spawn_worker(settings: Settings, queues: Sequence[str] = QUEUES, concurrency: int = 1, *,
                 log_path: str | os.PathLike[str] | None = None, **kwargs) -> subprocess.Popen:
    """Start a worker as a child process in its own process group (used by the demo and tests).

    Its own group lets `stop_worker` end the worker and its pool children together; with
    ``log_path`` its output goes to that file instead of the caller's terminal.
    """
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    out = open(log_path, "ab") if log_path else None  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(worker_command(queues, concurrency, **kwargs),
                                env=settings_env(settings), start_new_session=True,
                                stdout=out, stderr=subprocess.STDOUT if out else None)
    finally:
        if out is not None:
            out.close()


def stop_worker(proc: subprocess.Popen, *, kill: bool = False, timeout: float = 30) -> None:
    """End a spawned worker and its pool: SIGTERM (a warm shutdown) or SIGKILL (a crash)."""
    import signal

    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
