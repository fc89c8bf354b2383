"""The workspace: create and migrate it (`skillstore init`), and open it with every check."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..blobstore import BlobStore, open_blob_store
from ..errors import WorkspaceError
from ..settings import Settings, get_settings
from . import migrate
from .db import check_reachable, create_database, make_engine, redact, session_scope, sqlite_path


@dataclass
class Catalog:
    """An opened workspace: settings, a database engine whose schema is current, the blobs."""

    settings: Settings
    engine: sa.Engine
    blobs: BlobStore

    @contextmanager
    def session(self) -> Iterator[Session]:
        with session_scope(self.engine) as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _local_blob_dir(settings: Settings) -> Path | None:
    url = settings.blob_url
    if "://" in url and not url.startswith("file://"):
        return None
    return Path(url.removeprefix("file://"))


def init_workspace(settings: Settings | None = None) -> Catalog:
    """Create the workspace folders and database, and migrate it to head; safe to repeat."""
    settings = settings or get_settings()
    try:
        settings.home.mkdir(parents=True, exist_ok=True)
        blob_dir = _local_blob_dir(settings)
        if blob_dir is not None:
            blob_dir.mkdir(parents=True, exist_ok=True)
        db_file = sqlite_path(settings.database_url)
        if db_file is not None:
            db_file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WorkspaceError(f"Cannot create the workspace at {str(settings.home)!r} ({exc}); "
                             "set SKILLSTORE_HOME to a writable folder.") from None
    create_database(settings.database_url)
    engine = make_engine(settings.database_url)
    check_reachable(engine)
    migrate.upgrade(settings.database_url)
    return Catalog(settings, engine, open_blob_store(settings))


def open_catalog(settings: Settings | None = None) -> Catalog:
    """Open an initialised workspace; every setup problem becomes one actionable line."""
    settings = settings or get_settings()
    where = redact(settings.database_url)
    db_file = sqlite_path(settings.database_url)
    if db_file is not None and not db_file.is_file():
        raise WorkspaceError(f"The workspace at {str(settings.home)!r} was never initialised; "
                             f"run `skillstore init` (there is no {db_file}).")
    engine = make_engine(settings.database_url)
    try:
        check_reachable(engine)
        with engine.connect() as conn:
            migrate.ensure_current(conn, where)
    except BaseException:
        engine.dispose()
        raise
    return Catalog(settings, engine, open_blob_store(settings))
