"""Learning jobs: queue, list, show, cancel and retry, through the pipeline's own functions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from ...catalog import JobStatus, get_base, get_job, get_skill
from ...catalog.jobs import count_jobs, list_jobs
from ...catalog.serialize import job_dict
from ..context import ApiContext
from ..params import CreatedParams, FilterRef, JobId, PageParams
from ..schemas import JobIn, JobOut, Page
from ._shared import WRITE, context, errors

router = APIRouter(tags=["jobs"])
Ctx = Annotated[ApiContext, Depends(context)]


@router.post("/jobs", status_code=201, response_model=JobOut, dependencies=WRITE,
             responses=errors(400, 401, 404, 409, 413, 422, 503))
def queue_job(body: JobIn, ctx: Ctx) -> dict:
    """Queue a learning job (prepare, train, compress, evaluate, gate); a worker runs it."""
    from ...pipeline import LearnRequest, queue

    fields = body.model_dump(exclude={"train", "budget", "gate"})
    request = LearnRequest.build(**fields, sft=body.train,
                                 budget=None if body.budget is None else body.budget / 100,
                                 gate=body.gate or None)
    with ctx.session() as session:
        return job_dict(queue(session, ctx.settings, request))


@router.get("/jobs", response_model=Page[JobOut], responses=errors(401, 404, 422, 503))
def jobs(ctx: Ctx, page: PageParams, created: CreatedParams,
         status: Annotated[JobStatus | None, Query()] = None,
         skill: FilterRef = None, base: FilterRef = None) -> dict:
    """Jobs, newest first, filtered by status, skill, base and creation time."""
    with ctx.session() as session:
        filters = {"status": status,
                   "skill_id": get_skill(session, skill).id if skill else None,
                   "base_id": get_base(session, base).id if base else None,
                   "created_after": created.after, "created_before": created.before}
        rows = [job_dict(j) for j in list_jobs(session, limit=page.limit, offset=page.offset,
                                               **filters)]
        return {"items": rows, "total": count_jobs(session, **filters), "limit": page.limit,
                "offset": page.offset}


@router.get("/jobs/{job_id}", response_model=JobOut, responses=errors(401, 404, 422, 503))
def job(job_id: JobId, ctx: Ctx) -> dict:
    """One job: parameters, stage, progress, error and resulting pack."""
    with ctx.session() as session:
        return job_dict(get_job(session, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobOut, dependencies=WRITE,
             responses=errors(401, 404, 409, 422, 503))
def cancel_job(job_id: JobId, ctx: Ctx) -> dict:
    """Cancel a queued or running job; a running step stops at its next progress report."""
    from ...pipeline import cancel

    with ctx.session() as session:
        return job_dict(cancel(session, job_id))


@router.post("/jobs/{job_id}/retry", response_model=JobOut, dependencies=WRITE,
             responses=errors(401, 404, 409, 422, 503))
def retry_job(job_id: JobId, ctx: Ctx) -> dict:
    """Queue a failed or cancelled job again from the stage where it stopped."""
    from ...pipeline import retry

    with ctx.session() as session:
        return job_dict(retry(session, ctx.settings, job_id))
