"""Experiments: queue a spec, list, show and cancel, through the experiments package's functions."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ...catalog import JobStatus
from ...catalog.serialize import experiment_dict
from ...errors import ConfigError, RequestError
from ...experiments.catalog import (
    cancel_experiment,
    count_experiments,
    get_experiment,
    list_experiments,
)
from ..context import ApiContext
from ..params import NAME_PATTERN, PageParams
from ..schemas import AdoptedOut, ExperimentOut, Page
from ._shared import WRITE, context, errors
from .reports import REPORT_RESPONSES, Format

router = APIRouter(tags=["experiments"])
Ctx = Annotated[ApiContext, Depends(context)]
ExperimentRef = Annotated[str, Path(pattern=rf"^[0-9]{{1,9}}$|{NAME_PATTERN}", max_length=128,
                                    description="Experiment id, or name (the newest of it).")]


@router.post("/experiments", status_code=201, response_model=ExperimentOut, dependencies=WRITE,
             responses=errors(400, 401, 404, 409, 422, 503))
def queue(ctx: Ctx, spec: Annotated[dict[str, Any], Body(
        description="An experiment spec, as the YAML file holds it (docs/experiments.md).")]
          ) -> dict:
    """Validate a spec whole, store it with one run per (method, seed) and queue every run;
    an unknown key or a method that cannot run yet is refused before anything is queued."""
    from ...experiments import parse_spec
    from ...experiments.queue import queue_experiment

    try:
        parsed = parse_spec(spec)
    except ConfigError as exc:
        raise RequestError(str(exc)) from None
    # A skill given as data names a file on the server, readable only under its path roots.
    skills = tuple(s.model_copy(update={"data": ctx.server_path(str(s.data), "dataset")})
                   if s.data is not None else s for s in parsed.skills)
    parsed = parsed.model_copy(update={"skills": skills})
    with ctx.session() as session:
        return experiment_dict(queue_experiment(session, ctx.settings, parsed, blobs=ctx.blobs))


@router.get("/experiments", response_model=Page[ExperimentOut],
            responses=errors(401, 422, 503))
def experiments(ctx: Ctx, page: PageParams,
                status: Annotated[JobStatus | None, Query()] = None) -> dict:
    """Experiments, newest first, optionally of one status, each with its runs."""
    with ctx.session() as session:
        rows = [experiment_dict(e) for e in list_experiments(
            session, status=status, limit=page.limit, offset=page.offset)]
        return {"items": rows, "total": count_experiments(session, status=status),
                "limit": page.limit, "offset": page.offset}


@router.get("/experiments/{ref}", response_model=ExperimentOut,
            responses=errors(401, 404, 422, 503))
def experiment(ref: ExperimentRef, ctx: Ctx) -> dict:
    """One experiment: its spec, status and every run with its status, error and result."""
    with ctx.session() as session:
        return experiment_dict(get_experiment(session, ref))


@router.post("/experiments/{ref}/cancel", response_model=ExperimentOut, dependencies=WRITE,
             responses=errors(401, 404, 409, 422, 503))
def cancel(ref: ExperimentRef, ctx: Ctx) -> dict:
    """Cancel the queued and running runs; a running one stops at its next progress check."""
    with ctx.session() as session:
        return experiment_dict(cancel_experiment(session, ref))


@router.post("/experiments/{ref}/adopt", response_model=list[AdoptedOut], dependencies=WRITE,
             responses=errors(400, 401, 404, 409, 422, 503))
def adopt(ref: ExperimentRef, ctx: Ctx,
          run: Annotated[int | None, Query(ge=1, le=2**31 - 1, description=(
              "The graft run; needed when the experiment has several (one per seed)."))] = None
          ) -> list[dict]:
    """Put a succeeded graft run's packs through the gate in curriculum order, each on the
    base's current head plus the pack (its router retrained), with the spec's gate policy; a
    promoted pack moves the head. Packs decided before are returned with their status."""
    from ...experiments.adopt import adopt_run, graft_run

    with ctx.session() as session:
        return [a.as_json() for a in adopt_run(session, ctx.settings, ctx.blobs,
                                               graft_run(session, ref, run))]


@router.get("/experiments/{ref}/report", response_model=None,
            responses={**REPORT_RESPONSES, **errors(409)})
def report(ref: ExperimentRef, ctx: Ctx, format: Format = "json") -> Any:
    """The comparison report: every method's metrics and bytes per skill over seeds with 95%
    intervals, mean accuracy matrices, paired tests of graft, failed and unfinished runs; 409
    while no run has succeeded."""
    from ...experiments.report import (
        EXPERIMENT_REPORT_FORMATS,
        build_experiment_report,
        render_experiment_report,
    )

    with ctx.session() as session:
        doc = build_experiment_report(session, get_experiment(session, ref))
    if format == "json":
        return JSONResponse(doc)
    text = render_experiment_report(doc, format)
    if format == "html":
        return HTMLResponse(text)
    return Response(text, media_type=EXPERIMENT_REPORT_FORMATS[format].media_type)
