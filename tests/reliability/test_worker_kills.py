"""SIGKILL workers at seeded random points across 20 jobs: nothing lost, nothing duplicated."""

from __future__ import annotations

import os
import random
import time

import pytest

from skillstore.catalog import JobStatus
from skillstore.jobqueue import spawn_worker, stop_worker
from tests.workerenv import make_env

from .checks import add_bases, assert_nothing_lost, queue

SKILLS = ("reverse", "sort", "add", "case", "knowledge")
N_BASES = 4          # 4 bases x 5 skills = 20 jobs; jobs on one base learn in sequence
KILLS = 6
CONCURRENCY = 2
# Each kill lands after a random number of further pipeline steps finished (0 = possibly before
# the worker began anything) plus a random pause: kills fall in every stage, and between them.
STEPS_BEFORE_KILL = (0, 2)
PAUSE_BEFORE_KILL_S = (0.0, 4.0)


def _wait_ready(log, proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and " ready." in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise AssertionError(f"worker never became ready:\n{log.read_text(errors='replace')[-3000:]}")


def _steps_done(env, job_ids) -> int:
    return sum(len(env.job(j).outputs) for j in job_ids)


def _wait_steps(env, job_ids, target: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while _steps_done(env, job_ids) < target and time.monotonic() < deadline:
        if all(JobStatus(env.job(j).status).finished for j in job_ids):
            return
        time.sleep(0.1)


def _running(env, job_ids) -> list[str]:
    return [f"{j.id}:{j.stage}:{j.progress:.2f}" for j in map(env.job, job_ids)
            if j.status == JobStatus.running]


@pytest.mark.timeout(2400)  # 20 real jobs plus restarts: ~6 min idle, far more on a busy box
def test_random_sigkills_lose_and_duplicate_nothing(tmp_path, tiny_zoo, postgres_url,
                                                    private_redis, figures):
    seed = int(os.environ.get("SKILLSTORE_KILL_SEED") or random.SystemRandom().randrange(2**31))
    rng = random.Random(seed)
    env = make_env(tmp_path, tiny_zoo, database_url=postgres_url, broker_url=private_redis.url(0),
                   result_backend=private_redis.url(1), skills=SKILLS)
    try:
        bases = add_bases(env, tiny_zoo, N_BASES)
        jobs = [queue(env, skill, base) for skill in SKILLS for base in bases]
        kills: list[dict] = []
        started = time.monotonic()
        for n in range(KILLS):
            log = env.logs / f"killed-{n}.log"
            worker = spawn_worker(env.settings, concurrency=CONCURRENCY, log_path=log)
            try:
                _wait_ready(log, worker)
                steps, pause = rng.randint(*STEPS_BEFORE_KILL), rng.uniform(*PAUSE_BEFORE_KILL_S)
                _wait_steps(env, jobs, _steps_done(env, jobs) + steps)
                time.sleep(pause)  # the fault's timing, not an assertion
                hit = _running(env, jobs)
            finally:
                stop_worker(worker, kill=True)
            kills.append({"steps": steps, "pause_s": round(pause, 2), "running": hit})
            if all(JobStatus(env.job(j).status).finished for j in jobs):
                break
        context = f"seed {seed} (rerun with SKILLSTORE_KILL_SEED={seed}); kills {kills}"
        with env.worker(concurrency=CONCURRENCY):
            for job_id in jobs:
                try:
                    env.wait(job_id, timeout=900)
                except AssertionError as exc:
                    raise AssertionError(f"{context}: {exc}") from None
        summary = assert_nothing_lost(env, jobs, context)
        attempts = sum(env.job(j).attempts for j in jobs)
        logs = "".join(p.read_text(errors="replace") for p in env.logs.glob("*.log"))
        figures.update(seed=seed, kills=len(kills),
                       kills_mid_job=sum(bool(k["running"]) for k in kills),
                       task_attempts=attempts, resumed=logs.count("resuming job"),
                       task_runs=logs.count("] succeeded in "),
                       seconds=round(time.monotonic() - started), **summary)
        assert summary["succeeded"] == len(jobs), f"{context}: {summary}"
    finally:
        env.catalog.close()
