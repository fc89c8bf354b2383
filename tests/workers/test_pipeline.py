"""A learning job runs end to end through a real worker on each broker and catalog database."""

from __future__ import annotations

import subprocess
import sys

import sqlalchemy as sa

from skillstore.catalog import JobStatus, PackStatus, current_head, get_state, promotions_of
from skillstore.catalog.models import EvalResult, LineageEdge, SkillPack
from skillstore.jobqueue import settings_env

from .conftest import FAST_OPTIONS, FAST_TRAIN, make_env, queue_job


def _queue(env, skill: str, **kw) -> int:
    with env.catalog.session() as s:
        return queue_job(s, env.settings, skill, "tiny-llama", sft=FAST_TRAIN,
                                  **FAST_OPTIONS, **kw)


def assert_learned(env, job_id: int, skill: str) -> SkillPack:
    """What a user would check: the job succeeded, one pack with lineage and a readable blob,
    a promotion that names its report, eval results for the candidate, and the head moved."""
    job = env.job(job_id)
    assert job.status == JobStatus.succeeded, (job.stage, job.error)
    assert job.progress == 1.0 and set(job.outputs) == {"prepare", "train", "compress",
                                                               "evaluate", "gate"}
    with env.catalog.session() as s:
        packs = list(s.scalars(sa.select(SkillPack).where(SkillPack.id == job.pack_id)))
        assert len(packs) == 1
        pack = packs[0]
        assert pack.status == PackStatus.promoted
        env.catalog.blobs.verify(pack.blob_digest)
        edges = list(s.scalars(sa.select(LineageEdge).where(LineageEdge.child_id == pack.id)))
        assert edges and edges[0].parent_base_id == pack.base_id
        audit = promotions_of(s, pack.id)
        assert [a.to_status for a in audit] == [PackStatus.candidate, PackStatus.promoted]
        env.catalog.blobs.verify(audit[-1].report_ref)
        head = current_head(s, pack.base_id)
        state = get_state(s, head.state_id)
        assert pack.id in [m.pack_id for m in state.members]
        evals = list(s.scalars(sa.select(EvalResult).where(EvalResult.state_id == state.id)))
        assert {e.suite for e in evals} >= {skill, "general"}
        # The evaluate step also scored the uncompressed fine-tune on the same prompts
        # (fidelity) and the plain base on the new skill (forward transfer).
        evaluated = job.outputs["evaluate"]
        finetune = evaluated["finetune"]
        assert finetune["suite"] == skill and finetune["n"] == FAST_OPTIONS["eval_limit"]
        assert finetune["version"] == evaluated["after"][skill]["version"]
        assert finetune["fingerprint"] == job.outputs["train"]["fingerprint"]
        assert pack.metrics["finetune"] == finetune
        assert pack.metrics["fidelity"]["pack"] == evaluated["after"][skill]["value"]
        env.catalog.blobs.verify(finetune["samples_digest"])
        root = get_state(s, state.id)
        while root.parent_id is not None:
            root = get_state(s, root.parent_id)
        assert not root.members
        assert s.scalar(sa.select(EvalResult.id).where(
            EvalResult.state_id == root.id, EvalResult.suite == skill)) is not None
    return pack


def test_learn_in_sequence_on_embedded_sqlite_broker(sqlite_env):
    env = sqlite_env
    first = _queue(env, "reverse")
    second = _queue(env, "sort")
    assert env.job(first).status == JobStatus.queued
    with env.worker(concurrency=2):  # two processes: only the sequencing keeps them in order
        env.wait(first)
        waited = subprocess.run([sys.executable, "-m", "skillstore.cli", "job", "wait", str(second),
                                 "--timeout", "300"],
                                env={**settings_env(env.settings), "COLUMNS": "200"},
                                capture_output=True, text=True, timeout=360)
    assert waited.returncode == 0, waited.stderr
    assert f"job {second} sort" in waited.stdout and "100%" in waited.stdout
    assert_learned(env, first, "reverse")
    pack = assert_learned(env, second, "sort")
    # The second job trained only after the first had finished, and its pack joined the state
    # the first promoted.
    assert env.job(second).outputs["train"]["started"] >= env.job(first).finished_at.timestamp()
    with env.catalog.session() as s:
        state = get_state(s, current_head(s, pack.base_id).state_id)
        skills = [s.get(SkillPack, m.pack_id).skill_id for m in state.members]
        assert skills == [env.job(first).skill_id, env.job(second).skill_id]
        assert state.router == "learned" and state.router_blob_digest
    assert_reuse_equals_a_full_evaluation(env, second, "reverse")


def assert_reuse_equals_a_full_evaluation(env, job_id: int, earlier: str) -> None:
    """The job's evaluate step copied the current state's outcomes on the earlier skill's
    prompts that the candidate routes as before, and ran the rest: running the whole suite on
    the candidate again gives exactly the outcomes its eval row holds."""
    from skillstore.catalog.models import BaseCheckpoint
    from skillstore.evaluation.loader import state_loader
    from skillstore.evaluation.runner import run_tasks
    from skillstore.evaluation.scores import suite_scores
    from skillstore.evaluation.suites import state_suites
    from skillstore.models import load_causal_lm
    from skillstore.states import load_view

    evaluated = env.job(job_id).outputs["evaluate"]
    reuse, limit = evaluated["reuse"], FAST_OPTIONS["eval_limit"]
    copied = sum(len(docs) for docs in reuse["reused"].get(earlier, {}).values())
    assert copied + reuse["evaluated"].get(earlier, 0) == limit, reuse  # each doc one way
    assert copied > 0, reuse  # else the comparison below is a full run against a full run
    with env.catalog.session() as s:
        candidate = get_state(s, evaluated["candidate_state_id"])
        view = load_view(s, candidate)
        (suite,) = state_suites(s, [earlier])
        stored = suite_scores(s, candidate.id, [suite], limit=limit,
                              blobs=env.catalog.blobs)[earlier]
        model, tok = load_causal_lm(s.get(BaseCheckpoint, candidate.base_id).uri)
        with state_loader(model, tok, view, env.catalog.blobs)(suite) as (m, t):
            full = run_tasks(m, t, list(suite.tasks), include_path=suite.include_path,
                             limit=limit)
    (row,) = [r for r in full if r.metric == stored.metric]
    assert row.samples == stored.samples


def test_learn_on_redis_broker_with_postgres_catalog(tmp_path, tiny_zoo, redis_url, postgres_url):
    env = make_env(tmp_path, tiny_zoo, database_url=postgres_url, broker_url=redis_url,
                   result_backend=redis_url)
    try:
        job_id = _queue(env, "sort")
        with env.worker():
            env.wait(job_id)
        assert_learned(env, job_id, "sort")
    finally:
        env.catalog.close()
