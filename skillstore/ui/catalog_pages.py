"""Pages of bases, packs and a pack's lineage, built on the API routes' own functions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from ..api.params import Created, Page, Ref
from ..api.routes import catalog as api_catalog
from ..api.routes import packs as api_packs
from ..api.routes import reports as api_reports
from ..api.routes.states import state_doc
from ..catalog import PackStatus, current_head, get_state, list_bases, list_skills
from ..errors import NotFoundError, RequestError
from .access import Reader
from .lineage_svg import lineage_svg
from .render import PAGE_SIZE, Offset, Pager, page

router = APIRouter(include_in_schema=False)
Filter = Annotated[str, Query(max_length=200)]


def names(ctx) -> dict[str, list[str]]:
    """Every skill's and base's name: the choices of the filter and queue forms."""
    with ctx.session() as session:
        return {"skill": [s.name for s in list_skills(session)],
                "base": [b.name for b in list_bases(session)]}


@router.get("/bases", response_class=HTMLResponse)
def bases(request: Request, ctx: Reader, offset: Offset = 0) -> HTMLResponse:
    """Each base with its current state (the head) and the packs that state holds."""
    listed = api_catalog.bases(ctx, Page(PAGE_SIZE, offset))
    with ctx.session() as session:
        for base in listed["items"]:
            head = current_head(session, base["id"])
            base["head"] = state_doc(session, get_state(session, head.state_id)) if head else None
    return page(request, "bases.html", title="Bases", bases=listed["items"],
                pager=Pager(offset, listed["total"]))


def _status(text: str) -> PackStatus | None:
    if not text:
        return None
    try:
        return PackStatus(text)
    except ValueError:
        raise RequestError(f"status: {text!r} is not a pack status; use one of "
                           f"{', '.join(s.value for s in PackStatus)}.", field="status") from None


@router.get("/packs", response_class=HTMLResponse)
def packs(request: Request, ctx: Reader, offset: Offset = 0, skill: Filter = "",
          status: Filter = "", base: Filter = "") -> HTMLResponse:
    """Packs, newest first, filtered by skill, status and base (the API's listing)."""
    found = api_packs.packs(ctx, Page(PAGE_SIZE, offset), Created(), status=_status(status),
                            skill=skill or None, base=base or None)
    choices = {**names(ctx), "status": [s.value for s in PackStatus]}
    chosen = {"skill": skill, "status": status, "base": base}
    query = tuple((k, v) for k, v in chosen.items() if v)
    return page(request, "packs.html", title="Packs", packs=found["items"], choices=choices,
                chosen=chosen, pager=Pager(offset, found["total"], query=query))


@router.get("/packs/{ref}", response_class=HTMLResponse)
def pack(request: Request, ref: Ref, ctx: Reader) -> HTMLResponse:
    """A pack: manifest facts, the gate's decision with every check, and its audit trail."""
    doc = api_packs.pack(ref, ctx)
    try:
        decision = api_reports.report_data(ctx, pack=str(doc["id"])).decision or {}
    except NotFoundError as exc:  # the pack exists (above); no state has judged it yet
        decision = {"verdict": "pending", "reasons": [str(exc)]}
    return page(request, "pack.html", title=doc["name"], pack=doc, decision=decision,
                actions=("promote", "reject", "retire"))


@router.get("/packs/{ref}/lineage", response_class=HTMLResponse)
def lineage(request: Request, ref: Ref, ctx: Reader) -> HTMLResponse:
    """The pack's ancestors and descendants, drawn as one graph whose nodes link to packs."""
    doc = api_packs.pack(ref, ctx)
    up = api_packs.lineage(ref, ctx, direction="ancestors")
    down = api_packs.lineage(ref, ctx, direction="descendants")
    return page(request, "lineage.html", title=f"Lineage of {doc['name']}", pack=doc,
                svg=lineage_svg(up, down), nodes=len(up["nodes"]) + len(down["nodes"]) - 2)


@router.get("/packs/{ref}/file")
def download(ref: Ref, ctx: Reader):
    """The pack's file, verified against its digest (the API's download)."""
    return api_packs.download(ref, ctx)


@router.get("/packs/{ref}/report")
def export(ref: Ref, ctx: Reader, format: api_reports.Format = "md"):
    """The gate decision's report as JSON, HTML or Markdown (the API's export)."""
    answer = api_reports.pack_report(ref, ctx, format)
    answer.headers["Content-Disposition"] = f'attachment; filename="pack-{ref}-report.{format}"'
    return answer
