"""Put back, once the broker is reachable again, the messages a worker held when it went away.

When the broker connection breaks, Celery drops the requests it had taken but not started (a
step waiting for a free pool process, a later job's `train` held for its retry countdown): a
delivery tag belongs to the dead channel, so it cannot ack them. RabbitMQ requeues such
messages by itself. Redis does not: its transport keeps them in the `unacked` hash until the
visibility timeout (12 h), and kombu's own attempt to hand them back runs while the server is
still down, so it fails. The consumer below remembers those delivery tags and, on every
reconnection, moves their messages from the `unacked` hash back to their queue (kombu's
`restore_by_tag`, one Redis transaction each). The steps are idempotent, so a message that a
pool process did start after all runs twice and the second run returns early. The consumer
also survives a kombu error in that teardown that used to kill the worker
(docs/reliability.md, bugs 8 and 9).

One loss remains that no consumer can see: Redis hands a message over by popping it from its
queue, and the transport records it as unacknowledged in a second command. A server killed
between the two has dropped the message before Celery ever saw it, and its job stays queued
for ever (docs/reliability.md, bug 10). So after each reconnection one worker also looks for
unfinished jobs and experiment runs that no message in Redis names, twice a few seconds apart,
and sends those again from their next step. A job named only by held messages for steps it
recorded or never began is unsure: its worker may still be retrying the next step's publish
(for up to two minutes) or still start the step. That worker is given the time; a look after
it sends the job again only if nothing names it then (docs/reliability.md, bugs 15 and 16).
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time

import sqlalchemy as sa
from celery import bootsteps
from celery.worker import state
from celery.worker.consumer import Consumer as CeleryConsumer

from skillstore.errors import SkillstoreError
from skillstore.jobqueue import EXPERIMENT_RUN_TASK, LEARN_TASKS, QUEUES, publish_window_s

log = logging.getLogger(__name__)
STAGE_OF = {task: stage for stage, task in LEARN_TASKS.items()}  # task name -> learning stage

# Two looks this far apart: a message another worker has popped but not yet recorded as
# unacknowledged (a millisecond's gap) is seen by one of them, so a live job is not resent.
SETTLE_S = 2.0
# One worker looks at a time; the key expires, so a worker that dies holding it blocks nothing.
SWEEP_KEY, SWEEP_TTL_S = "skillstore.lost-message-sweep", 60


class Consumer(CeleryConsumer):
    """Celery's consumer, remembering the messages it held unstarted when the connection broke,
    and surviving the teardown of a Redis connection whose server is gone."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stranded: dict[str, str] = {}  # delivery tag -> "task[args]", for the log
        self.reconnected = False

    def on_connection_error_after_connected(self, exc):
        self.reconnected = True
        # Runs before on_close() forgets the reserved and scheduled requests.
        for request in (*state.reserved_requests, *state.scheduled_requests):
            tag = request.message.delivery_tag
            if tag and request not in state.active_requests and not request.acknowledged:
                self.stranded[tag] = f"{request.name}{list(request.args or ())}"
        channel = getattr(self.task_consumer, "channel", None)
        pool = getattr(channel, "pool", None)  # made now, while the transport is attached
        try:
            super().on_connection_error_after_connected(exc)
        except AttributeError as err:
            # kombu (redis transport): Celery detaches the transport, then closing the channel
            # tries to hand its unacked messages back and needs it ('NoneType' object has no
            # attribute 'hostname'), which killed the worker. Those messages are put back below.
            log.warning("broker connection teardown failed (%r); carrying on", err)
        if pool is not None and getattr(channel, "_pool", pool) is None:
            # Steps that run through the outage still ack on this channel when they finish.
            channel._pool = pool


class PutBackStranded(bootsteps.StartStopStep):
    """After each (re)connection, return the remembered messages to their queues."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c) -> None:
        stranded = getattr(c, "stranded", {})
        channel = c.task_consumer.channel
        # Only kombu's virtual channels (Redis) have a `qos` with it; an AMQP channel has none.
        restore = getattr(getattr(channel, "qos", None), "restore_by_tag", None)
        if restore is None:  # AMQP brokers requeue a dead connection's messages themselves
            stranded.clear()
            return
        for tag, what in list(stranded.items()):
            # A connection error propagates: the consumer reconnects and this runs again.
            restore(tag)  # to the end the queue is consumed from: it goes next
            del stranded[tag]
            log.warning("put back %s: this worker held it unstarted when the broker went away",
                        what)
        if getattr(c, "reconnected", False) and hasattr(channel, "unacked_key"):
            c.reconnected = False
            resend_lost(channel, c.app)


def named(raw: bytes | str) -> tuple[str, int] | None:
    """(task name, first argument) of a Celery message as the Redis transport stores it: a
    queued message, or an unacknowledged one as [message, exchange, routing key]."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):
            message = message[0]
        body = message["body"]
        if message["properties"].get("body_encoding") == "base64":
            body = base64.b64decode(body)
        return message["headers"]["task"], int(json.loads(body)[0][0])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None  # not a task message of ours (protocol 1, another app): names nothing


