"""Bearer tokens: stored as sha256 digests, compared in constant time, checked before the body."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fastapi import Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_response

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Paths anyone may read: the schema and the liveness probe.
PUBLIC_PATHS = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/health"})
TOKEN_BYTES = 32

#: Declares the scheme in the OpenAPI schema; `AccessGuard` does the checking.
bearer_scheme = HTTPBearer(auto_error=False, description="A token whose sha256 digest is in "
                           "SKILLSTORE_API_TOKEN_HASHES (`skillstore api-token new`).")


def new_token() -> str:
    """A fresh random token (URL-safe, 256 bits)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """The digest that settings store: sha256 of the token's UTF-8 bytes, lowercase hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def match_token(token: str, digests: tuple[str, ...]) -> str | None:
    """The configured digest this token hashes to, or None; every digest is compared."""
    mine = hash_token(token)
    found = None
    for digest in digests:
        if hmac.compare_digest(mine, digest):
            found = digest
    return found


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


class AccessGuard:
    """ASGI middleware: writes need a valid token, reads too unless reads are open.

    It runs before routing and before the body is read, so a request without a valid token
    gets 401 whatever its body holds, and nothing it carries reaches a handler (paths under
    ``delegated`` excepted: the web console checks with `token_refusal` and answers in HTML).
    The matched digest's first 12 hex digits name the caller in audit rows (``api:<digest12>``).
    """

    def __init__(self, app: ASGIApp, *, token_hashes: tuple[str, ...], open_reads: bool,
                 delegated: tuple[str, ...] = ()):
        self.app = app
        # Path prefixes whose handlers apply the same rules themselves (the web console).
        self.delegated = tuple(delegated)
        self.token_hashes = tuple(token_hashes)
        self.open_reads = open_reads

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"].upper()
        token = _bearer(scope)
        digest = match_token(token, self.token_hashes) if token else None
        scope.setdefault("state", {})["actor"] = f"api:{digest[:12]}" if digest else "api:anonymous"
        path = scope["path"]
        if any(path == p or path.startswith(p + "/") for p in self.delegated):
            await self.app(scope, receive, send)
            return
        needs_token = scope["path"] not in PUBLIC_PATHS and (
            method not in READ_METHODS or not self.open_reads)
        message = token_refusal(token, digest, self.token_hashes) if needs_token else None
        if message is not None:
            response = error_response(401, "unauthorized", message,
                                      headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def token_refusal(token: str | None, digest: str | None, token_hashes: tuple[str, ...], *,
                  how: str = "send 'Authorization: Bearer <token>'") -> str | None:
    """Why a request that needs a token is refused (one line), or None when its token matched."""
    if digest is not None:
        return None
    if not token_hashes:
        return ("This server has no API tokens configured; set "
                "SKILLSTORE_API_TOKEN_HASHES (see `skillstore api-token new`).")
    if token is None:
        return f"This request needs a token: {how}."
    return "The bearer token is not valid for this server."


def actor(request: Request) -> str:
    """Who makes this request, for audit rows: `api:<first 12 hex of the token digest>`."""
    return request.state.actor


async def bearer(request: Request) -> HTTPAuthorizationCredentials | None:
    """The route dependency that puts the bearer scheme in the OpenAPI schema."""
    return await bearer_scheme(request)
