"""The sweep for queued messages a killed worker took unclaimed (workers/unclaimed.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from kombu.exceptions import OperationalError

from skillstore.catalog import attach_task, create_job, init_workspace
from skillstore.catalog.models import ExperimentRun, Job
from skillstore.catalog.schema import utcnow
from skillstore.settings import Settings
from workers.app import create_app
from workers.unclaimed import look, sweep


def _catalog(tmp_path, broker_url: str, *, stranded: bool):
    catalog = init_workspace(Settings(home=tmp_path / "ws", broker_url=broker_url))
    if stranded:
        with catalog.session() as s:
            job = create_job(s, kind="learn", request={"skill": "arith"})
            attach_task(s, job, "sent-an-hour-ago")
            s.flush()
            s.execute(sa.update(Job).values(updated_at=utcnow() - timedelta(hours=1)))
            s.commit()
    return catalog


def test_no_unclaimed_job_means_no_broker_round_trip(tmp_path):
    catalog = _catalog(tmp_path, "redis://127.0.0.1:1/0", stranded=False)  # nothing listens
    try:
        assert sweep(create_app(catalog.settings), catalog) == {"put_back": [], "sent_again": []}
    finally:
        catalog.close()


def test_a_broker_that_is_away_fails_the_sweep_at_once(tmp_path):
    """The sweep runs on the worker's event loop: it must give up, not retry for ever."""
    catalog = _catalog(tmp_path, "redis://127.0.0.1:1/0", stranded=True)
    try:
        with pytest.raises(OperationalError):
            sweep(create_app(catalog.settings), catalog)
    finally:
        catalog.close()


def test_the_embedded_broker_shows_what_waits(tmp_path):
    """A queued job's message on the embedded broker is seen waiting, so it is not sent again."""
    from skillstore.pipeline.lifecycle import send_chain

    catalog = _catalog(tmp_path, "", stranded=True)
    try:
        app = create_app(catalog.settings)
        with catalog.session() as s:
            job = s.scalar(sa.select(Job))
            send_chain(s, catalog.settings, job, "prepare")
            s.execute(sa.update(Job).values(updated_at=utcnow() - timedelta(hours=1)))
            s.commit()
        with app.connection_for_write() as conn:
            assert look(conn.default_channel) == ({("job", job.id)}, {})
        assert sweep(app, catalog) == {"put_back": [], "sent_again": []}
    finally:
        catalog.close()


def test_the_sweep_is_timed_even_when_the_database_is_away_at_start(tmp_path, monkeypatch,
                                                                        caplog):
    """worker_ready sets the timer from the settings alone; the first look fails, with a line."""
    from types import SimpleNamespace

    from workers import learn, unclaimed

    monkeypatch.setenv("SKILLSTORE_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("SKILLSTORE_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:1/x")
    monkeypatch.setenv("SKILLSTORE_STRANDED_AFTER_S", "8")
    monkeypatch.setattr(learn, "_per_process", {})  # no catalog opened by an earlier test
    timed = []
    timer = SimpleNamespace(call_repeatedly=lambda *args: timed.append(args))
    app = create_app(Settings(home=tmp_path / "ws"))
    unclaimed.start_sweeping(sender=SimpleNamespace(app=app, timer=timer))
    assert timed == [(4.0, unclaimed._sweep_quietly, (app,))]
    assert "cannot look for jobs or runs whose message died with a worker" in caplog.text


def _stranded_runs(catalog) -> list[int]:
    """An experiment of two runs, both sent an hour ago and claimed by nobody."""
    from skillstore.catalog import add_skill, register_base
    from skillstore.experiments import parse_spec
    from skillstore.experiments.catalog import create_experiment
    from skillstore.experiments.queue import send_runs

    with catalog.session() as s:
        register_base(s, name="tiny", uri="/models/tiny", architecture="LlamaForCausalLM",
                      fingerprint="sha256:" + "0" * 64)
        add_skill(s, name="arith", suite="arith_suite", description="arith")
        experiment = create_experiment(s, parse_spec({
            "name": "one-skill", "base": "tiny", "skills": [{"name": "arith"}],
            "methods": {"naive_ft": None}, "seeds": [0, 1]}))
        send_runs(s, catalog.settings, experiment)
        s.execute(sa.update(ExperimentRun).values(sent_at=utcnow() - timedelta(hours=1)))
        s.commit()
        return [run.id for run in experiment.runs]


def test_an_experiment_run_whose_message_was_taken_unclaimed_is_sent_again(tmp_path):
    """On the embedded broker a taken message is never handed out again: a run whose message
    a killed worker took before its claim is sent again; one whose message waits is not."""
    catalog = _catalog(tmp_path, "", stranded=False)
    try:
        app = create_app(catalog.settings)
        waits, taken = _stranded_runs(catalog)
        with app.connection_for_write() as conn:
            assert look(conn.default_channel) == ({("experiment run", waits),
                                                   ("experiment run", taken)}, {})
            # The taker: the run's message leaves the queue and nobody claims the run. (Acked
            # here, since a live consumer's channel hands its unacked messages back as it
            # closes; a SIGKILLed one never does, so the message is gone either way.)
            queue = conn.SimpleQueue("gpu")
            for _ in range(2):
                message = queue.get(timeout=5)
                if message.payload[0] == [waits]:
                    message.requeue()
                else:
                    message.ack()
            queue.close()
            assert look(conn.default_channel) == ({("experiment run", waits)}, {})
        assert sweep(app, catalog) == {"put_back": [], "sent_again": [("experiment run", taken)]}
        with app.connection_for_write() as conn:  # the lost message is back on the queue
            assert look(conn.default_channel) == ({("experiment run", waits),
                                                   ("experiment run", taken)}, {})
        with catalog.session() as s:
            assert s.get(ExperimentRun, taken).sent_at > utcnow() - timedelta(minutes=1)
            assert s.get(ExperimentRun, waits).sent_at < utcnow() - timedelta(minutes=59)
        assert sweep(app, catalog) == {"put_back": [], "sent_again": []}  # once only
    finally:
        catalog.close()
