"""Forgetting reports of a state or of a pack's gate decision: JSON, HTML with the heatmap, PNG."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ...catalog import get_pack, get_state
from ..context import ApiContext
from ..params import Ref
from ._shared import context, errors

router = APIRouter(tags=["reports"])
Ctx = Annotated[ApiContext, Depends(context)]
Format = Annotated[Literal["json", "html", "md"], Query(description="json, html or md.")]
MEDIA = {"json": "application/json", "html": "text/html; charset=utf-8",
         "md": "text/markdown; charset=utf-8"}
REPORT_RESPONSES = {200: {"description": "The report.",
                          "content": {"application/json": {"schema": {"type": "object"}},
                                      "text/html": {"schema": {"type": "string"}},
                                      "text/markdown": {"schema": {"type": "string"}}}},
                    **errors(401, 404, 422, 503)}
PNG_RESPONSES = {200: {"description": "The heatmap.", "content": {"image/png": {}}},
                 **errors(401, 404, 422, 503)}


def report_data(ctx: ApiContext, *, state: str | None = None, pack: str | None = None):
    """The report of a state, or of the state that judged a pack (the gate's decision)."""
    from ...reports import build_report

    with ctx.session() as session:
        return build_report(session, state=get_state(session, state) if state else None,
                            pack=get_pack(session, pack) if pack else None, blobs=ctx.blobs)


def _rendered(data, fmt: str) -> Response:
    from ...reports import render_report

    text = render_report(data, fmt)
    if fmt == "json":
        return JSONResponse(json.loads(text))
    if fmt == "html":
        return HTMLResponse(text)
    return Response(text, media_type=MEDIA[fmt])


def _png(data) -> Response:
    from ...reports import heatmap_png

    return Response(heatmap_png(data), media_type="image/png")


@router.get("/states/{ref}/report", response_model=None, responses=REPORT_RESPONSES)
def state_report(ref: Ref, ctx: Ctx, format: Format = "json") -> Any:
    """A state's forgetting report: accuracy matrix, BWT, forgetting, deltas, packs, lineage."""
    return _rendered(report_data(ctx, state=ref), format)


@router.get("/packs/{ref}/report", response_model=None, responses=REPORT_RESPONSES)
def pack_report(ref: Ref, ctx: Ctx, format: Format = "json") -> Any:
    """The report of a pack's gate decision, on the state it was judged on."""
    return _rendered(report_data(ctx, pack=ref), format)


@router.get("/states/{ref}/report/heatmap.png", response_model=None, responses=PNG_RESPONSES)
def state_heatmap(ref: Ref, ctx: Ctx) -> Any:
    """The accuracy-matrix heatmap of a state's report (and its baselines'), as PNG."""
    return _png(report_data(ctx, state=ref))


@router.get("/packs/{ref}/report/heatmap.png", response_model=None, responses=PNG_RESPONSES)
def pack_heatmap(ref: Ref, ctx: Ctx) -> Any:
    """The accuracy-matrix heatmap of a pack's gate report, as PNG."""
    return _png(report_data(ctx, pack=ref))
