"""The app factory: routes, the one error shape, the token and path guards, and the body limit."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import asynccontextmanager

from fastapi import FastAPI

from .. import __version__
from ..settings import Settings, get_settings
from . import errors
from .auth import AccessGuard
from .context import ApiContext
from .guards import BodyLimit, PathGuard
from .routes import ROUTERS

DESCRIPTION = """The skillstore service over HTTP: the CLI's operations through the same service
functions. Every write needs `Authorization: Bearer <token>`; reads too unless the server opens
them. Errors are `{"error": {"code": ..., "message": ...}}`. See docs/api.md."""


Mount = Callable[[ApiContext], FastAPI]


def create_api(settings: Settings | None = None, *,
               mounts: Mapping[str, Mount] | None = None) -> FastAPI:
    """A FastAPI app serving the workspace that ``settings`` name (default: the environment).

    ``mounts`` maps a path prefix to a factory of a sub-app over the same context (the web
    console: `skillstore.server.create_app`); the token guard leaves those paths to the
    sub-app, which applies the same rules itself."""
    mounts = dict(mounts or {})
    settings = settings or get_settings()
    ctx = ApiContext(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        ctx.close()

    app = FastAPI(title="skillstore", version=__version__, description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.ctx = ctx
    errors.install(app)
    for router in ROUTERS:
        app.include_router(router)

    for prefix, make in mounts.items():
        app.mount(prefix, make(ctx))

    @app.get("/health", tags=["service"])
    def health() -> dict:
        """Liveness: answers while the process runs, whatever the database's state."""
        return {"status": "ok", "version": __version__}

    # Added last = runs first: path, then token, then size; all before the body is read.
    app.add_middleware(AccessGuard, token_hashes=settings.api_token_hashes,
                       open_reads=settings.api_open_reads, delegated=tuple(mounts))
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_upload_bytes)
    app.add_middleware(PathGuard)
    return app
