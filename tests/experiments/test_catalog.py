"""Experiment rows: the tables round-trip through their migration, an experiment is stored with
its planned runs, found by id or name, cancelled, and its status follows its runs'."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from skillstore.catalog import JobStatus, migrate
from skillstore.catalog.db import make_engine
from skillstore.catalog.models import Experiment, ExperimentRun
from skillstore.catalog.schema import utcnow
from skillstore.errors import JobError, NotFoundError
from skillstore.experiments import parse_spec
from skillstore.experiments.catalog import (
    begin_run,
    cancel_experiment,
    claim_run,
    create_experiment,
    derived_status,
    fail_run,
    finish_run,
    get_experiment,
    list_experiments,
    mark_sent,
    orphaned_runs,
    report_progress,
    requeue_run,
    unclaimed_runs,
)

from .conftest import spec_doc

Q, R, S, F, C = (JobStatus.queued, JobStatus.running, JobStatus.succeeded, JobStatus.failed,
                 JobStatus.cancelled)


def test_the_tables_come_and_go_with_their_migration(db_url):
    migrate.upgrade(db_url)
    migrate.check(db_url)  # the models and migration 0005 agree
    engine = make_engine(db_url)
    tables = set(sa.inspect(engine).get_table_names())
    assert {"experiments", "experiment_runs"} <= tables
    uniques = sa.inspect(engine).get_unique_constraints("experiment_runs")
    assert [u["column_names"] for u in uniques] == [["experiment_id", "method", "seed"]]
    migrate.downgrade(db_url, "0004")
    assert not {"experiments", "experiment_runs"} & set(sa.inspect(engine).get_table_names())
    migrate.upgrade(db_url)
    assert {"experiments", "experiment_runs"} <= set(sa.inspect(engine).get_table_names())
    engine.dispose()


def test_an_experiment_is_stored_with_its_spec_and_one_queued_run_per_method_and_seed(
        session, spec):
    experiment = create_experiment(session, spec)
    session.commit()
    assert experiment.status == Q and experiment.spec == spec.as_json()
    assert experiment.spec_sha256.startswith("sha256:")
    assert [(r.method, r.seed, r.status) for r in experiment.runs] == [
        ("naive_ft", 0, Q), ("naive_ft", 1, Q), ("joint", 0, Q), ("joint", 1, Q)]
    assert parse_spec(experiment.spec).as_json() == spec.as_json()  # read back whole
    twin = create_experiment(session, spec)
    assert twin.spec_sha256 == experiment.spec_sha256 and twin.id != experiment.id
    session.add(ExperimentRun(experiment_id=experiment.id, method="joint", seed=0))
    with pytest.raises(sa.exc.IntegrityError):  # one run per (method, seed)
        session.flush()
    session.rollback()


def test_found_by_id_or_newest_of_a_name_and_listed_newest_first(session, spec):
    first = create_experiment(session, spec)
    other = create_experiment(session, parse_spec(spec_doc(name="other")))
    second = create_experiment(session, spec)
    assert get_experiment(session, first.id) is first
    assert get_experiment(session, str(other.id)) is other
    assert get_experiment(session, "two-skills") is second
    assert [e.id for e in list_experiments(session)] == [second.id, other.id, first.id]
    assert [e.id for e in list_experiments(session, limit=1, offset=1)] == [other.id]
    for ref in (999, "nope", "99999999999999"):
        with pytest.raises(NotFoundError, match=r"`skillstore experiment list`"):
            get_experiment(session, ref)


@pytest.mark.parametrize("runs, status", [
    ([Q, Q], Q), ([R, Q], R), ([S, Q], R), ([F, R], R), ([S, S], S), ([S, F], F),
    ([F, C], F), ([S, C], C), ([C, C], C),
])
def test_the_experiments_status_is_derived_from_its_runs(runs, status):
    assert derived_status(runs) == status


def test_a_failed_run_leaves_the_others_going_and_keeps_its_error(session, spec):
    experiment = create_experiment(session, spec)
    a, b, c, d = (r.id for r in experiment.runs)
    begin_run(session, a)
    begin_run(session, b)
    assert experiment.status == R
    assert fail_run(session, a, "TrainingError: the loss is NaN at step 3\nTraceback ...")
    assert experiment.status == R  # b is still running, c and d queued
    assert finish_run(session, b, {"accuracy_matrix": [[1.0]]})
    for run_id in (c, d):
        begin_run(session, run_id)
        finish_run(session, run_id, {"accuracy_matrix": [[0.5]]})
    session.refresh(experiment)
    assert experiment.status == F and experiment.finished_at is not None
    runs = {r.id: r for r in experiment.runs}
    assert runs[a].error == "TrainingError: the loss is NaN at step 3" and runs[a].result is None
    assert [runs[i].status for i in (b, c, d)] == [S, S, S]
    assert begin_run(session, a) is None  # a finished run is never begun again


def test_cancel_stops_queued_and_running_runs_and_keeps_finished_ones(session, spec):
    experiment = create_experiment(session, spec)
    a, b, c, _ = (r.id for r in experiment.runs)
    begin_run(session, a)
    finish_run(session, a, {"accuracy_matrix": [[1.0]]})
    begin_run(session, b)
    assert not report_progress(session, b, "arith:train", 0.5)
    cancelled = cancel_experiment(session, str(experiment.id))
    assert cancelled.status == C and cancelled.finished_at is not None
    assert [r.status for r in cancelled.runs] == [S, C, C, C]
    assert report_progress(session, b, "arith:train", 0.6)  # the running task stops on it
    assert not finish_run(session, b, {"late": True})  # a cancelled run keeps its status
    assert session.get(ExperimentRun, b).result is None
    assert begin_run(session, c) is None  # a queued message for a cancelled run does nothing
    with pytest.raises(JobError, match="nothing to cancel"):
        cancel_experiment(session, experiment.id)
    assert session.scalar(sa.select(sa.func.count()).select_from(Experiment)) == 1


def test_runs_of_a_dead_worker_on_this_host_are_orphans_and_go_back_to_the_queue(session, spec):
    experiment = create_experiment(session, spec)
    a, b, c, d = (r.id for r in experiment.runs)
    for run_id, host, pid in ((a, "here", 11), (b, "here", 12), (c, "there", 11), (d, "here", 13)):
        assert claim_run(session, run_id, host, pid)
    assert claim_run(session, a, "here", 99)  # a message taken again: its taker owns it
    assert claim_run(session, a, "here", 11)
    begin_run(session, a)
    begin_run(session, b)
    finish_run(session, b, {"accuracy_matrix": [[1.0]]})
    assert not claim_run(session, b, "here", 99)  # finished runs are never claimed
    session.expire_all()
    dead = {11, 12}
    orphans = orphaned_runs(session, "here", lambda pid: pid not in dead)
    # a: running, its worker dead; b: finished; c: another host's; d: its worker alive
    assert [r.id for r in orphans] == [a]
    requeue_run(session, orphans[0])
    session.flush()
    run = session.get(ExperimentRun, a)
    assert (run.status, run.owner_host, run.owner_pid, run.started_at) == (Q, None, None, None)
    assert orphaned_runs(session, "here", lambda pid: False) == [session.get(ExperimentRun, d)]
    assert claim_run(session, a, "here", 14)  # the next worker to take it owns it


def test_unclaimed_runs_are_queued_ones_sent_long_ago_that_no_worker_took(session, spec):
    """The runs whose message may have died with a worker killed before its claim."""
    experiment = create_experiment(session, spec)
    never, claimed, finished, stranded = experiment.runs
    assert unclaimed_runs(session, 60) == []  # nothing was sent yet
    mark_sent(session, experiment.runs)
    assert unclaimed_runs(session, 60) == []  # sent just now: a worker may be taking it
    session.execute(sa.update(ExperimentRun).values(sent_at=utcnow() - timedelta(hours=1)))
    session.execute(sa.update(ExperimentRun).where(ExperimentRun.id == never.id)
                    .values(sent_at=None))
    assert claim_run(session, claimed.id, "here", 11)
    begin_run(session, finished.id)
    finish_run(session, finished.id, {"accuracy_matrix": [[1.0]]})
    session.expire_all()
    assert unclaimed_runs(session, 60) == [session.get(ExperimentRun, stranded.id)]
    mark_sent(session, [session.get(ExperimentRun, stranded.id)])  # sent again: quiet anew
    assert unclaimed_runs(session, 60) == []


def test_a_running_run_reports_its_step_and_stops_once_cancelled(session, spec):
    experiment = create_experiment(session, spec)
    a, b = (r.id for r in experiment.runs[:2])
    assert report_progress(session, a, "reverse:train", 0.3)  # queued: not running, no write
    assert session.get(ExperimentRun, a).progress is None
    begin_run(session, a)
    assert (session.get(ExperimentRun, a).stage, session.get(ExperimentRun, a).progress) == (
        None, 0.0)
    assert not report_progress(session, a, "reverse:train", 0.3)
    session.expire_all()
    run = session.get(ExperimentRun, a)
    assert (run.stage, run.progress) == ("reverse:train", 0.3)
    assert not report_progress(session, a, "x" * 80, 1.7)  # clipped to the column and to 1
    session.expire_all()
    assert (len(run.stage), run.progress) == (64, 1.0)
    cancel_experiment(session, experiment.id)
    assert report_progress(session, a, "sort:train", 0.6)  # cancelled: the task stops on it
    session.expire_all()
    assert session.get(ExperimentRun, a).stage == "x" * 64  # and nothing was written
    assert session.get(ExperimentRun, b).progress is None


def test_following_an_experiment_calls_back_once_for_each_run_as_it_finishes(tmp_path):
    from rich.console import Console

    from skillstore.catalog import add_skill, init_workspace, register_base
    from skillstore.cli.job_watch import follow_runs
    from skillstore.settings import Settings

    catalog = init_workspace(Settings(home=tmp_path / "home"))
    with catalog.session() as s:
        register_base(s, name="tiny", uri="/models/tiny", architecture="LlamaForCausalLM",
                      fingerprint="sha256:" + "0" * 64)
        for name in ("arith", "sort"):
            add_skill(s, name=name, suite=f"{name}_suite", description=name)
        experiment = create_experiment(s, parse_spec(spec_doc(seeds=[0])))
        first, second = (r.id for r in experiment.runs)
        begin_run(s, first)
        fail_run(s, first, "out of memory")
        s.commit()
        exp_id = experiment.id
    seen = []

    def finished(run, bar) -> None:  # the second run finishes only after the first was seen
        seen.append((run.id, run.status, run.error))
        if run.id == first:
            with catalog.session() as s:
                begin_run(s, second)
                finish_run(s, second, {"method": "joint"})
                s.commit()

    final = follow_runs(catalog, exp_id, timeout=30, console=Console(file=open(  # noqa: SIM115
        tmp_path / "out.txt", "w")), on_finished=finished)
    assert final == {first: F, second: S}
    assert seen == [(first, F, "out of memory"), (second, S, None)]
    # nothing finishes: it gives up after the timeout, naming the experiment
    with catalog.session() as s:
        waiting = create_experiment(s, parse_spec(spec_doc(seeds=[1]))).id
        s.commit()
    with pytest.raises(JobError, match=f"experiment {waiting}'s runs"):
        follow_runs(catalog, waiting, timeout=0.1, console=Console(file=open(  # noqa: SIM115
            tmp_path / "out2.txt", "w")))
    catalog.close()
