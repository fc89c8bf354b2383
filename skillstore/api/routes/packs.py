"""Packs: list, show, lineage graph, download and upload the file, and promote, reject or retire."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from ...catalog import (
    PackStatus,
    ancestors,
    descendants,
    describe_nodes,
    get_base,
    get_pack,
    get_skill,
    list_packs,
)
from ...catalog.packs import pack_detail, pack_file_name, pack_rows
from ...catalog.serialize import pack_dict, promotion_dict
from ..auth import actor
from ..context import ApiContext
from ..params import NAME_PATTERN, CreatedParams, FilterRef, PageParams, Ref
from ..schemas import LineageOut, OverrideIn, PackDetail, PackOut, Page, PromotionOut
from ._shared import WRITE, context, errors, saved_upload

router = APIRouter(tags=["packs"])
Ctx = Annotated[ApiContext, Depends(context)]
PACK_MEDIA_TYPE = "application/vnd.skillstore.pack+safetensors"


@router.get("/packs", response_model=Page[PackOut], responses=errors(401, 404, 422, 503))
def packs(ctx: Ctx, page: PageParams, created: CreatedParams,
          status: Annotated[PackStatus | None, Query()] = None,
          skill: FilterRef = None, base: FilterRef = None) -> dict:
    """Packs, newest first, filtered by skill, status, base and creation time."""
    with ctx.session() as session:
        found = list_packs(session, skill=get_skill(session, skill) if skill else None,
                           base=get_base(session, base) if base else None, status=status,
                           limit=page.limit, offset=page.offset,
                           created_after=created.after, created_before=created.before)
        return {"items": pack_rows(session, found.packs), "total": found.total,
                "limit": page.limit, "offset": page.offset}


@router.get("/packs/{ref}", response_model=PackDetail, responses=errors(400, 401, 404, 422, 503))
def pack(ref: Ref, ctx: Ctx) -> dict:
    """A pack: metadata, direct parents, the experiment run that made it (or null) and its
    status history."""
    with ctx.session() as session:
        return pack_detail(session, get_pack(session, ref))


@router.get("/packs/{ref}/lineage", response_model=LineageOut,
            responses=errors(400, 401, 404, 422, 503))
def lineage(ref: Ref, ctx: Ctx,
            direction: Annotated[Literal["ancestors", "descendants"], Query()] = "ancestors"
            ) -> dict:
    """The lineage graph of a pack as JSON: nodes with depths, edges child -> parent."""
    walk = descendants if direction == "descendants" else ancestors
    with ctx.session() as session:
        row = get_pack(session, ref)
        return describe_nodes(session, walk(session, row.id)).to_json()


@router.get("/packs/{ref}/file", response_class=FileResponse,
            responses={200: {"content": {PACK_MEDIA_TYPE: {}}, "description": "The pack file."},
                       **errors(400, 401, 404, 422, 500, 503)})
def download(ref: Ref, ctx: Ctx) -> FileResponse:
    """The pack's SkillPack file, verified against its digest before it is sent."""
    with ctx.session() as session:
        row = get_pack(session, ref)
        digest, filename = row.blob_digest, pack_file_name(row)
    path = ctx.blobs.local_path(digest, ctx.settings.home / "cache")
    return FileResponse(path, media_type=PACK_MEDIA_TYPE, filename=filename,
                        headers={"X-Skillstore-Digest": digest})


@router.post("/packs", status_code=201, response_model=PackOut, dependencies=WRITE,
             responses=errors(400, 401, 404, 413, 422, 503))
async def upload(
    request: Request, ctx: Ctx,
    skill: Annotated[str, Form(pattern=NAME_PATTERN, max_length=128)],
    file: Annotated[UploadFile, File(description="A SkillPack file (.safetensors).")],
    base: Annotated[str | None, Form(pattern=NAME_PATTERN, max_length=128)] = None,
) -> dict:
    """Add an uploaded SkillPack file as a new candidate pack of a skill.

    The file is verified in full (size, header, manifest, payload digest) and its base
    fingerprint must match the named base (or a registered base when none is named) before
    anything is stored; a refused file leaves the catalog and the blob store as they were.
    """
    return await run_in_threadpool(_upload, ctx, file, skill, base, actor(request))


def _upload(ctx: ApiContext, file: UploadFile, skill: str, base: str | None, who: str) -> dict:
    from ...errors import CorruptPackError
    from ...intake import import_pack_file

    label = file.filename or "upload"
    with saved_upload(ctx, file, ".safetensors") as path, ctx.session() as session:
        try:
            row = import_pack_file(session, ctx.blobs, path, skill=skill, base=base, actor=who)
        except CorruptPackError as exc:  # name the uploaded file, not the scratch copy
            raise CorruptPackError(str(exc).replace(str(path), label)) from None
        return pack_dict(row)


def _override(action: str):
    def handler(ref: Ref, body: OverrideIn, request: Request, ctx: Ctx) -> dict:
        from ...gate import override_pack

        with ctx.session() as session:
            audit = override_pack(session, ctx.blobs, get_pack(session, ref), action,
                                  reason=body.reason, actor=actor(request))
            return promotion_dict(audit)

    handler.__name__ = f"{action}_pack"
    handler.__doc__ = (f"Manual override: {action} a pack; the reason and the caller are kept "
                       "in the audit trail, and the base's current state moves as the gate's "
                       "would (a learned router is retrained for its packs).")
    return handler


for _action in ("promote", "reject", "retire"):
    router.add_api_route(f"/packs/{{ref}}/{_action}", _override(_action), methods=["POST"],
                         response_model=PromotionOut, response_model_by_alias=True,
                         dependencies=WRITE, responses=errors(400, 401, 404, 409, 422, 503))
