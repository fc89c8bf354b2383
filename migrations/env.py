"""Alembic environment: one schema history for SQLite and PostgreSQL.

The database is, in order: a connection or URL handed over by skillstore
(`config.attributes`), `-x url=...` on the alembic command line, else the skillstore settings.
It runs from this folder in a checkout and from skillstore/_migrations in an installed wheel,
so it imports only the installed `skillstore` package and reads no path of its own.
"""

from __future__ import annotations

from alembic import context

from skillstore.catalog.db import make_engine, normalize_url
from skillstore.catalog.models import Record

config = context.config
target_metadata = Record.metadata


def _url() -> str:
    url = config.attributes.get("url") or context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        from skillstore.settings import get_settings

        url = get_settings().database_url
    return normalize_url(url)


def _configure(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables so downgrades work there.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=_url().startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url())
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
