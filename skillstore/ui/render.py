"""Jinja2 templates of the console, their filters, and the paging every list shares."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode

from fastapi import Query, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
TEMPLATES = Jinja2Templates(directory=HERE / "templates")
#: Rows per page of every list (the API's default page size).
PAGE_SIZE = 50
#: A list page's offset query parameter (every list is paged by PAGE_SIZE).
Offset = Annotated[int, Query(ge=0, le=2**31)]
#: The cookie that holds a signed-in reader's token (reads only; actions ask for it each time).
COOKIE = "skillstore_token"


def _bytes(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def _when(value: datetime | None) -> str:
    return "—" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _num(value, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _seconds(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "—"
    return f"{(end - start).total_seconds():.1f} s"


def _value(v) -> str:
    """An enum shows its value; anything else as text."""
    return str(getattr(v, "value", v))


def _pack_status(pack: dict) -> str:
    """A pack's status as the console shows it (`catalog.status_label`)."""
    from ..catalog import status_label

    return status_label(pack["status"], pack.get("inconclusive", False))


TEMPLATES.env.filters.update(bytes=_bytes, when=_when, num=_num, value=_value,
                             pack_status=_pack_status)
TEMPLATES.env.globals.update(seconds=_seconds, ui="/ui")


@dataclass(frozen=True)
class Pager:
    """Where one page of a list sits: the links to the pages before and after it keep filters."""

    offset: int
    total: int
    limit: int = PAGE_SIZE
    query: tuple[tuple[str, str], ...] = ()

    def link(self, offset: int) -> str:
        return "?" + urlencode([*self.query, ("offset", str(offset))])

    @property
    def previous(self) -> str | None:
        return self.link(max(0, self.offset - self.limit)) if self.offset > 0 else None

    @property
    def next(self) -> str | None:
        return self.link(self.offset + self.limit) if self.offset + self.limit < self.total \
            else None

    @property
    def shown(self) -> str:
        if not self.total:
            return "none"
        return f"{self.offset + 1}–{min(self.offset + self.limit, self.total)} of {self.total:,}"


def page(request: Request, template: str, status_code: int = 200, **values) -> HTMLResponse:
    """A rendered page; templates see ``request`` and ``signed_in`` besides ``values``."""
    return TEMPLATES.TemplateResponse(request, template, {
        "signed_in": bool(request.cookies.get(COOKIE)), **values}, status_code=status_code)
