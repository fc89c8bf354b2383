"""The console's sub-application: its page routers, vendored static files and HTML errors."""

from __future__ import annotations

import threading

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from ..api.context import ApiContext
from ..reports.render import pyplot
from . import access, actions, catalog_pages, errors, job_pages, report_pages
from .render import STATIC_DIR

#: Where `server.create_app` mounts the console; the AccessGuard leaves these paths to it.
UI_PREFIX = "/ui"


def create_ui(ctx: ApiContext) -> FastAPI:
    """The console as an app to mount at ``UI_PREFIX``, serving the workspace of ``ctx``.

    The state pages draw their heatmap with matplotlib, whose import takes most of a second;
    it is imported in the background now, so the first state page is as fast as the next."""
    threading.Thread(target=pyplot, name="ui-warm-pyplot", daemon=True).start()
    ui = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    ui.state.ctx = ctx
    errors.install(ui)
    ui.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    for module in (access, catalog_pages, job_pages, report_pages, actions):
        ui.include_router(module.router)

    @ui.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse(f"{UI_PREFIX}/bases", status_code=303)

    return ui
