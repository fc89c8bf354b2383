"""An experiment's orchestration overhead: time in its tasks beyond the methods' own seconds,
plus wall time when none of its runs was running; overlapping runs are not counted twice."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from skillstore.experiments.overhead import orchestration

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def test_sequential_runs_count_queue_wait_gaps_and_in_task_time():
    # queued at 0; run 1 spans 2..12 with 9 s of work, run 2 spans 13..33 with 19 s; done at 34
    doc = orchestration(T0, at(34), [(at(2), at(12), {"seconds": 9}),
                                     (at(13), at(33), {"seconds": 19})])
    assert doc["work_s"] == 28 and doc["in_task_s"] == 2
    assert doc["idle_s"] == 4  # 0..2, 12..13, 33..34
    assert doc["overhead_s"] == 6 and doc["ratio"] == pytest.approx(6 / 28)


def test_overlapping_runs_on_two_workers_are_not_idle_twice():
    doc = orchestration(T0, at(21), [(at(1), at(11), {"seconds": 10}),
                                     (at(5), at(20), {"seconds": 15})])
    assert doc["idle_s"] == 2 and doc["in_task_s"] == 0  # 0..1 and 20..21
    assert doc["ratio"] == pytest.approx(2 / 25)


def test_nothing_is_reported_until_it_finishes_or_without_timed_runs():
    assert orchestration(T0, None, [(at(1), at(2), {"seconds": 1})]) is None
    assert orchestration(T0, at(5), [(at(1), None, None), (None, None, None)]) is None
    failed = orchestration(T0, at(9), [(at(1), at(3), None), (at(3), at(8), {"seconds": 4})])
    assert failed["runs"] == 1 and failed["work_s"] == 4  # a failed run has no seconds...
    assert failed["idle_s"] == 2  # ...but its span was not the queue's: 0..1 and 8..9


def test_the_report_states_the_overhead_of_a_finished_experiment(session):
    from skillstore.catalog.models import Experiment
    from skillstore.experiments.report import build_experiment_report, render_experiment_report

    from .test_report import make_experiment

    experiment = session.get(Experiment, make_experiment(session))
    experiment.created_at, experiment.finished_at = T0, at(100)
    timed = [r for r in experiment.runs if r.result]
    for i, run in enumerate(timed):  # back to back, 1 s apart, each 0.5 s longer than its work
        start = 1 + i * (run.result["seconds"] + 1.5)
        run.started_at, run.finished_at = at(start), at(start + run.result["seconds"] + 0.5)
    session.flush()
    cost = build_experiment_report(session, experiment)["orchestration"]
    work = sum(r.result["seconds"] for r in timed)
    assert cost["runs"] == len(timed) and cost["work_s"] == pytest.approx(work)
    assert cost["in_task_s"] == pytest.approx(0.5 * len(timed))
    assert cost["idle_s"] == pytest.approx(100 - (work + 0.5 * len(timed)))
    md = render_experiment_report(build_experiment_report(session, experiment), "md")
    line = next(r for r in md.splitlines() if r.startswith(f"| {len(timed)} |"))
    assert f"{100 * cost['ratio']:.2f}%" in line
