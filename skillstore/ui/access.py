"""Who may read and act: the API's token rules, with the token from a cookie or a form field.

Reads follow ``SKILLSTORE_API_OPEN_READS``; when reads are closed, a reader signs in once and
the token waits in an HttpOnly, same-site cookie. Actions never use the cookie: each form asks
for the token and a reason, so a page of another site cannot act in a signed-in reader's name.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.exceptions import HTTPException

from ..api.auth import match_token, token_refusal
from ..api.context import ApiContext
from ..errors import RequestError
from .render import COOKIE, page

router = APIRouter(include_in_schema=False)
SIGN_IN = "sign in with an API token at /ui/signin"
IN_FORM = "paste an API token into the form's token field"


def context(request: Request) -> ApiContext:
    return request.app.state.ctx


def _refuse(ctx: ApiContext, token: str | None, how: str) -> str:
    """The token's digest, or 401 with the API's one-line reason."""
    hashes = ctx.settings.api_token_hashes
    digest = match_token(token, hashes) if token else None
    message = token_refusal(token, digest, hashes, how=how)
    if message is not None:
        raise HTTPException(401, message)
    return digest


def reader(request: Request) -> ApiContext:
    """The route dependency of every page: the context, once reads are allowed."""
    ctx = context(request)
    if not ctx.settings.api_open_reads:
        _refuse(ctx, request.cookies.get(COOKIE) or None, SIGN_IN)
    return ctx


Reader = Annotated[ApiContext, Depends(reader)]


def actor_of(ctx: ApiContext, token: str, reason: str) -> str:
    """Who acts, for the audit (``ui:<digest12>``); 401 without a valid token, 422 without a
    reason."""
    digest = _refuse(ctx, token.strip() or None, IN_FORM)
    if not reason.strip():
        raise RequestError("This action needs a reason: say why in the form's reason field.",
                           field="reason")
    return f"ui:{digest[:12]}"


@router.get("/signin", response_class=HTMLResponse)
def sign_in_form(request: Request) -> HTMLResponse:
    return page(request, "signin.html", title="Sign in")


@router.post("/signin")
def sign_in(request: Request, token: Annotated[str, Form(max_length=512)] = "") -> RedirectResponse:
    """Check the token as the API would, then keep it in a cookie for later reads."""
    _refuse(context(request), token.strip() or None, IN_FORM)
    answer = RedirectResponse("/ui/bases", status_code=303)
    answer.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict", path="/ui")
    return answer


@router.post("/signout")
def sign_out() -> RedirectResponse:
    answer = RedirectResponse("/ui/bases", status_code=303)
    answer.delete_cookie(COOKIE, path="/ui")
    return answer
