"""Bases and skills: register (a server path or an uploaded dataset), list and show."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool

from ...catalog import get_base, get_skill, list_bases, list_skills, register_base
from ...catalog.serialize import base_dict, skill_dict
from ...curriculum.lmeval import METRICS
from ..context import ApiContext
from ..params import NAME_PATTERN, Ref
from ..params import PageParams as PageQ
from ..schemas import BaseIn, BaseOut, Page, SkillIn, SkillOut
from ._shared import WRITE, context, errors, saved_upload

router = APIRouter(tags=["bases and skills"])
Ctx = Annotated[ApiContext, Depends(context)]


def _page(rows: list[dict], page) -> dict:
    return {"items": rows[page.offset:page.offset + page.limit], "total": len(rows),
            "limit": page.limit, "offset": page.offset}


@router.post("/bases", status_code=201, response_model=BaseOut, dependencies=WRITE,
             responses=errors(400, 401, 404, 413, 422, 503))
def add_base(body: BaseIn, ctx: Ctx) -> dict:
    """Register a checkpoint folder on the server as a base model (hashes its weights); with
    ``general_suite``, build its behaviour suite first (runs the model)."""
    from ...behaviour import build_for_checkpoint
    from ...catalog.registry import existing_base
    from ...errors import ConfigError
    from ...heldout import SUITES_DIR
    from ...intake import checkpoint_info

    if body.general_data is not None and not body.general_suite:
        raise ConfigError("general_data builds the behaviour suite; set general_suite to true "
                          "or drop general_data.")
    folder = ctx.server_path(body.path, "checkpoint folder")
    info = checkpoint_info(str(folder), allow_hub=False)
    behaviour = None
    if body.general_suite:
        with ctx.session() as session:  # a name or weights clash fails before the build
            existing_base(session, body.name, info.fingerprint)
        data = (ctx.server_path(body.general_data, "probe file")
                if body.general_data is not None else None)
        behaviour = build_for_checkpoint(folder, ctx.settings.home / SUITES_DIR, base=body.name,
                                         fingerprint=info.fingerprint, data=data)
    with ctx.session() as session:
        return base_dict(register_base(session, name=body.name, behaviour=behaviour,
                                       **asdict(info)))


@router.get("/bases", response_model=Page[BaseOut], responses=errors(401, 422, 503))
def bases(ctx: Ctx, page: PageQ) -> dict:
    """Registered base models, oldest first."""
    with ctx.session() as session:
        return _page([base_dict(b) for b in list_bases(session)], page)


@router.get("/bases/{ref}", response_model=BaseOut, responses=errors(401, 404, 422, 503))
def base(ref: Ref, ctx: Ctx) -> dict:
    """One base model by id or name."""
    with ctx.session() as session:
        return base_dict(get_base(session, ref))


@router.post("/skills", status_code=201, response_model=SkillOut, dependencies=WRITE,
             responses=errors(400, 401, 404, 413, 422, 503))
def add_skill(body: SkillIn, ctx: Ctx) -> dict:
    """Register a skill whose JSONL dataset is a file on the server (validated line by line)."""
    from ...intake import register_skill_dataset

    data = ctx.server_path(body.path, "dataset")
    suite = _suite_paths(ctx, body.suite)
    with ctx.session() as session:
        return skill_dict(register_skill_dataset(
            session, ctx.blobs, name=body.name, data=data, suite=suite,
            description=body.description, suites_dir=_suites_dir(ctx), seed=body.seed,
            test_size=body.test_size, metric=body.metric))


def _suites_dir(ctx: ApiContext):
    from ...heldout import SUITES_DIR

    return ctx.settings.home / SUITES_DIR


def _suite_paths(ctx: ApiContext, suite: str) -> str:
    """A suite's task YAML paths are server paths: held to SKILLSTORE_API_PATH_ROOTS too."""
    entries = [e.strip() for e in suite.split(",") if e.strip()]
    return ",".join(str(ctx.server_path(e, "suite YAML")) if e.endswith((".yaml", ".yml"))
                    else e for e in entries)


@router.post("/skills/upload", status_code=201, response_model=SkillOut, dependencies=WRITE,
             responses=errors(400, 401, 404, 413, 422, 503))
async def upload_skill(
    ctx: Ctx,
    name: Annotated[str, Form(pattern=NAME_PATTERN, max_length=128)],
    data: Annotated[UploadFile, File(description="The JSONL dataset.")],
    suite: Annotated[str, Form(max_length=4096, pattern=r"^[^\x00-\x1f\x7f]*$")] = "",
    description: Annotated[str, Form(max_length=2000)] = "",
    seed: Annotated[int | None, Form(ge=0)] = None,
    test_size: Annotated[int | None, Form(ge=1)] = None,
    metric: Annotated[Literal[METRICS] | None, Form()] = None,
) -> dict:
    """Register a skill with an uploaded JSONL dataset (validated line by line, then stored);
    without a suite, a held-out split of it (seed, test_size, metric) becomes its suite."""
    split = {"seed": seed, "test_size": test_size, "metric": metric}
    return await run_in_threadpool(_upload_skill, ctx, name, data, _suite_paths(ctx, suite),
                                   description, split)


def _upload_skill(ctx: ApiContext, name: str, data: UploadFile, suite: str,
                  description: str, split: dict) -> dict:
    from ...errors import DatasetError
    from ...fingerprint import sha256_file
    from ...intake import register_skill_dataset

    label = data.filename or "upload"
    with saved_upload(ctx, data, ".jsonl") as path, ctx.session() as session:
        blobs = ctx.blobs
        # The catalog points at the stored blob: the scratch file is gone after the request.
        where = blobs.path(sha256_file(path))
        uri = where if blobs.local else blobs.fs.unstrip_protocol(where)
        try:
            row = register_skill_dataset(session, blobs, name=name, data=path, suite=suite,
                                         description=description, data_uri=uri,
                                         suites_dir=_suites_dir(ctx), **split)
        except DatasetError as exc:  # name the uploaded file, not the scratch copy
            raise DatasetError(str(exc).replace(str(path), label)) from None
        return skill_dict(row)


@router.get("/skills", response_model=Page[SkillOut], responses=errors(401, 422, 503))
def skills(ctx: Ctx, page: PageQ) -> dict:
    """Skills, oldest first."""
    with ctx.session() as session:
        return _page([skill_dict(s) for s in list_skills(session)], page)


@router.get("/skills/{ref}", response_model=SkillOut, responses=errors(401, 404, 422, 503))
def skill(ref: Ref, ctx: Ctx) -> dict:
    """One skill by id or name."""
    with ctx.session() as session:
        return skill_dict(get_skill(session, ref))
