"""The live job list (a rows fragment the page polls) and a job's page with its step outputs."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from ..api.params import Created, JobId, Page
from ..api.routes import jobs as api_jobs
from ..catalog import JobStatus
from .access import Reader
from .catalog_pages import names
from .render import PAGE_SIZE, Offset, Pager, page

router = APIRouter(include_in_schema=False)


def _listing(ctx, offset: int) -> tuple[list[dict], Pager]:
    found = api_jobs.jobs(ctx, Page(PAGE_SIZE, offset), Created())
    return found["items"], Pager(offset, found["total"])


@router.get("/jobs", response_class=HTMLResponse)
def jobs(request: Request, ctx: Reader, offset: Offset = 0) -> HTMLResponse:
    """Jobs, newest first; the table's rows refresh in place (static/ui.js)."""
    items, pager = _listing(ctx, offset)
    choices = names(ctx)
    return page(request, "jobs.html", title="Jobs", jobs=items, pager=pager,
                skills=choices["skill"], bases=choices["base"], offset=offset)


@router.get("/jobs/rows", response_class=HTMLResponse)
def job_rows(request: Request, ctx: Reader, offset: Offset = 0) -> HTMLResponse:
    """The rows of one page of the job list, for the live refresh."""
    items, pager = _listing(ctx, offset)
    return page(request, "job_rows.html", jobs=items, pager=pager)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job(request: Request, job_id: JobId, ctx: Reader) -> HTMLResponse:
    """A job: its request, every step's output, its error, and cancel/retry."""
    doc = api_jobs.job(job_id, ctx)
    steps = {stage: json.dumps(out, indent=2, sort_keys=True, default=str)
             for stage, out in (doc["steps"] or {}).items()}
    return page(request, "job.html", title=f"Job {job_id}", job=doc, steps=steps,
                request_json=json.dumps(doc["request"], indent=2, sort_keys=True, default=str),
                finished=JobStatus(doc["status"]).finished)
