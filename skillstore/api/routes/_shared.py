"""Helpers the route modules share: the request's context, uploads to scratch files, responses."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastapi import Depends, Request, UploadFile

from ...errors import ConfigError
from ..auth import bearer
from ..context import ApiContext
from ..errors import ERROR_SCHEMA

UPLOAD_CHUNK = 1 << 20
#: Routes that change state declare the bearer scheme (AccessGuard enforces it).
WRITE = [Depends(bearer)]


def context(request: Request) -> ApiContext:
    return request.app.state.ctx


# Any route can answer these: the guards (path 400, token 401, size 413), validation, an outage.
COMMON_ERRORS = (400, 401, 413, 422, 503)


def errors(*statuses: int) -> dict:
    """The `responses=` entry that documents the error shape for these and the common codes."""
    return {s: {"description": "An error",
                "content": {"application/json": {"schema": ERROR_SCHEMA}}}
            for s in sorted({*statuses, *COMMON_ERRORS})}


@contextmanager
def saved_upload(ctx: ApiContext, upload: UploadFile, suffix: str) -> Iterator[Path]:
    """The upload's bytes in a scratch file of the workspace, removed afterwards."""
    fd, name = tempfile.mkstemp(suffix=suffix, dir=ctx.scratch_dir())
    path = Path(name)
    try:
        with open(fd, "wb") as out:
            while block := upload.file.read(UPLOAD_CHUNK):
                out.write(block)
        if path.stat().st_size == 0:
            raise ConfigError(f"The uploaded file {upload.filename or ''!r} is empty.")
        yield path
    finally:
        path.unlink(missing_ok=True)
