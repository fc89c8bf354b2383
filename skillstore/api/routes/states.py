"""Model states: list and show, with their packs in order and whether each is its base's current."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from ...catalog import current_head, get_base, get_state
from ...catalog.states import list_states
from ..context import ApiContext
from ..params import CreatedParams, FilterRef, PageParams, Ref
from ..schemas import Page, StateOut
from ._shared import context, errors

router = APIRouter(tags=["states"])
Ctx = Annotated[ApiContext, Depends(context)]


def state_doc(session, state) -> dict:
    """A state with its base's name, its members named SKILL@vN, and whether it is current."""
    from ...states import load_view

    view = load_view(session, state)
    head = current_head(session, state.base_id)
    return {"id": state.id, "fingerprint": state.fingerprint, "base": view.base_name,
            "base_id": state.base_id, "parent_id": state.parent_id, "router": state.router,
            "router_config": state.router_config, "description": state.description,
            "packs": [{"position": i, "pack_id": m.pack_id, "name": f"{m.skill}@v{m.version}",
                       "scale": m.scale} for i, m in enumerate(view.members)],
            "current": bool(head and head.state_id == state.id), "created_at": state.created_at}


@router.get("/states", response_model=Page[StateOut], responses=errors(401, 404, 422, 503))
def states(ctx: Ctx, page: PageParams, created: CreatedParams, base: FilterRef = None) -> dict:
    """Model states, newest first, filtered by base and creation time."""
    with ctx.session() as session:
        rows, total = list_states(session, base_id=get_base(session, base).id if base else None,
                                  created_after=created.after, created_before=created.before,
                                  limit=page.limit, offset=page.offset)
        return {"items": [state_doc(session, s) for s in rows], "total": total,
                "limit": page.limit, "offset": page.offset}


@router.get("/states/{ref}", response_model=StateOut, responses=errors(401, 404, 422, 503))
def state(ref: Ref, ctx: Ctx) -> dict:
    """One model state by id or fingerprint."""
    with ctx.session() as session:
        return state_doc(session, get_state(session, ref))
