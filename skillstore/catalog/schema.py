"""Declarative base of the catalog: naming convention, UTC timestamps and the status enums."""

from __future__ import annotations

import enum
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase

# Alembic autogenerate and `alembic check` need stable constraint names on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


# Primary keys are 32-bit integers on every backend; a bigger number names no row, and
# PostgreSQL refuses to even compare it with an int4 column.
MAX_ROW_ID = 2**31 - 1


def fits_row_id(ref: int | str) -> bool:
    """Whether ``ref`` could be a row id: all digits and within the primary keys' range."""
    text = str(ref)
    return text.isdigit() and int(text) <= MAX_ROW_ID


def created_window(column, after: datetime | None, before: datetime | None) -> list:
    """Filters for ``after <= column < before``; a missing bound is no filter."""
    return ([column >= after] if after is not None else []) + \
        ([column < before] if before is not None else [])


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(sa.TypeDecorator):
    """A timezone-aware timestamp that comes back aware on SQLite too (stored as UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: catalog timestamps must be timezone-aware")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Record(DeclarativeBase):
    """Base class of every catalog table."""

    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict: sa.JSON(), list: sa.JSON()}


class PackStatus(str, enum.Enum):
    candidate = "candidate"
    promoted = "promoted"
    rejected = "rejected"
    retired = "retired"


class EdgeKind(str, enum.Enum):
    trained_on = "trained_on"
    distilled_from = "distilled_from"
    fused_from = "fused_from"
    recompressed_from = "recompressed_from"


class JobStatus(str, enum.Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


def enum_column(enum_cls: type[enum.Enum], name: str) -> sa.Enum:
    """A portable enum: VARCHAR and a named CHECK constraint, the same on SQLite and PostgreSQL."""
    return sa.Enum(enum_cls, name=name, native_enum=False, create_constraint=True,
                   length=24, validate_strings=True, values_callable=lambda e: [m.value for m in e])
