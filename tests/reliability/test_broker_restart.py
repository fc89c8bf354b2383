"""Restart the Redis broker while jobs run: the same worker reconnects and every job completes."""

from __future__ import annotations

import time

import pytest

from skillstore.catalog import JobStatus
from skillstore.jobqueue import spawn_worker, stop_worker
from tests.workerenv import make_env

from .checks import add_bases, assert_nothing_lost, queue

SKILLS = ("reverse", "sort")
DOWN_S = 3.0
# A message the worker had reserved when Redis died stays unacknowledged there until the
# visibility timeout (12 h); only a worker restart resumes such a job sooner (docs/reliability.md).
STALL_S = 120
# Long enough that both restarts land while the first job trains or evaluates.
TRAIN = {"max_steps": 60, "batch_size": 8, "eval_every": 20, "patience": 100}


def _snapshot(env, jobs) -> list:
    return [(j.status, j.stage, round(j.progress, 3), len(j.params.get("out", {})))
            for j in map(env.job, jobs)]


def _finish(env, jobs, worker, stall_s: float = STALL_S) -> int:
    """Wait for every job; when none moves for ``stall_s``, restart the worker (the documented
    recovery, see docs/reliability.md) and count it. Returns the number of such restarts."""
    restarts, last, since = 0, None, time.monotonic()
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:
        now = _snapshot(env, jobs)
        if all(JobStatus(status).finished for status, *_ in now):
            return restarts
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > stall_s:
            stop_worker(worker[0])
            worker[0] = spawn_worker(env.settings, concurrency=2,
                                     log_path=env.logs / f"after-stall-{restarts}.log")
            restarts, since = restarts + 1, time.monotonic()
        time.sleep(1)
    raise AssertionError(f"jobs never finished: {_snapshot(env, jobs)}")


@pytest.mark.timeout(1800)  # 4 real jobs, two restarts, maybe a worker restart: busy boxes are slow
def test_jobs_complete_across_broker_restarts(tmp_path, tiny_zoo, postgres_url, private_redis,
                                              figures):
    env = make_env(tmp_path, tiny_zoo, database_url=postgres_url, broker_url=private_redis.url(0),
                   result_backend=private_redis.url(1), skills=SKILLS)
    worker = [None]
    try:
        bases = add_bases(env, tiny_zoo, 2)
        jobs = [queue(env, skill, base, train=TRAIN) for skill in SKILLS for base in bases]
        at = []
        worker[0] = first = spawn_worker(env.settings, concurrency=2, log_path=env.logs / "w.log")
        # First restart mid-train, with later jobs still queued in the broker.
        env.wait(jobs[0], until=lambda j: j.stage == "train" and j.progress > 0.25, timeout=600)
        at.append([f"{j.id}:{j.status.value}:{j.stage}" for j in map(env.job, jobs)])
        private_redis.restart(DOWN_S)
        # Second restart once the first job is past training (chains hand over steps via Redis).
        env.wait(jobs[0], until=lambda j: j.stage in ("evaluate", "gate")
                 or JobStatus(j.status).finished, timeout=600)
        at.append([f"{j.id}:{j.status.value}:{j.stage}" for j in map(env.job, jobs)])
        private_redis.restart(DOWN_S)
        # The same worker reconnects by itself after each restart.
        log = env.logs / "w.log"
        deadline = time.monotonic() + 120
        while log.read_text(errors="replace").count("] Connected to redis") < 3:
            assert time.monotonic() < deadline, "the worker did not reconnect twice"
            time.sleep(0.5)
        assert first.poll() is None, "the worker died instead of reconnecting"
        stalls = _finish(env, jobs, worker)
        summary = assert_nothing_lost(env, jobs, f"broker restarts at {at}")
        assert summary["succeeded"] == len(jobs), summary
        figures.update(restarts=private_redis.restarts, down_s=DOWN_S, states_at_restart=at,
                       worker_restarts_needed=stalls, **summary)
    finally:
        if worker[0] is not None:
            stop_worker(worker[0])
        env.catalog.close()


def test_queued_messages_survive_a_restart_before_any_worker(tmp_path, tiny_zoo, postgres_url,
                                                              private_redis, figures):
    """With an append-only Redis, a job queued while no worker runs survives a broker crash."""
    env = make_env(tmp_path, tiny_zoo, database_url=postgres_url, broker_url=private_redis.url(0),
                   result_backend=private_redis.url(1), skills=SKILLS[:1])
    try:
        job_id = queue(env, "reverse")
        private_redis.restart(0.5)
        started = time.monotonic()
        with env.worker():
            env.wait(job_id, timeout=300)
        summary = assert_nothing_lost(env, [job_id], "queued job across a broker crash")
        assert summary["succeeded"] == 1, summary
        figures.update(restarts=private_redis.restarts, seconds=round(time.monotonic() - started),
                       **summary)
    finally:
        env.catalog.close()
