"""Request parameters shared by the routes: identifiers, paging and date filters."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from fastapi import Depends, Path, Query

# A name starts with a letter and has no '/', '\' or '..': it can never leave a folder.
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$"
# An id (12; 9 digits at most, inside the catalog's 32-bit ids), SKILL@vN, or sha256:<hex>.
REF_PATTERN = (r"^([0-9]{1,9}|[A-Za-z][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*(@v?[0-9]{1,9})?"
               r"|sha256:[0-9a-f]{64})$")

Name = Annotated[str, Path(pattern=NAME_PATTERN, max_length=128, description="A name or an id.")]
Ref = Annotated[str, Path(pattern=REF_PATTERN, max_length=200,
                          description="An id, a name, SKILL@vN for a pack, or a state "
                                      "fingerprint.")]
JobId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Job id.")]
FilterRef = Annotated[str | None, Query(pattern=REF_PATTERN, max_length=200)]


def _utc(value: datetime | None) -> datetime | None:
    """Dates without a zone are UTC; the catalog compares aware timestamps."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


class Page:
    """`limit` and `offset` of a listing."""

    def __init__(self, limit: Annotated[int, Query(ge=1, le=1000, description="Page size.")] = 50,
                 offset: Annotated[int, Query(ge=0, le=2**31, description="Rows to skip.")] = 0):
        self.limit, self.offset = limit, offset


class Created:
    """`created_after` (inclusive) and `created_before` (exclusive), ISO 8601; no zone means UTC."""

    def __init__(self, created_after: Annotated[datetime | None, Query()] = None,
                 created_before: Annotated[datetime | None, Query()] = None):
        try:
            self.after, self.before = _utc(created_after), _utc(created_before)
        except (OverflowError, ValueError):  # a date at the edge of the calendar, moved to UTC
            from ..errors import ConfigError

            raise ConfigError("created_after/created_before are out of range; use dates "
                              "between the years 1 and 9999.") from None


PageParams = Annotated[Page, Depends()]
CreatedParams = Annotated[Created, Depends()]
