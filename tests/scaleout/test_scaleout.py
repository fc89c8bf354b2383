"""Workers on separate gpu/cpu queues share one PostgreSQL catalog, one broker and S3 blobs."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
import uuid
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from skillstore.catalog import JobStatus, PackStatus, current_head
from skillstore.catalog.models import Job, Promotion, SkillPack
from skillstore.jobqueue import (
    CPU_QUEUE,
    GPU_QUEUE,
    TASK_ROUTES,
    settings_env,
    spawn_worker,
    stop_worker,
    worker_command,
)
from skillstore.pipeline import STAGES
from tests.workerenv import FAST_OPTIONS, FAST_TRAIN, queue_job

from .conftest import make_scaleout_env, missing, s3_objects, s3_settings

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
RECEIVED = re.compile(r"Task (workers\.learn\.\w+)\[[0-9a-f-]+\] received")


@dataclass
class Run:
    env: object
    jobs: dict[str, list[int]]  # base -> job ids in the order they were queued
    logs: dict[tuple[str, ...], str]  # a worker's queues -> its log
    seconds: float


def run_jobs(tmp_path, zoo, settings, *, bases: int, skills: tuple[str, ...],
             workers: tuple[tuple[str, ...], ...], timeout: float, own_homes: bool = False) -> Run:
    """Start one worker process per entry of `workers` (its queues), queue len(skills) jobs on
    each of `bases` bases interleaved across bases, and wait until every job has finished.

    With `own_homes` each worker gets a SKILLSTORE_HOME of its own and cannot see the others'
    (an empty tmpfs is mounted over them in its mount namespace), as on separate hosts that
    share only the database, the broker, the blob store and the read-only model folders."""
    env, names = make_scaleout_env(tmp_path, zoo, settings, bases=bases, skills=skills)
    jobs: dict[str, list[int]] = defaultdict(list)
    paths = {q: env.logs / f"worker-{'-'.join(q)}.log" for q in workers}
    started = time.monotonic()
    with ExitStack() as stack:
        homes = {q: tmp_path / f"host-{'-'.join(q)}" for q in workers}
        for queues, log in paths.items():
            hostname = f"{'-'.join(queues)}-{uuid.uuid4().hex[:6]}@%h"
            if own_homes:
                others = [settings.home] + [h for q, h in homes.items() if q != queues]
                proc = spawn_isolated(settings.model_copy(update={"home": homes[queues]}), queues,
                                      log, hostname, hide=others)
            else:
                proc = spawn_worker(settings, queues, concurrency=1, log_path=log,
                                    hostname=hostname)
            stack.callback(stop_worker, proc)
        with env.catalog.session() as s:
            for skill in skills:
                for base in names:
                    jobs[base].append(queue_job(s, settings, skill, base, sft=FAST_TRAIN,
                                                         **FAST_OPTIONS))
        deadline = time.monotonic() + timeout
        for ids in jobs.values():
            for job_id in ids:
                env.wait(job_id, timeout=max(1.0, deadline - time.monotonic()), poll=1.0)
    return Run(env, dict(jobs), {q: p.read_text() for q, p in paths.items()},
               time.monotonic() - started)


def spawn_isolated(settings, queues, log: Path, hostname: str, hide: list[Path]):
    """A worker in a mount namespace of its own where each folder in `hide` is an empty tmpfs."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "true"], capture_output=True).returncode != 0:
        missing("`unshare -m` is not available (root and util-linux are needed)")
    for folder in hide:
        folder.mkdir(parents=True, exist_ok=True)
    mounts = " && ".join(f"mount -t tmpfs none {shlex.quote(str(f))}" for f in hide)
    argv = ["unshare", "-m", "sh", "-c", f'{mounts} && exec "$@"', "sh",
            *worker_command(queues, 1, hostname=hostname)]
    with open(log, "ab") as out:
        return subprocess.Popen(argv, env=settings_env(settings), start_new_session=True,
                                stdout=out, stderr=subprocess.STDOUT)


def assert_each_job_once_and_in_order(run: Run, s3_client, bucket: str) -> None:
    """Every job succeeded with exactly one pack row and one blob, and each base promoted its
    packs in the order its jobs were queued."""
    env = run.env
    all_ids = sorted(j for ids in run.jobs.values() for j in ids)
    with env.catalog.session() as s:
        jobs = {j.id: j for j in s.scalars(sa.select(Job).where(Job.id.in_(all_ids)))}
        bad = {j.id: (j.status.value, j.stage, j.error) for j in jobs.values()
               if j.status != JobStatus.succeeded}
        assert not bad, bad
        packs = list(s.scalars(sa.select(SkillPack)))
        # One pack row per job, made by that job; one blob per pack row, all in S3.
        assert sorted(p.metrics["job_id"] for p in packs) == all_ids
        assert {p.id for p in packs} == {j.pack_id for j in jobs.values()}
        digests = {p.blob_digest for p in packs}
        assert len(digests) == len(packs)
        objects = s3_objects(s3_client, bucket)
        for p in packs:
            hexpart = p.blob_digest.removeprefix("sha256:")
            assert objects[f"blobs/sha256/{hexpart[:2]}/{hexpart[2:]}"] == p.size_bytes
            env.catalog.blobs.verify(p.blob_digest)
        # The audit trail: each pack created once and promoted once, per base in queue order.
        audit = list(s.execute(sa.select(Promotion.pack_id, Promotion.to_status, SkillPack.base_id,
                                         SkillPack.metrics)
                               .join(SkillPack, SkillPack.id == Promotion.pack_id)
                               .order_by(Promotion.id)))
        assert Counter((a.pack_id, a.to_status) for a in audit) == Counter(
            {**{(p.id, PackStatus.candidate): 1 for p in packs},
             **{(p.id, PackStatus.promoted): 1 for p in packs}})
        promoted = defaultdict(list)
        for a in audit:
            if a.to_status == PackStatus.promoted:
                promoted[a.base_id].append(a.metrics["job_id"])
        by_base = {jobs[ids[0]].base_id: ids for ids in run.jobs.values()}
        assert dict(promoted) == by_base
        for base_id, ids in by_base.items():
            assert current_head(s, base_id).version == len(ids)
            # A later job on a base trained only after the earlier one had finished.
            for earlier, later in zip(ids, ids[1:], strict=False):
                assert jobs[later].outputs["train"]["started"] >= \
                    jobs[earlier].finished_at.timestamp()


