"""The console's actions: each form posts the token and a reason, then the same service call
as the API route runs, and the browser goes back to the page it came from."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

import pydantic
from fastapi import APIRouter, Form, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse

from ..api.params import JobId, Ref
from ..api.routes import jobs as api_jobs
from ..api.schemas import JobIn
from ..catalog import get_pack
from .access import actor_of, context

router = APIRouter(include_in_schema=False)
log = logging.getLogger("skillstore.ui")
Token = Annotated[str, Form(max_length=512)]
Reason = Annotated[str, Form(max_length=2000)]


def _back(request: Request, fallback: str) -> RedirectResponse:
    """303 to the console page the form was on (its Referer), else to ``fallback``."""
    came = request.headers.get("referer", "")
    path = came.split("://", 1)[-1].partition("/")[2]
    target = "/" + path if path.startswith("ui/") else fallback
    return RedirectResponse(target, status_code=303)


@router.post("/packs/{ref}/{action}")
def override(request: Request, ref: Ref, action: Literal["promote", "reject", "retire"],
             token: Token = "", reason: Reason = "") -> RedirectResponse:
    """Promote, reject, retire (or, from a base's page, unload) a pack, as the API's override."""
    from ..gate import override_pack

    ctx = context(request)
    who = actor_of(ctx, token, reason)
    with ctx.session() as session:
        row = get_pack(session, ref)
        override_pack(session, ctx.blobs, row, action, reason=reason.strip(), actor=who)
        pack_id = row.id
    return _back(request, f"/ui/packs/{pack_id}")


@router.post("/jobs")
def queue(request: Request, skill: Annotated[str, Form(max_length=128)] = "",
          base: Annotated[str, Form(max_length=128)] = "",
          method: Annotated[str, Form(max_length=16)] = "sft",
          token: Token = "", reason: Reason = "") -> RedirectResponse:
    """Queue a learning job with the API's request model and route."""
    ctx = context(request)
    who = actor_of(ctx, token, reason)
    try:
        body = JobIn(skill=skill, base=base, method=method)
    except pydantic.ValidationError as exc:  # the API's 422, with the same message
        raise RequestValidationError(exc.errors()) from None
    job = api_jobs.queue_job(body, ctx)
    log.info("%s queued job %s: %s", who, job["id"], reason.strip())
    return RedirectResponse(f"/ui/jobs/{job['id']}", status_code=303)


@router.post("/jobs/{job_id}/{action}")
def control(request: Request, job_id: JobId, action: Literal["cancel", "retry"],
            token: Token = "", reason: Reason = "") -> RedirectResponse:
    """Cancel or retry a job through the API's routes; the reason goes to the server log."""
    ctx = context(request)
    who = actor_of(ctx, token, reason)
    (api_jobs.cancel_job if action == "cancel" else api_jobs.retry_job)(job_id, ctx)
    log.info("%s %s job %s: %s", who, action, job_id, reason.strip())
    return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)
