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
"""

from __future__ import annotations

import logging

from celery import bootsteps
from celery.worker import state
from celery.worker.consumer import Consumer as CeleryConsumer

log = logging.getLogger(__name__)


class Consumer(CeleryConsumer):
    """Celery's consumer, remembering the messages it held unstarted when the connection broke,
    and surviving the teardown of a Redis connection whose server is gone."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stranded: dict[str, str] = {}  # delivery tag -> "task[args]", for the log

    def on_connection_error_after_connected(self, exc):
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
        stranded = getattr(c, "stranded", None)
        if not stranded:
            return
        restore = getattr(c.task_consumer.channel.qos, "restore_by_tag", None)
        if restore is None:  # AMQP brokers requeue a dead connection's messages themselves
            stranded.clear()
            return
        for tag, what in list(stranded.items()):
            # A connection error propagates: the consumer reconnects and this runs again.
            restore(tag)  # to the end the queue is consumed from: it goes next
            del stranded[tag]
            log.warning("put back %s: this worker held it unstarted when the broker went away",
                        what)
