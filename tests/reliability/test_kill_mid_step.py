"""SIGKILL a worker mid-train and mid-compress: another worker finishes the job exactly once.
(The deterministic twin of test_worker_kills' random kills.)"""

from __future__ import annotations

import sqlalchemy as sa

from skillstore.catalog import JobStatus, PackStatus
from skillstore.catalog.models import Promotion, SkillPack
from skillstore.jobqueue import spawn_worker, stop_worker
from tests.workers.conftest import FAST_OPTIONS, queue_job, sqlite_env  # noqa: F401 - a fixture
from tests.workers.test_pipeline import assert_learned

# Long enough that a kill seen at a quarter of training lands well before it ends, even on an
# idle machine where progress is written at most once a second.
LONG_TRAIN = {"max_steps": 800, "batch_size": 8, "eval_every": 100, "patience": 100}


def _kill_when(env, job_id, until, poll=0.02):
    worker = spawn_worker(env.settings, concurrency=1, log_path=env.logs / "crash.log")
    try:
        env.wait(job_id, until=until, poll=poll)
    finally:
        stop_worker(worker, kill=True)
    return env.job(job_id)


def test_sigkill_mid_train_and_mid_compress_finishes_once(sqlite_env):  # noqa: F811
    env = sqlite_env
    with env.catalog.session() as s:
        job_id = queue_job(s, env.settings, "reverse", "tiny-llama", sft=LONG_TRAIN,
                                    **FAST_OPTIONS)

    # Killed while training: some progress was reported, nothing else happened yet.
    job = _kill_when(env, job_id, lambda j: j.stage == "train" and j.progress > 0.25)
    assert job.status == JobStatus.running and "train" not in job.outputs

    # The next worker finds the orphan, trains again, and is killed as compression starts.
    job = _kill_when(env, job_id, lambda j: j.stage == "compress")
    assert job.status == JobStatus.running and "train" in job.outputs
    assert "compress" not in job.outputs, "compression finished before the kill"

    with env.worker():
        env.wait(job_id)
    pack = assert_learned(env, job_id, "reverse")
    with env.catalog.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(SkillPack)) == 1
        promos = list(s.scalars(sa.select(Promotion).where(Promotion.pack_id == pack.id)))
        assert [p.to_status for p in promos] == [PackStatus.candidate, PackStatus.promoted]
        assert promos[-1].report_ref
    # No half-written blob: every stored blob hashes to its name and nothing is left staged.
    blobs = list(env.catalog.blobs.iter_blobs())
    for info in blobs:
        env.catalog.blobs.verify(info.digest)
    staged = env.settings.home / "blobs" / "tmp"
    assert not staged.exists() or not any(staged.iterdir())
    # The killed attempts' scratch folders (a half-saved checkpoint, a half-written pack) are
    # swept by the next worker; finished steps remove their own.
    scratch = env.settings.home / "work" / "tmp"
    assert not scratch.exists() or sorted(p.name for p in scratch.iterdir()) == []
    assert env.job(job_id).attempts > 5  # steps really ran again after each kill