def assert_queues_respected(run: Run) -> Counter:
    """A worker took only tasks routed to its queues, and each worker did some of the work."""
    done = Counter()
    for queues, log in run.logs.items():
        names = RECEIVED.findall(log)
        assert names, f"worker on {queues} received no task:\n{log[-2000:]}"
        routed = {TASK_ROUTES[n]["queue"] for n in names}
        assert routed <= set(queues), (queues, Counter(names))
        done.update({"-".join(queues): len(names)})
    return done


def stage_seconds(run: Run) -> dict[str, float]:
    """Mean seconds inside each step (recorded by the workers), for the report."""
    with run.env.catalog.session() as s:
        timings = [{st.stage: st.seconds for st in j.steps} for j in s.scalars(sa.select(Job))]
    return {st: round(sum(t.get(st, 0) for t in timings) / len(timings), 2) for st in STAGES}


@pytest.mark.redis
def test_three_workers_twelve_jobs_postgres_redis_s3(tmp_path, tiny_zoo, postgres_url,
                                                     private_redis, s3_bucket):
    endpoint, bucket, client = s3_bucket
    settings = s3_settings(tmp_path / "ws", endpoint, bucket, database_url=postgres_url,
                           broker_url=f"{private_redis}/0", result_backend=f"{private_redis}/1")
    run = run_jobs(tmp_path, tiny_zoo, settings, bases=3, skills=("reverse", "sort", "add", "case"),
                   workers=((GPU_QUEUE,), (CPU_QUEUE,), (GPU_QUEUE, CPU_QUEUE)), timeout=780)
    try:
        assert_each_job_once_and_in_order(run, client, bucket)
        done = assert_queues_respected(run)
        print(f"\nredis: 12 jobs on 3 bases in {run.seconds:.0f} s; tasks per worker {dict(done)}; "
              f"mean s per step {stage_seconds(run)}")
    finally:
        run.env.catalog.close()


@pytest.mark.rabbitmq
def test_two_workers_four_jobs_postgres_rabbitmq_s3(tmp_path, tiny_zoo, postgres_url,
                                                    rabbitmq_vhost, s3_bucket):
    endpoint, bucket, client = s3_bucket
    settings = s3_settings(tmp_path / "ws", endpoint, bucket, database_url=postgres_url,
                           broker_url=rabbitmq_vhost)
    run = run_jobs(tmp_path, tiny_zoo, settings, bases=2, skills=("reverse", "sort"),
                   workers=((GPU_QUEUE,), (CPU_QUEUE,)), timeout=600)
    try:
        assert_each_job_once_and_in_order(run, client, bucket)
        done = assert_queues_respected(run)
        print(f"\nrabbitmq: 4 jobs on 2 bases in {run.seconds:.0f} s; "
              f"tasks per worker {dict(done)}; mean s per step {stage_seconds(run)}")
    finally:
        run.env.catalog.close()


@pytest.mark.redis
def test_workers_on_separate_hosts_share_only_services(tmp_path, tiny_zoo, postgres_url,
                                                       private_redis, s3_bucket):
    """A gpu host and a cpu host with nothing on disk in common: the tuned checkpoint that the
    train step (gpu) leaves must reach the compress step (cpu) through the blob store."""
    endpoint, bucket, client = s3_bucket
    settings = s3_settings(tmp_path / "ws", endpoint, bucket, database_url=postgres_url,
                           broker_url=f"{private_redis}/0", result_backend=f"{private_redis}/1")
    run = run_jobs(tmp_path, tiny_zoo, settings, bases=1, skills=("reverse", "sort"),
                   workers=((GPU_QUEUE,), (CPU_QUEUE,)), timeout=600, own_homes=True)
    try:
        assert_each_job_once_and_in_order(run, client, bucket)
        assert_queues_respected(run)
        for job_id in next(iter(run.jobs.values())):
            tuned = run.env.job(job_id).outputs["train"]["tuned_dir"]
            assert tuned.startswith(str(tmp_path / "host-gpu"))
        # The cpu host fetched the checkpoint from S3 into its own home (the gpu host's is hidden).
        assert any((tmp_path / "host-cpu" / "work" / "checkpoints").iterdir())
    finally:
        run.env.catalog.close()
