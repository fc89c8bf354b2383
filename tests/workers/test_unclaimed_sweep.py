"""The sweep for queued messages a killed worker took unclaimed (workers/unclaimed.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from kombu.exceptions import OperationalError

from skillstore.catalog import attach_task, create_job, init_workspace
from skillstore.catalog.models import Job
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
            assert look(conn.default_channel) == ({job.id}, {})
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
    assert "cannot look for jobs whose message died with a worker" in caplog.text
