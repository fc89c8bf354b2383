"""Four processes race to promote packs on one base (PostgreSQL): no lost update, full audit."""

from __future__ import annotations

import multiprocessing as mp

import sqlalchemy as sa

from skillstore.catalog import PackStatus, current_head, get_state, promotions_of
from skillstore.catalog.models import BaseCheckpoint, ModelState, Promotion, SkillPack
from tests.catalog.factories import base as make_base
from tests.catalog.factories import pack as make_pack
from tests.catalog.factories import skill as make_skill

PROCESSES = 4
PACKS_EACH = 3
# A loser re-reads and tries again, as a worker's gate task does (gate_pack's own attempts,
# then the task's transient retries); this bounds it so a livelock fails instead of hanging.
MAX_ROUNDS = 20


def promoter(url: str, pack_ids: list[int], barrier, results) -> None:
    """One racing process: gate each of its packs with a judge that always says promote."""
    from skillstore.catalog.db import make_engine, session_scope
    from skillstore.errors import PromotionConflictError
    from skillstore.gate import Decision, gate_pack
    from skillstore.states.view import extend_state

    engine = make_engine(url)
    conflicts = retried = 0
    barrier.wait()
    for pack_id in pack_ids:
        for _ in range(MAX_ROUNDS):
            try:
                with session_scope(engine) as s:
                    pack = s.get(SkillPack, pack_id)

                    def judge(session, current, version, pack=pack):
                        base = session.get(BaseCheckpoint, pack.base_id)
                        candidate = extend_state(session, base, current, pack)
                        return candidate, Decision(promote=True, new_skill=str(pack.skill_id)), \
                            f"report-of-pack-{pack.id}"

                    outcome = gate_pack(s, pack, judge, actor=f"racer:{pack_id}")
                    conflicts += outcome.attempts - 1
                break
            except (PromotionConflictError, sa.exc.IntegrityError):
                retried += 1
        else:
            results.put({"pack": pack_id, "error": "never promoted"})
    engine.dispose()
    results.put({"packs": pack_ids, "conflicts": conflicts, "retried": retried})


def test_four_processes_race_to_promote(postgres_url, figures):
    from skillstore.catalog import migrate
    from skillstore.catalog.db import make_engine, session_scope

    migrate.upgrade(postgres_url)
    engine = make_engine(postgres_url)
    with session_scope(engine) as s:
        base = make_base(s)
        packs = [make_pack(s, make_skill(s, f"skill{i}"), base, tag=f"p{i}")
                 for i in range(PROCESSES * PACKS_EACH)]
        ids, base_id = [p.id for p in packs], base.id
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=promoter, args=(postgres_url, ids[i::PROCESSES], barrier, results))
             for i in range(PROCESSES)]
    for p in procs:
        p.start()
    reports = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    assert not [r for r in reports if "error" in r], reports

    with session_scope(engine) as s:
        head = current_head(s, base_id)
        final = get_state(s, head.state_id)
        # No lost update: the head holds every pack, and moved once per promotion.
        assert sorted(m.pack_id for m in final.members) == sorted(ids)
        assert head.version == len(ids)
        for pack_id in ids:
            assert s.get(SkillPack, pack_id).status == PackStatus.promoted
            audit = promotions_of(s, pack_id)
            assert [(a.from_status, a.to_status) for a in audit] == [
                (None, PackStatus.candidate), (PackStatus.candidate, PackStatus.promoted)]
            assert audit[-1].report_ref == f"report-of-pack-{pack_id}"
        # The audit is one chain: each promotion's state is the previous one's plus its pack.
        promos = list(s.scalars(sa.select(Promotion).where(
            Promotion.to_status == PackStatus.promoted).order_by(Promotion.id)))
        assert len(promos) == len(ids)
        previous: list[int] = []
        for promo in promos:
            state = get_state(s, promo.state_id)
            members = [m.pack_id for m in state.members]
            assert members == previous + [promo.pack_id], (previous, members)
            if previous:
                parent = s.get(ModelState, state.parent_id)
                assert [m.pack_id for m in get_state(s, parent.id).members] == previous
            previous = members
        stamps = [p.created_at for p in promos]
        assert stamps == sorted(stamps)
    engine.dispose()
    figures.update(processes=PROCESSES, promotions=len(ids),
                   lost_races=sum(r["conflicts"] + r["retried"] for r in reports),
                   head_version=len(ids))


