"""Bases and skills: register, look up by id or name, and list."""

from __future__ import annotations

import re

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..errors import ConfigError, NotFoundError, did_you_mean
from .models import BaseCheckpoint, Skill
from .schema import fits_row_id

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,127}$")


def check_name(kind: str, name: str) -> str:
    """Names start with a letter (so they never read as ids) and use [A-Za-z0-9_.-]."""
    if not NAME_RE.match(name):
        raise ConfigError(f"{kind} name {name!r} is not valid; use a letter followed by letters, "
                          "digits, '_', '.' or '-' (at most 128 characters).")
    return name


def _lookup(session: Session, model, kind: str, ref: str | int):
    if isinstance(ref, int) or str(ref).isdigit():
        row = session.get(model, int(ref)) if fits_row_id(ref) else None
        if row is None:
            raise NotFoundError(
                f"No {kind} with id {ref}; list them with `skillstore {kind} list`.")
        return row
    row = session.scalar(sa.select(model).where(model.name == ref))
    if row is None:
        names = list(session.scalars(sa.select(model.name).limit(1000)))
        hint = did_you_mean(str(ref), names) if names else ""
        raise NotFoundError(f"No {kind} named {ref!r}.{hint}"
                            f" List them with `skillstore {kind} list`.")
    return row


def get_base(session: Session, ref: str | int) -> BaseCheckpoint:
    """A base model by id or name."""
    return _lookup(session, BaseCheckpoint, "base", ref)


def get_skill(session: Session, ref: str | int) -> Skill:
    """A skill by id or name."""
    return _lookup(session, Skill, "skill", ref)


def existing_base(session: Session, name: str, fingerprint: str) -> BaseCheckpoint | None:
    """The base ``name`` with these weights, None when neither is registered; ConfigError when
    the name holds other weights or the weights another name (checked before costly work)."""
    check_name("base", name)
    by_name = session.scalar(sa.select(BaseCheckpoint).where(BaseCheckpoint.name == name))
    if by_name is not None:
        if by_name.fingerprint == fingerprint:
            return by_name
        raise ConfigError(f"Base {name!r} is already registered with other weights "
                          f"({by_name.fingerprint[:19]}...); pick another name.")
    by_fp = session.scalar(
        sa.select(BaseCheckpoint).where(BaseCheckpoint.fingerprint == fingerprint))
    if by_fp is not None:
        raise ConfigError(f"These weights are already registered as base {by_fp.name!r} "
                          f"(id {by_fp.id}); use that name.")
    return None


def register_base(session: Session, *, name: str, uri: str, architecture: str, fingerprint: str,
                  tokenizer_fingerprint: str | None = None,
                  behaviour: dict | None = None) -> BaseCheckpoint:
    """Add a base model; the same name with the same weights returns the existing row.

    ``behaviour`` records its behaviour suite (skillstore.behaviour), the general suite of jobs
    whose skills have none beside them; registering again with another one replaces it."""
    by_name = existing_base(session, name, fingerprint)
    if by_name is not None:
        if behaviour and behaviour != by_name.behaviour:
            by_name.behaviour = behaviour
            session.flush()
        return by_name
    row = BaseCheckpoint(name=name, uri=uri, architecture=architecture, fingerprint=fingerprint,
                         tokenizer_fingerprint=tokenizer_fingerprint,
                         # Left unset rather than None: a JSON column would store JSON null.
                         **({"behaviour": behaviour} if behaviour else {}))
    session.add(row)
    session.flush()
    return row


def list_bases(session: Session) -> list[BaseCheckpoint]:
    return list(session.scalars(sa.select(BaseCheckpoint).order_by(BaseCheckpoint.id)))


def add_skill(session: Session, *, name: str, suite: str, description: str = "",
              data_uri: str | None = None, data_sha256: str | None = None,
              heldout: dict | None = None) -> Skill:
    """Add a skill; adding the same definition again returns the existing row.

    ``heldout`` records the held-out split its suite was made from (skillstore.heldout)."""
    check_name("skill", name)
    existing = session.scalar(sa.select(Skill).where(Skill.name == name))
    if existing is not None:
        same = (existing.suite, existing.data_sha256) == (suite, data_sha256)
        if same:
            return existing
        raise ConfigError(f"Skill {name!r} already exists with another suite or data; "
                          "pick another name.")
    row = Skill(name=name, suite=suite, description=description, data_uri=data_uri,
                data_sha256=data_sha256,
                # Left unset rather than None: a JSON column would store None as JSON null.
                **({"heldout": heldout} if heldout else {}))
    session.add(row)
    session.flush()
    return row


def list_skills(session: Session) -> list[Skill]:
    return list(session.scalars(sa.select(Skill).order_by(Skill.id)))
