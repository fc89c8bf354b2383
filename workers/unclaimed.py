"""Put back a queued job's message that a worker took and then died holding, before it claimed it.

A worker claims a queued job the moment the job's message reaches it (`learn.claim_received`),
so that `resume_orphans` sends the job again when that worker dies. A worker killed between the
two, after the broker handed the message over and before the claim was written, leaves a job
that no worker owns and no queue holds: Redis keeps the message in its `unacked` hash for the
visibility timeout (12 h), and the embedded SQL broker marks it delivered for ever. CI's random
SIGKILLs left one job of twenty queued that way (docs/reliability.md, bug 12).

So every worker looks, every `stranded_after_s / 2` seconds, at the queued jobs that were sent,
that no worker claimed and whose row has not changed for `stranded_after_s`: normally none, or
the tail of a long queue, which the broker shows still waiting. A message of such a job that
Redis has held unacknowledged for that long is put back on its queue. A job whose message is
nowhere (taken from the SQL broker, or dropped by Redis as it handed it over) is sent again from
its next step, after a second look a few seconds later, so that a message another worker is
just taking is not counted lost. The steps are idempotent: a job sent twice still finishes once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from celery.signals import worker_ready

from skillstore.jobqueue import QUEUES
from skillstore.pipeline.lifecycle import next_stage, send_chain, unclaimed_jobs
from skillstore.settings import get_settings

from .learn import catalog as worker_catalog
from .reconnect import SETTLE_S, STAGE_OF, named, redis_messages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Held:
    """A learning step's message that a consumer took and has not acknowledged."""

    tag: str
    stage: str
    age_s: float


def _learn(raw) -> tuple[int, str] | None:
    """(job id, stage) of a learning step's message; None for any other message."""
    what = named(raw)
    return (what[1], STAGE_OF[what[0]]) if what and what[0] in STAGE_OF else None


def _look_redis(channel) -> tuple[set[int], dict[int, list[Held]]]:
    queued, unacked = redis_messages(channel)
    waiting = {step[0] for step in map(_learn, queued) if step is not None}
    taken_at = dict(channel.client.zrange(channel.unacked_index_key, 0, -1, withscores=True))
    now, held = time.time(), {}
    for tag, raw in unacked.items():
        if (step := _learn(raw)) is not None:
            age = now - taken_at.get(tag, now)
            held.setdefault(step[0], []).append(Held(tag.decode(), step[1], age))
    return waiting, held


def _look_sql(channel) -> tuple[set[int], dict[int, list[Held]]]:
    # kombu keeps a taken message as it keeps an acknowledged one (visible=False), so only
    # what waits can be seen; a taken message is never handed out again.
    message, queue = channel.message_cls, channel.queue_cls
    try:
        rows = (channel.session.query(message.payload)
                .join(queue, message.queue_id == queue.id)
                .filter(queue.name.in_(QUEUES), message.visible.is_(True)).all())
    finally:
        channel.session.commit()  # end the read: SQLite holds a shared lock until then
    return {step[0] for (payload,) in rows if (step := _learn(payload)) is not None}, {}


def look(channel) -> tuple[set[int], dict[int, list[Held]]] | None:
    """The learning jobs whose message waits on one of our queues, and the held messages of
    each job; None for an AMQP broker, which requeues a dead consumer's messages itself."""
    if hasattr(channel, "unacked_key"):
        return _look_redis(channel)
    if hasattr(channel, "message_cls"):
        return _look_sql(channel)
    return None


def sweep(app, catalog) -> dict[str, list[int]]:
    """Put back or send again the messages of this catalog's stranded jobs; returns the job ids
    under "put_back" and "sent_again"."""
    quiet, done = catalog.settings.stranded_after_s, {"put_back": [], "sent_again": []}
    with catalog.session() as s:
        if not unclaimed_jobs(s, quiet):
            return done  # the usual case: one query, no broker round trip
    with app.connection_for_write() as conn:
        # Fail at once while the broker is away: this runs on the worker's event loop, and
        # kombu's default would retry for ever; the next sweep looks again.
        conn.ensure_connection(max_retries=1)
        channel = conn.default_channel
        seen = look(channel)
        if seen is None:
            return done
        waiting, held = seen
        lost = set()
        with catalog.session() as s:
            for job in unclaimed_jobs(s, quiet):
                if job.id in waiting:
                    continue
                if job.id not in held:
                    lost.add(job.id)
                for message in held.get(job.id, []):
                    if message.age_s > quiet:  # a live worker claims within milliseconds
                        channel.qos.restore_by_tag(message.tag)  # to the end consumed next
                        done["put_back"].append(job.id)
                        log.warning("put back job %s's %s message: the worker that took it %.0f s "
                                    "ago died before claiming the job", job.id, message.stage,
                                    message.age_s)
        if not lost:
            return done
        time.sleep(SETTLE_S)
        waiting, held = look(channel)
        with catalog.session() as s:
            for job in unclaimed_jobs(s, quiet):  # a job sent or claimed meanwhile has changed
                if job.id in lost and job.id not in waiting and job.id not in held:
                    stage = next_stage(job)
                    send_chain(s, catalog.settings, job, stage)
                    done["sent_again"].append(job.id)
                    log.warning("sent job %s again from %s: its message was taken by a worker "
                                "that died before claiming the job", job.id, stage)
            s.commit()
    return done


def _sweep_quietly(app) -> None:
    """The timer's call: a sweep that fails (the database or the broker away) waits for the
    next one, and never stops the worker."""
    try:
        log.debug("looked for unclaimed jobs: %s", sweep(app, worker_catalog()))
    except Exception as exc:  # noqa: BLE001 - the timer must keep running; the next look retries
        log.warning("cannot look for jobs whose message died with a worker: %r", exc)


@worker_ready.connect
def start_sweeping(sender=None, **_kwargs) -> None:
    """Look now, then every half of `stranded_after_s`, on the consumer's timer. The timer is
    set first and from the settings alone, so a database that is away at start only makes
    the first looks fail."""
    if sender is None:
        return
    sender.timer.call_repeatedly(get_settings().stranded_after_s / 2, _sweep_quietly,
                                 (sender.app,))
    _sweep_quietly(sender.app)