def cli_promoter(env: dict, pack_id: int, barrier, results) -> None:
    """`skillstore pack promote` in a process of its own, retried while it loses a race."""
    import contextlib
    import io
    import os
    import sys

    os.environ.update(env)
    from skillstore.cli import main

    barrier.wait()
    lost = []
    for _ in range(MAX_ROUNDS):
        err = io.StringIO()
        sys.argv = ["skillstore", "pack", "promote", str(pack_id), "--reason", "race"]
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        if code == 0:
            break
        lost.append(err.getvalue())
    results.put({"pack": pack_id, "code": code, "lost": lost})


def test_four_cli_promotions_race_on_a_new_base(tmp_path, postgres_url, figures):
    """The manual path: four `pack promote` commands at once on a base with no head yet. The
    losers get a one-line error that says to retry (never a traceback), and retrying wins."""
    from skillstore.catalog import migrate
    from skillstore.catalog.db import make_engine, session_scope

    migrate.upgrade(postgres_url)
    engine = make_engine(postgres_url)
    with session_scope(engine) as s:
        base = make_base(s, "fresh")
        ids = [make_pack(s, make_skill(s, f"cli{i}"), base, tag=f"c{i}").id
               for i in range(PROCESSES)]
        base_id = base.id
    env = {"SKILLSTORE_HOME": str(tmp_path / "ws"), "SKILLSTORE_DATABASE_URL": postgres_url}
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=cli_promoter, args=(env, pid, barrier, results)) for pid in ids]
    for p in procs:
        p.start()
    reports = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(r["code"] == 0 for r in reports), reports
    errors = [e for r in reports for e in r["lost"]]
    for e in errors:
        assert e.startswith("error: ") and e.count("\n") == 1 and "retry" in e, e
    with session_scope(engine) as s:
        head = current_head(s, base_id)
        assert sorted(m.pack_id for m in get_state(s, head.state_id).members) == sorted(ids)
        assert head.version == len(ids)
        for pack_id in ids:
            assert [a.to_status for a in promotions_of(s, pack_id)] == [
                PackStatus.candidate, PackStatus.promoted]
    engine.dispose()
    figures.update(processes=PROCESSES, promotions=len(ids), lost_races=len(errors))


def test_first_head_race_is_a_conflict_not_a_crash(postgres_url):
    """The race above, made deterministic: B starts while A's first promotion (the base's plain
    state and its first head) is flushed but not committed; A commits. B must end with a
    PromotionConflictError (one line, retryable), not an IntegrityError from adding the same
    base state again (that was the bug: get_or_create_state did not expect a racing insert)."""
    import threading

    from skillstore.blobstore import BlobStore
    from skillstore.catalog import migrate
    from skillstore.catalog.db import make_engine, session_scope
    from skillstore.errors import PromotionConflictError
    from skillstore.states import manual_override

    migrate.upgrade(postgres_url)
    engine = make_engine(postgres_url)
    with session_scope(engine) as s:
        base = make_base(s, "first")
        a_id, b_id = (make_pack(s, make_skill(s, n), base, tag=n).id for n in ("ha", "hb"))
    blobs = BlobStore("memory://first-head-race")  # plain states: no router to store
    a_flushed, b_reading = threading.Event(), threading.Event()
    outcome: dict = {}

    def promote_b():
        try:
            with session_scope(engine) as s:
                b_reading.set()
                manual_override(s, blobs, s.get(SkillPack, b_id), "promote",
                                reason="b", actor="b")
            outcome["b"] = "promoted"
        except Exception as exc:  # noqa: BLE001 - the test reports whatever B got
            outcome["b"] = exc

    with session_scope(engine) as s:
        manual_override(s, blobs, s.get(SkillPack, a_id), "promote", reason="a",
                        actor="a")
        a_flushed.set()
        thread = threading.Thread(target=promote_b)
        thread.start()
        b_reading.wait(timeout=30)
        thread.join(timeout=3)  # B blocks on A's uncommitted head row (or already lost)
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert isinstance(outcome["b"], PromotionConflictError), repr(outcome["b"])
    engine.dispose()
