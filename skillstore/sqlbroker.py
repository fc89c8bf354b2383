"""The embedded broker: kombu's SQLAlchemy transport, polling its table often enough for a pipeline.

kombu's SQL transport sleeps a whole second whenever its queue table is empty, so every hand-off
between two tasks of a chain waits up to a second: five steps cost about five seconds per job.
Its transport options go straight to ``create_engine``, so ``polling_interval`` cannot be set
through ``broker_transport_options`` (SQLAlchemy refuses the unknown argument). This subclass
sets the interval on the class instead; ``celery_config`` selects it for ``sqla+`` broker URLs.
"""

from __future__ import annotations

from kombu.transport import sqlalchemy as kombu_sqla

# Ten polls a second: a hand-off costs ~50 ms on average, and an idle worker's poll is one
# indexed SELECT on a local SQLite file, far below a core's worth of work.
POLLING_INTERVAL_S = 0.1
URL_PREFIX = "sqla+"
TRANSPORT = f"{__name__}:Transport"


class Transport(kombu_sqla.Transport):
    """kombu's SQLAlchemy transport with a short polling interval."""

    polling_interval = POLLING_INTERVAL_S


def split_url(broker_url: str) -> tuple[str, str | None]:
    """``sqla+sqlite:///x.db`` -> (``sqlite:///x.db``, this transport); other URLs pass through.

    kombu takes the transport named in a ``sqla+`` prefix over any configured transport class,
    so the prefix is removed and the class is handed to Celery as ``broker_transport``.
    """
    if broker_url.startswith(URL_PREFIX):
        return broker_url[len(URL_PREFIX):], TRANSPORT
    return broker_url, None
