"""A worker killed after taking a queued job's or experiment run's message and before claiming
it: the next worker puts the message back (Redis) or sends it again (the embedded SQL broker, or
a message Redis dropped in its handover), and the job or run finishes once. (The deterministic
twin of the random kill that left CI's job 20 queued.)"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import sqlalchemy as sa
from redis import Redis

from skillstore.catalog import JobStatus
from skillstore.catalog.models import SkillPack
from skillstore.experiments import parse_spec
from skillstore.experiments.queue import queue_experiment
from skillstore.jobqueue import EXPERIMENT_RUN_TASK, GPU_QUEUE, STAGE_QUEUES, settings_env
from tests.workerenv import make_env
from workers.reconnect import named

from .checks import assert_nothing_lost, queue, run_of, wait_run

QUIET_S = 3.0  # stranded_after_s for these workers: the default minute, shortened

# A consumer that takes the first message of a queue, as a worker's does, and is SIGKILLed
# before it can do anything with it: no ack, no reject, no claim.
TAKER = """
import os, signal, sys
from skillstore.jobqueue import producer
from skillstore.settings import get_settings

with producer(get_settings()).connection_for_read() as conn:
    message = conn.SimpleQueue(sys.argv[1]).get(timeout=60)
    print(message.headers["task"], message.headers["argsrepr"], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _take(env, queue: str, task: str, first: int, redis) -> None:
    """The first message of ``queue`` (``task`` for ``first``) taken and never acknowledged:
    by a SIGKILLed consumer, or (``redis`` given) popped as a crash inside Redis's handover."""
    if redis is not None:
        client = Redis.from_url(redis.url(0))
        assert named(client.rpop(queue)) == (task, first)
        assert client.hlen("unacked") == 0
        return
    taker = subprocess.run([sys.executable, "-c", TAKER, queue], env=settings_env(env.settings),
                           capture_output=True, text=True, timeout=120)
    assert taker.returncode == -signal.SIGKILL, taker.stderr[-2000:]
    assert taker.stdout.split() == [task, f"({first},)"]


@pytest.fixture(params=["redis", "redis-dropped", "embedded"])
def broker_env(request, tmp_path, tiny_zoo):
    if request.param.startswith("redis"):
        redis = request.getfixturevalue("private_redis")
        env = make_env(tmp_path, tiny_zoo, broker_url=redis.url(0),
                       result_backend=redis.url(1), skills=("reverse",))
    else:
        env, redis = make_env(tmp_path, tiny_zoo, skills=("reverse",)), None
    env.settings = env.settings.model_copy(update={"stranded_after_s": QUIET_S})
    yield request.param, env, redis
    env.catalog.close()


def test_a_message_taken_by_a_killed_worker_before_its_claim_is_not_lost(broker_env, figures):
    kind, env, redis = broker_env
    job_id = queue(env, "reverse")
    _take(env, STAGE_QUEUES["prepare"], "workers.learn.prepare", job_id,
          redis if kind == "redis-dropped" else None)
    job = env.job(job_id)
    assert job.status == JobStatus.queued and job.owner_pid is None  # nobody owns it
    if kind == "redis":  # the message sits in Redis's unacked hash, not on any queue
        assert Redis.from_url(redis.url(0)).hlen("unacked") == 1

    with env.worker():
        job = env.wait(job_id, timeout=300)
    summary = assert_nothing_lost(env, [job_id], f"{kind} broker")
    assert job.status == JobStatus.succeeded, (job.status, job.error)
    logs = "".join(p.read_text(errors="replace") for p in env.logs.glob("*.log"))
    recovered = {"redis": f"put back job {job_id}'s prepare message",
                 "redis-dropped": f"sent job {job_id} again from prepare",
                 "embedded": f"sent job {job_id} again from prepare"}[kind]
    assert recovered in logs
    with env.catalog.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(SkillPack)) == 1
    if redis is not None:  # the put-back message was taken again and acknowledged
        assert Redis.from_url(redis.url(0)).hlen("unacked") == 0
    figures.update(broker=kind, attempts=job.attempts, **summary)


def test_a_run_message_taken_by_a_killed_worker_before_its_claim_is_not_lost(broker_env,
                                                                             figures):
    kind, env, redis = broker_env
    spec = parse_spec({"name": "taken", "base": "tiny-llama", "skills": [{"name": "reverse"}],
                       "methods": {"naive_ft": None}, "seeds": [0], "eval_limit": 10,
                       "train": {"max_steps": 20, "batch_size": 8, "eval_every": 20}})
    with env.catalog.session() as s:
        run_id = queue_experiment(s, env.settings, spec, blobs=env.catalog.blobs).runs[0].id
    _take(env, GPU_QUEUE, EXPERIMENT_RUN_TASK, run_id, redis if kind == "redis-dropped" else None)
    run = run_of(env, run_id)
    assert run.status == JobStatus.queued and run.owner_pid is None  # nobody owns it
    if kind == "redis":
        assert Redis.from_url(redis.url(0)).hlen("unacked") == 1

    with env.worker():
        run = wait_run(env, run_id, lambda r: JobStatus(r.status).finished, timeout=300)
    logs = "".join(p.read_text(errors="replace") for p in env.logs.glob("*.log"))
    assert (run.status, run.error) == (JobStatus.succeeded, None), logs[-3000:]
    assert run.result["accuracy_matrix"]
    recovered = {"redis": f"put back experiment run {run_id}'s run message",
                 "redis-dropped": f"sent experiment run {run_id} again: its message was taken",
                 "embedded": f"sent experiment run {run_id} again: its message was taken"}[kind]
    assert recovered in logs
    if redis is not None:
        assert Redis.from_url(redis.url(0)).hlen("unacked") == 0
    figures.update(broker=kind, run=run_id)
