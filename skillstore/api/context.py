"""The workspace one API process serves: opened on first use, one session per request."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.orm import Session

from ..errors import ConfigError
from ..settings import Settings


class ApiContext:
    """Settings plus a lazily opened catalog, so the server starts while the database is down.

    The first request that needs the catalog opens it (reachability and schema checks included);
    until that succeeds every such request answers 503, and later outages surface as database
    errors inside the request's session, which also answer 503.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self._catalog = None
        self._lock = threading.Lock()

    @property
    def catalog(self):
        if self._catalog is None:
            with self._lock:
                if self._catalog is None:
                    from ..catalog import open_catalog

                    self._catalog = open_catalog(self.settings)
        return self._catalog

    @property
    def blobs(self):
        return self.catalog.blobs

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One request's session: committed when the handler returns, rolled back on error.

        It connects at once, so a database that went away fails the request (503) before the
        handler writes a blob or does any other work.
        """
        with self.catalog.session() as session:
            session.connection()
            yield session

    def scratch_dir(self) -> Path:
        """Where uploads wait while they are verified (inside the workspace, same filesystem)."""
        path = self.settings.home / "tmp" / "api"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def server_path(self, text: str, what: str) -> Path:
        """A server-side path from a request, refused outside `api_path_roots` when those are
        set."""
        if any(ord(c) < 32 or c == "\x7f" for c in text):
            raise ConfigError(
                f"The {what} {text!r} contains control characters; send a plain path.")
        path = Path(text).expanduser()
        roots = self.settings.api_path_roots
        if roots:
            resolved = path.resolve()
            if not any(resolved.is_relative_to(Path(r).expanduser().resolve()) for r in roots):
                raise ConfigError(f"The {what} {text!r} is outside the folders this server may "
                                  "read (SKILLSTORE_API_PATH_ROOTS); upload it or move it there.")
        try:
            path.exists()  # a name too long for the filesystem raises here, not later
        except OSError as exc:
            raise ConfigError(f"The {what} {text[:200]!r} cannot be looked up ({exc.strerror}); "
                              "send a shorter path.") from None
        return path

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None
