"""States and experiments: lists, and each one's report as the report modules render it."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from ..api.params import Created, Page, Ref
from ..api.routes import experiments as api_experiments
from ..api.routes import reports as api_reports
from ..api.routes import states as api_states
from ..errors import JobError
from .access import Reader
from .render import PAGE_SIZE, Offset, Pager, page

router = APIRouter(include_in_schema=False)
_BODY = re.compile(r"<body>(.*)</body>", re.S)
_TITLE = re.compile(r"<h1>.*?</h1>", re.S)


def body_of(document: str) -> str:
    """The inside of a rendered report's <body>, less its title (the page has its own)."""
    found = _BODY.search(document)
    return _TITLE.sub("", found.group(1) if found else document, count=1)


@router.get("/states", response_class=HTMLResponse)
def states(request: Request, ctx: Reader, offset: Offset = 0) -> HTMLResponse:
    """Model states, newest first, each with its packs and whether it is its base's head."""
    found = api_states.states(ctx, Page(PAGE_SIZE, offset), Created())
    return page(request, "states.html", title="States", states=found["items"],
                pager=Pager(offset, found["total"]))


@router.get("/states/{ref}", response_class=HTMLResponse)
def state(request: Request, ref: Ref, ctx: Reader) -> HTMLResponse:
    """A state's report: heatmap, metrics with intervals, router accuracy and confusion, and
    the per-suite diff against its parent (skillstore.reports' HTML, embedded)."""
    doc = api_states.state(ref, ctx)
    report = api_reports.state_report(str(doc["id"]), ctx, "html").body.decode()
    return page(request, "state.html", title=f"State {doc['id']}", state=doc,
                report=body_of(report))


@router.get("/experiments", response_class=HTMLResponse)
def experiments(request: Request, ctx: Reader, offset: Offset = 0) -> HTMLResponse:
    found = api_experiments.experiments(ctx, Page(PAGE_SIZE, offset))
    return page(request, "experiments.html", title="Experiments",
                experiments=found["items"], pager=Pager(offset, found["total"]))


@router.get("/experiments/{ref}", response_class=HTMLResponse)
def experiment(request: Request, ref: api_experiments.ExperimentRef, ctx: Reader
               ) -> HTMLResponse:
    """An experiment's runs and its comparison report with the plots (experiments.report)."""
    doc = api_experiments.experiment(ref, ctx)
    try:
        report, waiting = body_of(api_experiments.report(ref, ctx, "html").body.decode()), None
    except JobError as exc:  # no run has succeeded yet: the page says so, with the runs
        report, waiting = None, str(exc)
    return page(request, "experiment.html", title=f"Experiment {doc['name']}", experiment=doc,
                report=report, waiting=waiting)
