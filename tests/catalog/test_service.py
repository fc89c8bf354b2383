"""Catalog service functions: versions, status audit, states, heads, eval results, timestamps."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from factories import base, digest, pack, skill
from sqlalchemy.exc import IntegrityError

from skillstore.catalog import (
    JobStatus,
    PackStatus,
    advance_head,
    create_job,
    current_state,
    eval_results,
    get_or_create_state,
    get_pack,
    list_packs,
    promotions_of,
    record_eval_result,
    set_pack_status,
    state_fingerprint,
)
from skillstore.catalog.db import session_scope
from skillstore.catalog.models import Job
from skillstore.errors import ConfigError, NotFoundError, PromotionConflictError
from skillstore.pipeline.lifecycle import JobCancelled, begin, fail, finish, set_progress


def test_versions_and_refs(session):
    b, s = base(session), skill(session)
    p1, p2 = pack(session, s, b, tag="1"), pack(session, s, b, tag="2")
    assert (p1.version, p2.version) == (1, 2)
    assert get_pack(session, "arith@v2").id == p2.id
    assert get_pack(session, "arith@1").id == p1.id
    assert get_pack(session, str(p1.id)).version == 1
    with pytest.raises(NotFoundError, match="no pack version 9"):
        get_pack(session, "arith@v9")
    with pytest.raises(NotFoundError, match="No skill named 'arithm'.*'arith'"):
        get_pack(session, "arithm@v1")
    assert p1.created_at.tzinfo is not None


def test_status_changes_are_audited_and_append_only(session):
    b, s = base(session), skill(session)
    p = pack(session, s, b)
    set_pack_status(session, p, "promoted", reason="gate passed", actor="gate", report_ref="r1")
    set_pack_status(session, p, "retired", reason="superseded", actor="alice")
    with pytest.raises(ConfigError, match="cannot become candidate"):
        set_pack_status(session, p, "candidate", reason="x", actor="alice")
    with pytest.raises(ConfigError, match="needs a reason"):
        set_pack_status(session, p, "promoted", reason=" ", actor="alice")
    trail = [(a.from_status, a.to_status, a.actor) for a in promotions_of(session, p.id)]
    assert trail == [(None, PackStatus.candidate, "system"),
                     (PackStatus.candidate, PackStatus.promoted, "gate"),
                     (PackStatus.promoted, PackStatus.retired, "alice")]
    audit = promotions_of(session, p.id)[1]
    audit.reason = "rewritten"
    with pytest.raises(RuntimeError, match="append-only"):
        session.flush()
    session.rollback()


def test_list_packs_filters_and_pages(session):
    b, s1, s2 = base(session), skill(session, "a"), skill(session, "b")
    made = [pack(session, (s1, s2)[i % 2], b, tag=str(i)) for i in range(30)]
    for p in made[::3]:
        set_pack_status(session, p, "promoted", reason="ok", actor="t")
    page = list_packs(session, skill=s1, status="promoted", limit=3)
    expected = sorted((p.id for p in made[::3] if p.skill_id == s1.id), reverse=True)
    assert [p.id for p in page.packs] == expected[:3]
    assert page.total == len(expected)
    page2 = list_packs(session, skill=s1, status="promoted", limit=3, offset=3)
    assert [p.id for p in page2.packs] == expected[3:6]


def test_states_are_idempotent_and_heads_compare_and_swap(session):
    b, s = base(session), skill(session)
    p1, p2 = pack(session, s, b, tag="1"), pack(session, s, b, tag="2")
    st1 = get_or_create_state(session, base=b, packs=[(p1, 1.0)], router="tag")
    again = get_or_create_state(session, base=b, packs=[(p1, 1.0)], router="tag")
    assert again.id == st1.id
    st2 = get_or_create_state(session, base=b, packs=[(p1, 1.0), (p2, 0.5)], router="learned",
                              router_blob_digest=digest("router"), parent_id=st1.id)
    assert [(m.pack_id, m.scale) for m in st2.members] == [(p1.id, 1.0), (p2.id, 0.5)]
    swapped = get_or_create_state(session, base=b, packs=[(p2, 0.5), (p1, 1.0)], router="learned",
                                  router_blob_digest=digest("router"))
    assert swapped.id != st2.id  # order is part of a state
    assert st1.fingerprint == state_fingerprint(b.fingerprint, [(p1.blob_digest, 1)], "tag")

    head = advance_head(session, b.id, st1.id, expected_version=None)
    assert current_state(session, b.id).id == st1.id
    advance_head(session, b.id, st2.id, expected_version=head.version)
    with pytest.raises(PromotionConflictError):  # a racer that read version 1 loses
        advance_head(session, b.id, swapped.id, expected_version=1)
    assert current_state(session, b.id).id == st2.id


def test_eval_results_are_unique_per_cache_key(session):
    b, s = base(session), skill(session)
    st = get_or_create_state(session, base=b, packs=[], router="none")
    kw = dict(state_id=st.id, suite="arith_suite", suite_version="v1", task="arith_add",
              metric="acc", value=0.5, stderr=0.05, n=100, lm_eval_version="0.4.13",
              skill_id=s.id)
    record_eval_result(session, **kw)
    assert [r.value for r in eval_results(session, st.id, task="arith_add")] == [0.5]
    with pytest.raises(IntegrityError):
        with session.begin_nested():
            record_eval_result(session, **kw)
    assert len(eval_results(session, st.id)) == 1


def test_job_lifecycle(engine):
    with session_scope(engine) as session:
        job = create_job(session, kind="learn", request={"skill": "arith"})
        begin(session, job.id, "train", "host", 1)
        set_progress(session, job.id, "train", 0.25)
        job_id = job.id
    with session_scope(engine) as session:
        from skillstore.catalog import get_job
        job = get_job(session, job_id)
        assert ((job.status.value, job.stage, job.progress, job.attempts)
                == ("running", "train", 0.25, 1))
        fail(session, job, "NaN loss at step 3\nTraceback ...", stage="train")
    with session_scope(engine) as session:
        job = get_job(session, job_id)
        assert job.error == "NaN loss at step 3"
        assert job.finished_at.tzinfo is not None
        n = session.scalar(sa.select(sa.func.count()).select_from(type(job)))
        assert n == 1


def test_progress_from_a_twin_attempt_never_rewrites_a_finished_job(engine, monkeypatch):
    """A step still running beside a twin that finishes the job (a redelivered message after a
    worker was killed): whenever the twin commits, the job ends succeeded at progress 1.0."""
    from skillstore.catalog import get_job
    from skillstore.pipeline import lifecycle

    with session_scope(engine) as session:
        job = create_job(session, kind="learn", request={"skill": "arith"})
        begin(session, job.id, "compress", "host", 1)
        job_id = job.id
    finished = []

    def twin_finishes() -> None:
        if not finished:
            with session_scope(engine) as twin:
                finish(twin, get_job(twin, job_id))
            finished.append(True)

    def read_then_twin(session, ref):  # the twin commits right after any read of the job
        job = get_job(session, ref)
        twin_finishes()
        return job

    monkeypatch.setattr(lifecycle, "get_job", read_then_twin)
    with session_scope(engine) as late:
        try:
            lifecycle.set_progress(late, job_id, "compress", 0.6)
        except JobCancelled:
            pass  # it saw the twin's finish: the step stops
    twin_finishes()  # or the twin commits after the write
    with session_scope(engine) as session:
        job = get_job(session, job_id)
        assert (job.status.value, job.progress) == ("succeeded", 1.0)
    with session_scope(engine) as late, pytest.raises(JobCancelled, match="succeeded during"):
        lifecycle.set_progress(late, job_id, "compress", 0.6)


def test_racing_head_updates_lose_nothing(engine):
    """Two deciders read the same head; the second writer waits, then gets a conflict."""
    import threading

    from sqlalchemy.orm import Session

    with session_scope(engine) as s:
        b, k = base(s), skill(s)
        p1, p2 = pack(s, k, b, tag="1"), pack(s, k, b, tag="2")
        s0 = get_or_create_state(s, base=b, packs=[], router="none")
        s1 = get_or_create_state(s, base=b, packs=[(p1, 1.0)], router="none")
        s2 = get_or_create_state(s, base=b, packs=[(p2, 1.0)], router="none")
        version = advance_head(s, b.id, s0.id, expected_version=None).version
        ids = (b.id, s1.id, s2.id)
    base_id, first, second = ids
    outcome = {}

    a = Session(engine)
    advance_head(a, base_id, first, expected_version=version)  # holds the row until commit

    def racer():
        with Session(engine) as other:
            try:
                advance_head(other, base_id, second, expected_version=version)
                other.commit()
                outcome["racer"] = "won"
            except PromotionConflictError:
                other.rollback()
                outcome["racer"] = "conflict"

    thread = threading.Thread(target=racer)
    thread.start()
    thread.join(0.5)
    assert thread.is_alive(), "the racer must wait for the first writer, not pass it"
    a.commit()
    a.close()
    thread.join(30)
    assert outcome == {"racer": "conflict"}
    with session_scope(engine) as s:
        assert current_state(s, base_id).id == first


@pytest.mark.parametrize("ref", ["99999999999", str(2**31), "1" + "0" * 30])
def test_ids_beyond_the_primary_key_range_are_not_found(session, ref):
    """PostgreSQL refuses to compare such a number with an int4 key; it must read as 'no row'."""
    from skillstore.catalog import get_base, get_job, get_skill, get_state

    b, s = base(session), skill(session)
    pack(session, s, b)
    for lookup in (get_pack, get_base, get_skill, get_job, get_state):
        with pytest.raises(NotFoundError):
            lookup(session, ref)
    # None of the lookups reached the database with the number: the transaction still works.
    assert get_pack(session, "arith@v1").version == 1


def test_a_job_held_only_for_a_step_it_recorded_or_never_began_is_sent_again(engine,
                                                                             monkeypatch):
    """After a broker restart, a job is kept going by a queued message, or by a held
    (unacknowledged) message for the step it is running. A held message for a step it did
    record (the ack and the next step's message were lost with the broker), or for one it
    never began (the task failed before its body), keeps nothing going for sure: such a job
    is unsure, and the final look sends it again from its next step, as it does a job no
    message names."""
    from skillstore.pipeline import lifecycle

    sent = []
    monkeypatch.setattr(lifecycle, "send_chain",
                        lambda session, settings, job, stage: sent.append((job.id, stage)))
    with session_scope(engine) as session:
        ids = []
        for _ in range(5):
            job = create_job(session, kind="learn", request={"skill": "arith"})
            begin(session, job.id, "compress", "host", 1)
            for stage in ("prepare", "train", "compress"):
                lifecycle.record_output(session, job, stage, {"done": True})
            ids.append(job.id)
        finished_step, running_step, never_begun, queued, nothing = ids
        begin(session, running_step, "evaluate", "host", 1)
        held = {finished_step: {"compress"}, running_step: {"evaluate"},
                never_begun: {"evaluate"}}
        lost, unsure = lifecycle.unreferenced_jobs(session, {queued}, held)
        assert ([j.id for j in lost], [j.id for j in unsure]) == (
            [nothing], [finished_step, never_begun])
        first, left = lifecycle.resend_unreferenced(session, None, {queued}, held,
                                                    unsure_too=False)
        assert ([j.id for j in first], [j.id for j in left]) == (
            [nothing], [finished_step, never_begun])
        assert sent == [(nothing, "evaluate")]
        final, left = lifecycle.resend_unreferenced(session, None, {queued}, held)
    assert ([j.id for j in final], left) == ([finished_step, never_begun, nothing], [])
    assert sent[1:] == [(finished_step, "evaluate"), (never_begun, "evaluate"),
                        (nothing, "evaluate")]


def test_only_sent_unclaimed_quiet_queued_jobs_count_as_unclaimed(engine, monkeypatch):
    """`unclaimed_jobs` names the queued jobs whose message may have died with a worker: sent,
    never claimed, and unchanged for the quiet time. A retried job is queued afresh, unowned."""
    from datetime import timedelta

    from skillstore.catalog import attach_task
    from skillstore.catalog.schema import utcnow
    from skillstore.pipeline import lifecycle

    monkeypatch.setattr(lifecycle, "send_chain", lambda session, settings, job, stage: None)
    with session_scope(engine) as session:
        jobs = {name: create_job(session, kind="learn", request={"skill": "arith"})
                for name in ("stranded", "unsent", "claimed", "fresh", "running", "retried")}
        for name, job in jobs.items():
            if name != "unsent":
                attach_task(session, job, f"task-{name}")
        lifecycle.set_owner(jobs["claimed"], "host", 7)
        begin(session, jobs["running"].id, "prepare", "host", 8)
        begin(session, jobs["retried"].id, "prepare", "host", 9)
        fail(session, jobs["retried"], "boom", stage="prepare")
        lifecycle.retry(session, None, jobs["retried"].id)
        assert jobs["retried"].owner_pid is None and jobs["retried"].status == JobStatus.queued
        session.flush()
        an_hour_ago = utcnow() - timedelta(hours=1)
        session.execute(sa.update(Job).where(Job.id != jobs["fresh"].id)
                        .values(updated_at=an_hour_ago))
        found = [j.id for j in lifecycle.unclaimed_jobs(session, quiet_s=60)]
    assert found == [jobs["stranded"].id, jobs["retried"].id]