JOB, RUN = "job", "experiment run"  # what a message is for: a learning step's job, or a run
Key = tuple[str, int]  # (JOB or RUN, its id)


def addressed(raw: bytes | str) -> tuple[Key, str] | None:
    """((JOB, job id), stage) of a learning step's message, ((RUN, run id), "run") of an
    experiment run's; None for any other message."""
    what = named(raw)
    if what is None:
        return None
    if what[0] in STAGE_OF:
        return (JOB, what[1]), STAGE_OF[what[0]]
    return ((RUN, what[1]), "run") if what[0] == EXPERIMENT_RUN_TASK else None


def redis_messages(channel) -> tuple[list[bytes], dict[bytes, bytes]]:
    """The raw messages Redis holds for us: those queued on any of our queues (at every
    priority), and the unacknowledged ones by delivery tag."""
    client = channel.client
    queued = [raw for queue in QUEUES for priority in channel.priority_steps
              for raw in client.lrange(channel._q_for_pri(queue, priority), 0, -1)]
    return queued, client.hgetall(channel.unacked_key)


def referenced(channel) -> tuple[set[int], dict[int, set[str]], set[int]]:
    """What the messages in Redis name: the learning job ids queued on any of our queues (at
    every priority), the steps of each job taken by a worker and not yet acknowledged, and the
    experiment run ids queued or taken."""
    queued_raws, unacked = redis_messages(channel)
    jobs, held, runs = set(), {}, set()
    for raws, is_held in ((queued_raws, False), (unacked.values(), True)):
        for (kind, first), stage in filter(None, map(addressed, raws)):
            if kind == RUN:
                runs.add(first)
            elif is_held:
                held.setdefault(first, set()).add(stage)
            else:
                jobs.add(first)
    return jobs, held, runs


def resend_lost(channel, app=None, *, final: bool = False) -> bool:
    """Send again the unfinished jobs and runs that no message names, looking twice; returns
    False when another worker was looking (what it resends is named when the next one looks).

    A job named only by held messages for steps it recorded or never began is unsure
    (``lifecycle.unreferenced_jobs``): its worker may still be retrying the next step's publish
    (``jobqueue.publish_window_s``), or still start the step. Unless this is the ``final``
    look, such a job is left alone, and ``app`` looks again once that window has passed, on a
    connection of its own."""
    from skillstore.experiments.queue import resend_unreferenced_runs
    from skillstore.pipeline.lifecycle import next_stage, resend_unreferenced

    from .learn import catalog

    client = channel.client
    if not client.set(SWEEP_KEY, "1", nx=True, ex=SWEEP_TTL_S):
        return False
    try:
        jobs, held, runs = referenced(channel)
        time.sleep(SETTLE_S)
        later_jobs, later_held, later_runs = referenced(channel)
        for job_id, stages in later_held.items():
            held.setdefault(job_id, set()).update(stages)
        cat = catalog()
        with cat.session() as s:
            sent, unsure = resend_unreferenced(s, cat.settings, jobs | later_jobs, held,
                                               unsure_too=final)
            for job in sent:
                log.warning("resent job %s from %s: the broker lost its message",
                            job.id, next_stage(job))
            for run in resend_unreferenced_runs(s, cat.settings, runs | later_runs):
                log.warning("resent experiment run %s: the broker lost its message", run.id)
            s.commit()
        if unsure and app is not None:
            wait_s = publish_window_s() + SETTLE_S
            log.warning("jobs %s are named only by held messages for steps that finished or "
                        "never began; looking again in %.0f s, once their workers have had "
                        "time to send or start them", ", ".join(str(job.id) for job in unsure),
                        wait_s)
            later = threading.Timer(wait_s, look_again, args=(app,))
            later.daemon = True
            later.start()
    except (SkillstoreError, sa.exc.OperationalError) as exc:
        log.warning("cannot look for jobs whose message the broker lost: %s", exc)
    finally:
        client.delete(SWEEP_KEY)
    return True


def look_again(app) -> None:
    """The final look for jobs whose message the broker lost, on a connection of its own (it
    runs on a timer's thread, beside the consumer's). While another worker is looking, it
    waits for that look to end (at most the key's lifetime) rather than skip: that worker may
    have taken the job for live, or failed to reach the catalog, and planned no final look."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=3)
            deadline = time.monotonic() + SWEEP_TTL_S + SETTLE_S
            while not resend_lost(conn.default_channel, final=True):
                if time.monotonic() > deadline:
                    log.warning("cannot look again for jobs whose message the broker lost: "
                                "another worker held the look for %d s", SWEEP_TTL_S)
                    return
                time.sleep(SETTLE_S)
    except Exception as exc:  # a thread's error would be printed and lost: say what it means
        log.warning("cannot look again for jobs whose message the broker lost: %r", exc)
