"""Engines and sessions for the catalog, and the checks that turn setup mistakes into one line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from ..errors import ConfigError, DatabaseUnavailableError, WorkspaceError

SQLITE_BUSY_TIMEOUT_S = 30


def normalize_url(url: str) -> str:
    """Pick the psycopg 3 driver for plain `postgresql://` URLs (SQLAlchemy assumes psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def redact(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def parse_url(url: str) -> sa.URL:
    """A SQLAlchemy URL object; a malformed URL becomes ConfigError."""
    try:
        return make_url(normalize_url(url))
    except sa.exc.ArgumentError:
        raise ConfigError(f"Database URL {url!r} does not parse; set SKILLSTORE_DATABASE_URL to a "
                          "SQLAlchemy URL such as postgresql://user@host/db.") from None


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL, or None for other databases and in-memory SQLite."""
    parsed = parse_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    # WAL lets the CLI read while a worker writes.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cursor.close()


def make_engine(url: str, **kwargs) -> sa.Engine:
    """An engine for a catalog URL: foreign keys and WAL on SQLite, psycopg 3 on PostgreSQL."""
    url = normalize_url(url)
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        kwargs.setdefault("connect_args", {"timeout": SQLITE_BUSY_TIMEOUT_S})
        engine = sa.create_engine(url, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() == "postgresql":
        kwargs.setdefault("connect_args", {"connect_timeout": 5})
        kwargs.setdefault("pool_pre_ping", True)
    try:
        return sa.create_engine(url, **kwargs)
    except (ImportError, sa.exc.NoSuchModuleError) as exc:
        raise ConfigError(f"No driver for database URL {redact(url)!r} ({exc}).") from None


def check_reachable(engine: sa.Engine, label: str | None = None) -> None:
    """Connect once; an unreachable server becomes DatabaseUnavailableError."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.DBAPIError as exc:  # OperationalError, or "file is not a database"
        text = str(exc.orig)
        # PostgreSQL: no such database (3D000; connection errors often carry no sqlstate).
        if getattr(exc.orig, "sqlstate", None) == "3D000" or \
                ("database" in text and "does not exist" in text):
            raise WorkspaceError(
                f"The catalog database {label or redact(str(engine.url))!r} does not exist, so "
                "the workspace was never initialised; run `skillstore init`.") from None
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise DatabaseUnavailableError(
            f"Cannot reach the catalog database {label or redact(str(engine.url))!r} ({reason}); "
            "start the server or fix SKILLSTORE_DATABASE_URL."
        ) from None


@contextmanager
def session_scope(engine: sa.Engine) -> Iterator[Session]:
    """A session for one boundary (a command, a request, a task): commit on success."""
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def create_database(url: str) -> bool:
    """Create the PostgreSQL database a URL names, if missing; True when it was created."""
    parsed = parse_url(url)
    if parsed.get_backend_name() != "postgresql":
        return False
    admin = make_engine(parsed.set(database="postgres").render_as_string(hide_password=False),
                        isolation_level="AUTOCOMMIT")
    try:
        check_reachable(admin, redact(str(parsed)))
        with admin.connect() as conn:
            exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"),
                                  {"n": parsed.database}).first()
            if not exists:
                conn.execute(sa.text(f'CREATE DATABASE "{parsed.database}"'))
            return not exists
    finally:
        admin.dispose()


def drop_database(url: str) -> None:
    """Drop a PostgreSQL database (tests and benchmarks make one per run)."""
    parsed = parse_url(url)
    admin = make_engine(parsed.set(database="postgres").render_as_string(hide_password=False),
                        isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))
    finally:
        admin.dispose()
