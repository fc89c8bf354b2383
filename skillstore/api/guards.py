"""ASGI guards that run before routing: path-like paths and oversized bodies are refused."""

from __future__ import annotations

from urllib.parse import unquote

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response


class PathGuard:
    """ASGI middleware: a path with '.'/'..' segments, backslashes or NUL is refused (400)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = scope.get("raw_path") or scope["path"].encode()
            text = unquote(raw.decode("latin-1")) if isinstance(raw, bytes) else scope["path"]
            for path in (scope["path"], text):
                segments = path.split("/")
                if any(s in (".", "..") for s in segments) or "\\" in path or "\x00" in path:
                    response = error_response(400, "path_like_identifier",
                                              "Identifiers may not contain '..', '.', '\\' or NUL "
                                              "path segments; use an id or a name.")
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


class BodyLimit:
    """ASGI middleware: a body over ``max_bytes`` is refused with 413 in the one error shape.

    A declared Content-Length over the limit is refused before a byte is read; a chunked body
    is counted as it streams, and the read that crosses the limit raises 413 in the handler.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> str:
        return (f"The request body is larger than this server accepts ({self.max_bytes:,} bytes, "
                "SKILLSTORE_API_MAX_UPLOAD_BYTES).")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await error_response(413, "too_large", self._too_large())(scope, receive, send)
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, self._too_large())
            return message

        await self.app(scope, counted, send)
