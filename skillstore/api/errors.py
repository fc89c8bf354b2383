"""One JSON error shape for every failure: SkillstoreError subclasses, bad requests, lost DB."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from .. import errors as e

log = logging.getLogger("skillstore.api")


@dataclass(frozen=True)
class ErrorKind:
    """How one exception class answers: HTTP status and a stable machine-readable code."""

    exc: type[BaseException]
    status: int
    code: str


# Most specific first: the first class an exception is an instance of decides.
ERROR_KINDS = (
    ErrorKind(e.DatabaseUnavailableError, 503, "database_unavailable"),
    ErrorKind(e.WorkspaceError, 503, "workspace_not_ready"),
    ErrorKind(e.NotFoundError, 404, "not_found"),
    ErrorKind(e.DatasetError, 422, "invalid_dataset"),
    ErrorKind(e.RequestError, 422, "invalid_request"),
    ErrorKind(e.CorruptPackError, 422, "corrupt_pack"),
    ErrorKind(e.FingerprintMismatchError, 422, "base_mismatch"),
    ErrorKind(e.ModelMismatchError, 422, "model_mismatch"),
    ErrorKind(e.PromotionConflictError, 409, "promotion_conflict"),
    ErrorKind(e.JobError, 409, "job_conflict"),
    ErrorKind(e.BlobNotFoundError, 500, "blob_missing"),
    ErrorKind(e.BlobError, 500, "blob_error"),
    ErrorKind(e.ConfigError, 400, "invalid"),
    ErrorKind(e.SkillstoreError, 400, "invalid"),
)

HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 406: "not_acceptable", 409: "conflict",
              413: "too_large", 415: "unsupported_media_type", 422: "invalid_request",
              503: "unavailable"}

#: The OpenAPI description of the error shape, shared by every route.
ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                       "details": {"type": "array", "items": {"type": "object"}}}}},
}


def error_response(status: int, code: str, message: str, *, details: list | None = None,
                   headers: dict | None = None) -> JSONResponse:
    body: dict = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def kind_of(exc: BaseException) -> ErrorKind | None:
    return next((k for k in ERROR_KINDS if isinstance(exc, k.exc)), None)


async def _skillstore_error(_: Request, exc: e.SkillstoreError) -> JSONResponse:
    kind = kind_of(exc)
    if kind.status >= 500:
        log.error("%s: %s", type(exc).__name__, exc)
    field = getattr(exc, "field", "")  # a RequestError names the field that failed
    details = [{"loc": field.split("."), "msg": str(exc)}] if field else None
    return error_response(kind.status, kind.code, str(exc), details=details)


async def _database_error(_: Request, exc: sa.exc.SQLAlchemyError) -> JSONResponse:
    """A database that stops answering mid-request is an outage (503), not a bug (500)."""
    if isinstance(exc, sa.exc.DataError):  # e.g. a number outside the column's range
        return error_response(400, "invalid", "A value is out of range for the catalog "
                              f"({str(exc.orig).splitlines()[0]}); check the ids and numbers sent.")
    if isinstance(exc, sa.exc.IntegrityError):
        return error_response(409, "conflict", "The change conflicts with a concurrent one "
                              f"({str(exc.orig).splitlines()[0]}); read the object again and "
                              "retry.")
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)) \
            or getattr(exc, "connection_invalidated", False):
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        log.warning("database unavailable: %s", reason)
        return error_response(503, "database_unavailable",
                              f"The catalog database is unreachable ({reason}); retry shortly.",
                              headers={"Retry-After": "5"})
    log.exception("database error", exc_info=exc)
    return error_response(500, "internal", "The catalog database refused the request; "
                          "see the server log.")


def _location(err: dict) -> str:
    return ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "request"


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errs = list(exc.errors())
    first = errs[0] if errs else {"msg": "invalid request"}
    details = [{"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "")),
                "type": str(err.get("type", ""))} for err in errs]
    return error_response(422, "invalid_request", f"{_location(first)}: {first.get('msg')}",
                          details=details)


async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    return error_response(exc.status_code, HTTP_CODES.get(exc.status_code, "error"), message,
                          headers=getattr(exc, "headers", None))


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal", "Internal error; see the server log.")


#: (exception class, handler) pairs; the web console renders the same answers as HTML.
HANDLERS = ((e.SkillstoreError, _skillstore_error), (sa.exc.SQLAlchemyError, _database_error),
            (RequestValidationError, _validation_error), (HTTPException, _http_error),
            (Exception, _unexpected))


def install(app: FastAPI) -> None:
    """Route every failure through one JSON shape: {"error": {"code", "message"}}."""
    for exc, handler in HANDLERS:
        app.add_exception_handler(exc, handler)
