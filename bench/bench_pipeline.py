"""Pipeline benchmark: orchestration overhead of a real learning job, no-op throughput on Redis."""

from __future__ import annotations

import json
import socket
import tempfile
import time
from pathlib import Path

from celery import chain

from skillstore.catalog import JobStatus, get_job, init_workspace
from skillstore.jobqueue import (
    LEARN_TASKS,
    NOOP_TASK,
    PING_TASK,
    TASK_ROUTES,
    producer,
    spawn_worker,
    stop_worker,
)
from skillstore.pipeline import STAGES, LearnRequest, queue
from skillstore.settings import Settings
from skillstore.zoo.register import register_zoo

REDIS = ("127.0.0.1", 6379)
REDIS_URL = "redis://127.0.0.1:6379/11"
WORK_STAGES = ("train", "compress", "evaluate")
NOOP_JOBS = 200
TRAIN = {"max_steps": 600, "batch_size": 32, "eval_every": 100, "patience": 3, "lr": 3e-3}


def _wait(catalog, job_id: int, timeout: float = 1800):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with catalog.session() as s:
            job = get_job(s, job_id)
            if JobStatus(job.status).finished:
                return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not finish in {timeout}s")


def orchestration_overhead(home: Path, zoo_home: Path | None = None, broker_url: str = "") -> dict:
    """One real job (embedded broker, or the given one): wall time (queued to finished) minus
    the time spent inside the train, compress and evaluate library functions, as a percentage."""
    from skillstore.zoo import build_zoo

    settings = Settings(home=home, broker_url=broker_url, result_backend=broker_url)
    catalog = init_workspace(settings)
    zoo = build_zoo(zoo_home)  # None: the workspace's zoo cache, shared with `make demo`
    with catalog.session() as s:
        register_zoo(s, catalog.blobs, zoo, skills=["reverse"])
    worker = spawn_worker(settings, log_path=home / "worker.log")
    try:
        # The worker's own start-up (a pool process imports torch, transformers and lm-eval)
        # is not the job's overhead: wait until a pool process has answered a ping.
        producer(settings).send_task(PING_TASK).get(timeout=600, interval=0.05)
        with catalog.session() as s:
            request = LearnRequest.build("reverse", "tiny-llama", sft=TRAIN, eval_limit=100)
            job_id = queue(s, settings, request).id
        job = _wait(catalog, job_id)
    finally:
        stop_worker(worker)
        catalog.close()
    if job.status != JobStatus.succeeded:
        raise RuntimeError(f"benchmark job failed in {job.stage}: {job.error}")
    wall = (job.finished_at - job.created_at).total_seconds()
    timings = {step.stage: step.seconds for step in job.steps}
    work = sum(timings[s] for s in WORK_STAGES)
    return {"wall_s": wall, "timings_s": timings, "work_s": work,
            "overhead_s": wall - work, "overhead_pct": 100 * (wall - work) / wall}


def noop_throughput(home: Path, jobs: int = NOOP_JOBS, concurrency: int = 2) -> dict:
    """Chains of five no-op tasks routed like a learning job, through Redis and a real worker."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    settings = Settings(home=home, broker_url=REDIS_URL, result_backend=REDIS_URL)
    app = producer(settings)
    worker = spawn_worker(settings, concurrency=concurrency, log_path=home / "noop-worker.log")
    try:
        app.send_task(PING_TASK).get(timeout=120)  # the worker is up
        queues = [TASK_ROUTES[LEARN_TASKS[s]]["queue"] for s in STAGES]
        t0 = time.perf_counter()
        results = [chain(*(app.signature(NOOP_TASK, args=(i,), immutable=True, queue=q)
                           for q in queues)).apply_async() for i in range(jobs)]
        for r in results:
            r.get(timeout=600)
        seconds = time.perf_counter() - t0
    finally:
        stop_worker(worker)
        client.flushdb()
    return {"jobs": jobs, "tasks_per_job": len(STAGES), "concurrency": concurrency,
            "seconds": seconds, "jobs_per_s": jobs / seconds,
            "tasks_per_s": jobs * len(STAGES) / seconds}


def _redis_up() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=1):
            return True
    except OSError:
        return False


def run(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="skillstore-pipeline-bench-") as tmp:
        result = {"overhead": orchestration_overhead(Path(tmp) / "job")}
        print(json.dumps(result["overhead"]), flush=True)
        if _redis_up():
            import redis

            redis.Redis.from_url(REDIS_URL).flushdb()
            result["overhead_redis"] = orchestration_overhead(Path(tmp) / "job-redis",
                                                              broker_url=REDIS_URL)
            result["noop_redis"] = noop_throughput(Path(tmp) / "noop")
        else:
            result["noop_redis"] = {"skipped": "redis is not reachable at 127.0.0.1:6379"}
    (out_dir / "pipeline.json").write_text(json.dumps(result, indent=2) + "\n")
    o, n = result["overhead"], result["noop_redis"]
    lines = ["# Pipeline benchmark", "",
             "| measure | value |", "| --- | --- |",
             f"| job wall time (s) | {o['wall_s']:.1f} |",
             f"| inside train + compress + evaluate (s) | {o['work_s']:.1f} |",
             f"| orchestration overhead (embedded SQL broker) | {o['overhead_pct']:.1f}% |"]
    if "overhead_redis" in result:
        r = result["overhead_redis"]
        lines += [f"| job wall time, Redis broker (s) | {r['wall_s']:.1f} |",
                  f"| orchestration overhead (Redis broker) | {r['overhead_pct']:.1f}% |"]
    if "jobs_per_s" in n:
        lines += [f"| no-op pipelines on Redis (jobs/s, {n['concurrency']} processes) | "
                  f"{n['jobs_per_s']:.1f} |",
                  f"| no-op tasks on Redis (tasks/s) | {n['tasks_per_s']:.1f} |"]
    (out_dir / "pipeline.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
