"""Model states (base + ordered packs, scales, router), the current state per base, eval results."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session, selectinload

from ..errors import ConfigError, NotFoundError, PromotionConflictError
from .models import BaseCheckpoint, BaseHead, EvalResult, ModelState, SkillPack, StatePack
from .schema import created_window, fits_row_id


def state_fingerprint(base_fingerprint: str, packs: Sequence[tuple[str, float]], router: str,
                      router_config: dict | None = None,
                      router_blob_digest: str | None = None) -> str:
    """sha256 of the canonical JSON of everything that decides a state's outputs.

    `packs` is the ordered list of (pack blob digest, scale).
    """
    doc = {"base": base_fingerprint, "packs": [[d, float(s)] for d, s in packs], "router": router,
           "router_config": router_config or {}, "router_blob": router_blob_digest}
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def _loaded():
    return sa.select(ModelState).options(selectinload(ModelState.members))


def get_state(session: Session, ref: int | str) -> ModelState:
    """A state by id or by fingerprint, with its members loaded."""
    text = str(ref)
    if text.isdigit():
        state = (session.scalar(_loaded().where(ModelState.id == int(text)))
                 if fits_row_id(text) else None)
    else:
        state = session.scalar(_loaded().where(ModelState.fingerprint == text))
    if state is None:
        raise NotFoundError(f"No model state {text!r}; list them with `skillstore state list`.")
    return state


def get_or_create_state(session: Session, *, base: BaseCheckpoint,
                        packs: Sequence[tuple[SkillPack, float]], router: str,
                        router_config: dict | None = None, router_blob_digest: str | None = None,
                        description: str = "", parent_id: int | None = None,
                        fingerprint: str | None = None) -> ModelState:
    """The state with these inputs; the same inputs always give the same row."""
    for pack, _ in packs:
        if pack.base_id != base.id:
            raise ConfigError(f"Pack {pack.id} belongs to base {pack.base_id}, not {base.name!r}.")
    if len({p.id for p, _ in packs}) != len(packs):
        raise ConfigError("A model state cannot hold the same pack twice.")
    fp = fingerprint or state_fingerprint(base.fingerprint, [(p.blob_digest, s) for p, s in packs],
                                          router, router_config, router_blob_digest)
    existing = session.scalar(_loaded().where(ModelState.fingerprint == fp))
    if existing is not None:
        return existing
    state = ModelState(fingerprint=fp, base_id=base.id, router=router,
                       router_config=router_config or {}, router_blob_digest=router_blob_digest,
                       description=description, parent_id=parent_id,
                       members=[StatePack(position=i, pack_id=p.id, scale=float(s))
                                for i, (p, s) in enumerate(packs)])
    try:
        with session.begin_nested():  # a racing writer (another attempt) may add it first
            session.add(state)
            session.flush()
    except sa.exc.IntegrityError:
        existing = session.scalar(_loaded().where(ModelState.fingerprint == fp))
        if existing is None:
            raise
        return existing
    return state


def list_states(session: Session, *, base_id: int | None = None,
                created_after: datetime | None = None,
                created_before: datetime | None = None, limit: int | None = None,
                offset: int = 0) -> tuple[list[ModelState], int]:
    """(one page of states newest first, with members loaded; how many match the filters)."""
    where = []
    if base_id is not None:
        where.append(ModelState.base_id == base_id)
    where += created_window(ModelState.created_at, created_after, created_before)
    q = _loaded().where(*where).order_by(ModelState.id.desc()).limit(limit).offset(offset)
    total = session.scalar(sa.select(sa.func.count()).select_from(ModelState).where(*where))
    return list(session.scalars(q)), total


def current_head(session: Session, base_id: int, *, lock: bool = False) -> BaseHead | None:
    """The head row of a base (None before its first state); `lock` serialises promotions."""
    q = sa.select(BaseHead).where(BaseHead.base_id == base_id)
    return session.scalar(q.with_for_update() if lock else q)


def current_state(session: Session, base_id: int) -> ModelState | None:
    head = current_head(session, base_id)
    return get_state(session, head.state_id) if head else None


def advance_head(session: Session, base_id: int, state_id: int, *,
                 expected_version: int | None) -> BaseHead:
    """Compare-and-swap the current state of a base; a race loser gets PromotionConflictError.

    `expected_version` is the head version the caller read (None: the base has no head yet).
    """
    if expected_version is None:
        if current_head(session, base_id) is not None:
            raise PromotionConflictError(
                f"Base {base_id} already has a current state; reread and retry.")
        head = BaseHead(base_id=base_id, state_id=state_id, version=1)
        session.add(head)
        session.flush()
        return head
    done = session.execute(sa.update(BaseHead)
                           .where(BaseHead.base_id == base_id, BaseHead.version == expected_version)
                           .values(state_id=state_id, version=expected_version + 1))
    if done.rowcount != 1:
        raise PromotionConflictError(f"The current state of base {base_id} moved while deciding; "
                             "reread it and retry.")
    return session.scalar(sa.select(BaseHead).where(BaseHead.base_id == base_id)
                          .execution_options(populate_existing=True))


def record_eval_result(session: Session, *, state_id: int, suite: str, suite_version: str,
                       task: str, metric: str, value: float, stderr: float | None, n: int,
                       lm_eval_version: str, skill_id: int | None = None,
                       samples_digest: str | None = None) -> EvalResult:
    row = EvalResult(state_id=state_id, skill_id=skill_id, suite=suite, suite_version=suite_version,
                     task=task, metric=metric, value=float(value),
                     stderr=None if stderr is None else float(stderr), n=int(n),
                     lm_eval_version=lm_eval_version, samples_digest=samples_digest)
    session.add(row)
    session.flush()
    return row


def eval_results(session: Session, state_id: int, *, suite: str | None = None,
                 suite_version: str | None = None, task: str | None = None) -> list[EvalResult]:
    """Stored results of a state: the cache that keeps a state from being evaluated twice."""
    q = sa.select(EvalResult).where(EvalResult.state_id == state_id)
    for col, val in ((EvalResult.suite, suite), (EvalResult.suite_version, suite_version),
                     (EvalResult.task, task)):
        if val is not None:
            q = q.where(col == val)
    return list(session.scalars(q.order_by(EvalResult.id)))
