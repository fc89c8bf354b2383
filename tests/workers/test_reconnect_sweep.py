"""The sweep a worker runs after reconnecting to Redis (workers/reconnect.py), on a real Redis:
a job whose step finished during the outage is given its worker's publish window before it
counts as lost (docs/reliability.md, bug 15)."""

from __future__ import annotations

import json
import threading
import time

import pytest

from skillstore.catalog import create_job, init_workspace
from skillstore.jobqueue import CPU_QUEUE, GPU_QUEUE
from skillstore.pipeline import lifecycle
from skillstore.settings import Settings
from workers import learn, reconnect
from workers.app import create_app


class Timers(threading.Timer):
    """threading.Timer, remembering each one made, so the test can wait for them."""

    made: list[threading.Timer] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        Timers.made.append(self)


def _hold(channel, job_id: int) -> None:
    """Take the job's queued `prepare` message as a consumer does and leave it unacknowledged:
    popped from the queue, kept in the transport's `unacked` hash under a delivery tag."""
    client = channel.client
    raw = client.rpop(CPU_QUEUE)
    message = json.loads(raw)
    assert reconnect.named(raw) == ("workers.learn.prepare", job_id)
    tag = message["properties"]["delivery_tag"]
    client.hset(channel.unacked_key, tag, json.dumps([message, "", CPU_QUEUE]))
    client.zadd(channel.unacked_index_key, {tag: time.time()})


def _trains(channel) -> list[int]:
    """The job ids of the `train` messages waiting on the GPU queue."""
    return sorted(job_id for raw in channel.client.lrange(GPU_QUEUE, 0, -1)
                  if (named := reconnect.named(raw)) and named[0] == "workers.learn.train"
                  for job_id in [named[1]])


@pytest.fixture
def swept(tmp_path, redis_url, monkeypatch):
    """(settings, catalog, app) on this test's Redis database, with the sweep's waits short
    and its timers remembered; the sweep opens this catalog as a worker's would."""
    for name, value in {"HOME": tmp_path / "ws", "BROKER_URL": redis_url,
                        "RESULT_BACKEND": redis_url}.items():
        monkeypatch.setenv(f"SKILLSTORE_{name}", str(value))
    monkeypatch.setattr(learn, "_per_process", {})
    monkeypatch.setattr(reconnect, "SETTLE_S", 0.1)
    monkeypatch.setattr(reconnect, "publish_window_s", lambda: 1.5)
    monkeypatch.setattr(reconnect.threading, "Timer", Timers)
    Timers.made.clear()
    settings = Settings(home=tmp_path / "ws", broker_url=redis_url, result_backend=redis_url)
    catalog = init_workspace(settings)
    yield settings, catalog, create_app(settings)
    catalog.close()
    learn._per_process.clear()


def test_a_job_whose_step_finished_in_the_outage_is_resent_only_if_its_next_message_never_comes(
        swept, caplog):
    """Two jobs recorded `prepare` while Redis was away; their `prepare` messages are held
    unacknowledged and no `train` message is queued yet. Neither is resent at once. The worker
    of the first sends its `train` within the publish window, so the later look leaves it
    alone; the second's never comes, and the later look sends it again from `train`."""
    settings, catalog, app = swept
    with catalog.session() as s, app.connection_for_write() as conn:
        channel = conn.default_channel
        late, never = (create_job(s, kind="learn", request={"skill": "arith"}) for _ in range(2))
        for job in (late, never):
            lifecycle.send_chain(s, settings, job, "prepare")
            _hold(channel, job.id)
            lifecycle.begin(s, job.id, "prepare", "host", 1)
            lifecycle.record_output(s, job, "prepare", {"done": True})
        s.commit()
        late_id, never_id = late.id, never.id

        reconnect.resend_lost(channel, app)
        assert _trains(channel) == [], "an unsure job was resent at once"
        assert f"jobs {late_id}, {never_id} are named only by held messages" in caplog.text
        assert len(Timers.made) == 1

        lifecycle.send_chain(s, settings, late, "train")  # the late worker's publish
        s.commit()
        Timers.made[0].join(timeout=60)
        assert not Timers.made[0].is_alive()
        assert _trains(channel) == sorted([late_id, never_id])  # each train sent once
    assert f"resent job {never_id} from train" in caplog.text
    assert f"resent job {late_id} " not in caplog.text


def test_a_job_no_message_names_is_resent_at_once(swept, caplog):
    """The handover loss of bug 10: the message is gone, nothing is held, and the job is sent
    again from its next step by the first look, with no later look planned."""
    settings, catalog, app = swept
    with catalog.session() as s, app.connection_for_write() as conn:
        channel = conn.default_channel
        job = create_job(s, kind="learn", request={"skill": "arith"})
        lifecycle.send_chain(s, settings, job, "prepare")
        s.commit()
        assert reconnect.named(channel.client.rpop(CPU_QUEUE)) == (
            "workers.learn.prepare", job.id)  # dropped in the handover
        reconnect.resend_lost(channel, app)
        assert [reconnect.named(raw) for raw in channel.client.lrange(CPU_QUEUE, 0, -1)] == [
            ("workers.learn.prepare", job.id)]
        assert Timers.made == []
    assert f"resent job {job.id} from prepare" in caplog.text


def test_the_final_look_waits_for_another_workers_look_instead_of_skipping(swept, caplog):
    """The later look finds another worker's sweep under way (its key set). It waits for that
    look to end and then sends the unsure job itself: the other worker may have planned no
    final look of its own. Skipping, as it once did, left such a job queued for ever."""
    settings, catalog, app = swept
    with catalog.session() as s, app.connection_for_write() as conn:
        channel = conn.default_channel
        job = create_job(s, kind="learn", request={"skill": "arith"})
        lifecycle.send_chain(s, settings, job, "prepare")
        _hold(channel, job.id)
        lifecycle.begin(s, job.id, "prepare", "host", 1)
        lifecycle.record_output(s, job, "prepare", {"done": True})
        s.commit()
        channel.client.set(reconnect.SWEEP_KEY, "1", px=800)  # another worker, looking
        reconnect.look_again(app)
        assert _trains(channel) == [job.id]
        assert not channel.client.exists(reconnect.SWEEP_KEY)
    assert f"resent job {job.id} from train" in caplog.text


@pytest.fixture(autouse=True)
def _warnings(caplog):
    caplog.set_level("WARNING", logger="workers.reconnect")
