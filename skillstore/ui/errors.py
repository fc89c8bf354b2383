"""Failures as pages: the API's own handlers decide status and message; the console shows them."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request

from ..api import errors as api_errors
from .render import page

#: Error codes that mean the catalog cannot be reached (a page that says so, not a trace).
UNREACHABLE = frozenset({"database_unavailable", "workspace_not_ready"})
TITLES = {401: "Refused", 404: "Not found", 409: "Conflict", 413: "Too large"}


def _as_page(handler):
    async def render(request: Request, exc: Exception):
        answer = await handler(request, exc)
        error = json.loads(answer.body)["error"]
        status = answer.status_code
        if status == 404 and error["message"] == "Not Found":  # no route: name what was asked
            error["message"] = f"No page at {request.url.path}; start from /ui/bases."
        title = ("Catalog unreachable" if error["code"] in UNREACHABLE
                 else TITLES.get(status, "Error" if status >= 500 else "Refused"))
        response = page(request, "error.html", status_code=status, title=title,
                        code=error["code"], message=error["message"])
        for name in ("WWW-Authenticate", "Retry-After"):
            if name in answer.headers:
                response.headers[name] = answer.headers[name]
        return response

    return render


def install(app: FastAPI) -> None:
    """Every failure the API answers in JSON, the console answers as a page with its message."""
    for exc, handler in api_errors.HANDLERS:
        app.add_exception_handler(exc, _as_page(handler))
