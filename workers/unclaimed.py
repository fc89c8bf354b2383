"""Put back a queued job's or experiment run's message that a worker took and then died
holding, before it claimed it.

A worker claims a queued job the moment the job's message reaches it (`learn.claim_received`),
and a run likewise (`experiments.claim_received`), so that the worker start's sweep of orphans
sends it again when that worker dies. A worker killed between the two, after the broker handed
the message over and before the claim was written, leaves a job or run that no worker owns and
no queue holds: Redis keeps the message in its `unacked` hash for the visibility timeout (12 h),
and the embedded SQL broker marks it delivered for ever. CI's random SIGKILLs left one job of
twenty queued that way (docs/reliability.md, bug 12).

So every worker looks, every `stranded_after_s / 2` seconds, at the queued jobs and runs that
were sent, that no worker claimed, and that have not changed (a job's row) or been sent (a run)
for `stranded_after_s`: normally none, or the tail of a long queue, which the broker shows still
waiting. A message of such a job or run that Redis has held unacknowledged for that long is put
back on its queue. One whose message is nowhere (taken from the SQL broker, or dropped by Redis
as it handed it over) is sent again, a job from its next step, a run from the base, after a
second look a few seconds later, so that a message another worker is just taking is not counted
lost. Steps and runs are idempotent: a job sent twice still finishes once, and a run records one
result.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from celery.signals import worker_ready

from skillstore.experiments.catalog import unclaimed_runs
from skillstore.experiments.queue import send_again
from skillstore.jobqueue import QUEUES
from skillstore.pipeline.lifecycle import next_stage, send_chain, unclaimed_jobs
from skillstore.settings import get_settings

from .learn import catalog as worker_catalog
from .reconnect import JOB, RUN, SETTLE_S, Key, addressed, redis_messages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Held:
    """A message of ours that a consumer took and has not acknowledged."""

    tag: str
    stage: str  # the learning step, or "run"
    age_s: float


def _look_redis(channel) -> tuple[set[Key], dict[Key, list[Held]]]:
    queued, unacked = redis_messages(channel)
    waiting = {step[0] for step in map(addressed, queued) if step is not None}
    taken_at = dict(channel.client.zrange(channel.unacked_index_key, 0, -1, withscores=True))
    now, held = time.time(), {}
    for tag, raw in unacked.items():
        if (step := addressed(raw)) is not None:
            age = now - taken_at.get(tag, now)
            held.setdefault(step[0], []).append(Held(tag.decode(), step[1], age))
    return waiting, held


def _look_sql(channel) -> tuple[set[Key], dict[Key, list[Held]]]:
    # kombu keeps a taken message as it keeps an acknowledged one (visible=False), so only
    # what waits can be seen; a taken message is never handed out again.
    message, queue = channel.message_cls, channel.queue_cls
    try:
        rows = (channel.session.query(message.payload)
                .join(queue, message.queue_id == queue.id)
                .filter(queue.name.in_(QUEUES), message.visible.is_(True)).all())
    finally:
        channel.session.commit()  # end the read: SQLite holds a shared lock until then
    return {step[0] for (payload,) in rows if (step := addressed(payload)) is not None}, {}


def look(channel) -> tuple[set[Key], dict[Key, list[Held]]] | None:
    """The jobs and runs whose message waits on one of our queues, and the held messages of
    each; None for an AMQP broker, which requeues a dead consumer's messages itself."""
    if hasattr(channel, "unacked_key"):
        return _look_redis(channel)
    if hasattr(channel, "message_cls"):
        return _look_sql(channel)
    return None


def _unclaimed(session, quiet: float) -> dict[Key, object]:
    """The catalog's queued jobs and runs, sent at least ``quiet`` seconds ago, unclaimed."""
    return {**{(JOB, job.id): job for job in unclaimed_jobs(session, quiet)},
            **{(RUN, run.id): run for run in unclaimed_runs(session, quiet)}}


def _send_again(session, settings, key: Key, row) -> None:
    if key[0] == JOB:
        stage = next_stage(row)
        send_chain(session, settings, row, stage)
        log.warning("sent job %s again from %s: its message was taken by a worker that died "
                    "before claiming the job", row.id, stage)
    else:
        send_again(session, settings, [row])
        log.warning("sent experiment run %s again: its message was taken by a worker that "
                    "died before claiming the run", row.id)


def sweep(app, catalog) -> dict[str, list[Key]]:
    """Put back or send again the messages of this catalog's stranded jobs and experiment
    runs; returns their keys ((JOB or RUN, id)) under "put_back" and "sent_again"."""
    quiet, done = catalog.settings.stranded_after_s, {"put_back": [], "sent_again": []}
    with catalog.session() as s:
        if not _unclaimed(s, quiet):
            return done  # the usual case: two queries, no broker round trip
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
            for key in _unclaimed(s, quiet):
                if key in waiting:
                    continue
                if key not in held:
                    lost.add(key)
                for message in held.get(key, []):
                    if message.age_s > quiet:  # a live worker claims within milliseconds
                        channel.qos.restore_by_tag(message.tag)  # to the end consumed next
                        done["put_back"].append(key)
                        log.warning("put back %s %s's %s message: the worker that took it %.0f s"
                                    " ago died before claiming it", *key, message.stage,
                                    message.age_s)
        if not lost:
            return done
        time.sleep(SETTLE_S)
        waiting, held = look(channel)
        with catalog.session() as s:
            # a job or run sent or claimed meanwhile is no longer unclaimed for that long
            for key, row in _unclaimed(s, quiet).items():
                if key in lost and key not in waiting and key not in held:
                    _send_again(s, catalog.settings, key, row)
                    done["sent_again"].append(key)
            s.commit()
    return done


def _sweep_quietly(app) -> None:
    """The timer's call: a sweep that fails (the database or the broker away) waits for the
    next one, and never stops the worker."""
    try:
        log.debug("looked for unclaimed jobs: %s", sweep(app, worker_catalog()))
    except Exception as exc:  # noqa: BLE001 - the timer must keep running; the next look retries
        log.warning("cannot look for jobs or runs whose message died with a worker: %r", exc)


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
