"""Skill packs: create with lineage, look up, page through, show whole, and change status with an
audit row."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from ..errors import ConfigError, NotFoundError
from .lineage import add_edge, ancestors, describe_nodes
from .models import (
    BaseCheckpoint,
    Experiment,
    ExperimentPack,
    ExperimentRun,
    Promotion,
    Skill,
    SkillPack,
)
from .registry import get_skill
from .schema import EdgeKind, PackStatus, created_window, fits_row_id
from .serialize import pack_dict, promotion_dict

PACK_REF_RE = re.compile(r"^(?P<skill>[A-Za-z][A-Za-z0-9_.-]*)@v?(?P<version>\d+)$")
# Manual overrides may move a pack anywhere except back to candidate.
ALLOWED = {
    PackStatus.candidate: {PackStatus.promoted, PackStatus.rejected, PackStatus.retired},
    PackStatus.promoted: {PackStatus.retired, PackStatus.rejected},
    PackStatus.rejected: {PackStatus.promoted, PackStatus.retired},
    PackStatus.retired: {PackStatus.promoted},
}
Parent = tuple["SkillPack | BaseCheckpoint", "EdgeKind | str"]
# How an inconclusive gate decision's audit reason begins (gate.decision.Decision.summary).
INCONCLUSIVE = "inconclusive"


def _loaded():
    return sa.select(SkillPack).options(joinedload(SkillPack.skill), joinedload(SkillPack.base),
                                        joinedload(SkillPack.source))


def pack_name(pack: SkillPack) -> str:
    return f"{pack.skill.name}@v{pack.version}"


def pack_file_name(pack: SkillPack) -> str:
    """The file name a downloaded pack gets: `arith-v2.safetensors`."""
    return f"{pack.skill.name}-v{pack.version}.safetensors"


def is_pack_ref(text: str) -> bool:
    """Whether ``text`` reads as what `get_pack` looks up: an id (`12`) or SKILL@vN (`arith@v2`)."""
    return text.isdigit() or PACK_REF_RE.match(text) is not None


def get_pack(session: Session, ref: str | int) -> SkillPack:
    """A pack by id (`12`) or by skill and version (`arith@v2`), with skill and bases loaded."""
    text = str(ref)
    if text.isdigit():
        pack = (session.scalar(_loaded().where(SkillPack.id == int(text)))
                if fits_row_id(text) else None)
        if pack is None:
            raise NotFoundError(f"No pack with id {text}; list them with `skillstore pack list`.")
        return pack
    m = PACK_REF_RE.match(text)
    if not m:
        raise ConfigError(
            f"{text!r} is not a pack reference; use an id (12) or SKILL@vN (arith@v2).")
    skill = get_skill(session, m["skill"])
    pack = session.scalar(_loaded().where(SkillPack.skill_id == skill.id,
                                          SkillPack.version == int(m["version"])))
    if pack is None:
        raise NotFoundError(f"Skill {skill.name!r} has no pack version {m['version']}; "
                            f"list them with `skillstore pack list --skill {skill.name}`.")
    return pack


def create_pack(session: Session, *, skill: Skill, base: BaseCheckpoint, blob_digest: str,
                size_bytes: int, format_version: int, method: str,
                parents: Sequence[Parent] = (), source: BaseCheckpoint | None = None,
                compression_ratio: float | None = None, codecs: dict | None = None,
                metrics: dict | None = None, actor: str = "system",
                dense_fp16_bytes: int | None = None) -> SkillPack:
    """A new candidate pack with the next version of its skill, its lineage and an audit row.

    With no parents given, the pack is `trained_on` its base. ``dense_fp16_bytes`` (the delta
    the pack compresses, every changed tensor at fp16) is kept in ``metrics`` and sets the
    compression ratio: dense bytes over the pack file's ``size_bytes``.
    """
    if dense_fp16_bytes is not None:
        compression_ratio = dense_fp16_bytes / max(1, size_bytes)
        metrics = {**(metrics or {}), "dense_fp16_bytes": dense_fp16_bytes}
    for attempt in range(5):
        next_version = (session.scalar(sa.select(sa.func.max(SkillPack.version))
                                       .where(SkillPack.skill_id == skill.id)) or 0) + 1
        pack = SkillPack(skill_id=skill.id, version=next_version, base_id=base.id,
                         status=PackStatus.candidate, blob_digest=blob_digest,
                         size_bytes=size_bytes, format_version=format_version, method=method,
                         source_id=source.id if source else None,
                         compression_ratio=compression_ratio, codecs=codecs or {},
                         metrics=metrics or {})
        try:
            with session.begin_nested():  # a racing writer took the version: take the next
                session.add(pack)
                session.flush()
            break
        except IntegrityError:
            if attempt == 4:
                raise
    for parent, kind in (parents or [(base, EdgeKind.trained_on)]):
        add_edge(session, pack, parent, kind)
    session.add(Promotion(pack_id=pack.id, from_status=None, to_status=PackStatus.candidate,
                          reason="created", actor=actor))
    session.flush()
    return session.scalar(_loaded().where(SkillPack.id == pack.id).execution_options(
        populate_existing=True))


@dataclass
class PackPage:
    packs: list[SkillPack]
    total: int
    limit: int
    offset: int


def list_packs(session: Session, *, skill: Skill | None = None,
               status: PackStatus | str | None = None,
               base: BaseCheckpoint | None = None, limit: int = 50, offset: int = 0,
               count: bool = True, created_after: datetime | None = None,
               created_before: datetime | None = None) -> PackPage:
    """One page of packs, newest first, filtered by skill, status, base and creation time."""
    if limit < 1 or offset < 0:
        raise ConfigError("limit must be at least 1 and offset at least 0.")
    where = []
    if skill is not None:
        where.append(SkillPack.skill_id == skill.id)
    if status is not None:
        where.append(SkillPack.status == PackStatus(status))
    if base is not None:
        where.append(SkillPack.base_id == base.id)
    where += created_window(SkillPack.created_at, created_after, created_before)
    ids = list(session.scalars(sa.select(SkillPack.id).where(*where)
                               .order_by(SkillPack.id.desc()).limit(limit).offset(offset)))
    packs = list(session.scalars(_loaded().where(SkillPack.id.in_(ids))
                                 .order_by(SkillPack.id.desc()))) if ids else []
    total = session.scalar(sa.select(sa.func.count()).select_from(SkillPack).where(*where)) \
        if count else -1
    return PackPage(packs, total, limit, offset)


def set_pack_status(session: Session, pack: SkillPack, to: PackStatus | str, *, reason: str,
                    actor: str, report_ref: str | None = None, state_id: int | None = None,
                    ) -> Promotion:
    """Move a pack to a new status and append the audit row, in the caller's transaction.

    The row is locked first (FOR UPDATE on PostgreSQL) so two deciders cannot both move it.
    """
    to = PackStatus(to)
    current = session.scalar(sa.select(SkillPack.status).where(SkillPack.id == pack.id)
                             .with_for_update())
    if to not in ALLOWED[current]:
        raise ConfigError(f"Pack {pack.id} is {current.value}; it cannot become {to.value}.")
    if not reason.strip():
        raise ConfigError(f"Changing pack {pack.id} to {to.value} needs a reason.")
    pack.status = to
    audit = Promotion(pack_id=pack.id, from_status=current, to_status=to, reason=reason,
                      report_ref=report_ref, state_id=state_id, actor=actor)
    session.add(audit)
    session.flush()
    return audit


def promotions_of(session: Session, pack_id: int) -> list[Promotion]:
    """The audit trail of a pack, oldest first."""
    return list(session.scalars(sa.select(Promotion).where(Promotion.pack_id == pack_id)
                                .order_by(Promotion.id)))


def pack_origin(session: Session, pack_id: int) -> dict | None:
    """The experiment run that made a pack (experiment, run, method, seed), or None for a pack
    that a learning job, an import or a fusion made."""
    row = session.execute(
        sa.select(Experiment.id, Experiment.name, ExperimentRun.id, ExperimentRun.method,
                  ExperimentRun.seed)
        .join(ExperimentRun, ExperimentRun.experiment_id == Experiment.id)
        .join(ExperimentPack, ExperimentPack.run_id == ExperimentRun.id)
        .where(ExperimentPack.pack_id == pack_id)).first()
    if row is None:
        return None
    experiment_id, name, run_id, method, seed = row
    return {"experiment_id": experiment_id, "experiment": name, "run_id": run_id,
            "method": method, "seed": seed}


def inconclusive_packs(session: Session, pack_ids: Sequence[int]) -> set[int]:
    """Of ``pack_ids``, the rejected packs whose last status change was an inconclusive gate
    decision: the samples could not decide, which is not a finding that the pack forgot or
    failed to learn. The gate records such a decision as rejected, its reason starting
    "inconclusive" (`gate.judge.record_decision`; PackStatus has no value for it)."""
    if not pack_ids:
        return set()
    last = (sa.select(Promotion.pack_id, sa.func.max(Promotion.id).label("id"))
            .where(Promotion.pack_id.in_(pack_ids)).group_by(Promotion.pack_id).subquery())
    return set(session.scalars(
        sa.select(Promotion.pack_id).join(last, Promotion.id == last.c.id)
        .where(Promotion.to_status == PackStatus.rejected,
               Promotion.reason.like(f"{INCONCLUSIVE}%"))))


def status_label(status: PackStatus | str, inconclusive: bool) -> str:
    """A pack's status as the CLI shows it: "inconclusive" for a rejected pack the gate could
    not decide on (`inconclusive_packs`); stored, and filtered, as rejected."""
    value = PackStatus(status).value
    return INCONCLUSIVE if inconclusive and value == "rejected" else value


def pack_rows(session: Session, packs: Sequence[SkillPack]) -> list[dict]:
    """Packs as `pack list` and ``GET /packs`` give them: each row, and whether its rejection
    was an inconclusive gate decision (`inconclusive_packs`)."""
    undecided = inconclusive_packs(session, [p.id for p in packs])
    return [{**pack_dict(p), "inconclusive": p.id in undecided} for p in packs]


def pack_detail(session: Session, pack: SkillPack) -> dict:
    """A pack as `pack show` and ``GET /packs/{ref}`` give it: its row, its direct parents,
    the experiment run that made it (if one did) and its status history."""
    doc = pack_rows(session, [pack])[0]
    graph = describe_nodes(session, ancestors(session, pack.id))
    doc["parents"] = [{"kind": kind, **graph.nodes.get(parent, {"id": parent})}
                      for child, parent, kind in graph.edges if child == graph.root]
    doc["experiment"] = pack_origin(session, pack.id)
    doc["history"] = [promotion_dict(a) for a in promotions_of(session, pack.id)]
    return doc
