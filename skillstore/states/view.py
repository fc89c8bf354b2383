"""A model state read from the catalog: its base, its ordered packs with scales, and its router."""

from __future__ import annotations

from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import joinedload

from ..catalog.models import BaseCheckpoint, ModelState, SkillPack
from ..catalog.states import get_or_create_state
from ..errors import unknown_name
from ..routing import ROUTERS


@dataclass(frozen=True)
class Member:
    """One pack of a state: its catalog id, skill name, content digest, scale and size facts."""

    pack_id: int
    skill: str
    version: int
    blob_digest: str
    scale: float
    size_bytes: int = 0
    compression_ratio: float | None = None
    codecs: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The pack's routing name: its skill (a state holds one pack per skill)."""
        return self.skill


@dataclass(frozen=True)
class StateView:
    """Everything needed to materialise a state, detached from the session."""

    id: int
    fingerprint: str
    base_id: int
    base_name: str
    base_uri: str
    base_fingerprint: str
    router: str
    router_config: dict
    router_blob_digest: str | None
    members: tuple[Member, ...]

    @property
    def skills(self) -> list[str]:
        return [m.skill for m in self.members]


def load_view(session, state: ModelState) -> StateView:
    """Read a state's base and packs (in position order) in two queries."""
    base = session.get(BaseCheckpoint, state.base_id)
    ids = [m.pack_id for m in state.members]
    packs = {p.id: p for p in session.scalars(
        sa.select(SkillPack).options(joinedload(SkillPack.skill)).where(SkillPack.id.in_(ids)))}
    members = tuple(
        Member(m.pack_id, packs[m.pack_id].skill.name, packs[m.pack_id].version,
               packs[m.pack_id].blob_digest, float(m.scale), packs[m.pack_id].size_bytes,
               packs[m.pack_id].compression_ratio, dict(packs[m.pack_id].codecs or {}))
        for m in state.members)
    return StateView(state.id, state.fingerprint, base.id, base.name, base.uri, base.fingerprint,
                     state.router, dict(state.router_config or {}), state.router_blob_digest,
                     members)


def check_router(name: str) -> str:
    if name not in ROUTERS:
        raise unknown_name("router", name, list(ROUTERS))
    return name


def extended_members(session, current: ModelState | None, pack: SkillPack,
                     scale: float = 1.0) -> list[tuple[SkillPack, float]]:
    """(pack, scale) of ``current`` in order, then ``pack``; a newer version of a skill
    replaces the older one."""
    members: list[tuple[SkillPack, float]] = []
    if current is not None:
        by_id = {p.id: p for p in session.scalars(
            sa.select(SkillPack).where(SkillPack.id.in_([m.pack_id for m in current.members])))}
        members = [(by_id[m.pack_id], float(m.scale)) for m in current.members]
        members = [(p, s) for p, s in members if p.skill_id != pack.skill_id]
    return [*members, (pack, float(scale))]


def extend_state(session, base: BaseCheckpoint, current: ModelState | None, pack: SkillPack, *,
                 scale: float = 1.0, router: str | None = None, router_config: dict | None = None,
                 router_blob_digest: str | None = None, description: str = "") -> ModelState:
    """The candidate state: the current state's packs (in order) plus ``pack`` at ``scale``.

    The router kind is inherited unless given; a learned router must be retrained for the new
    pack set, so its blob is never inherited.
    """
    kind = check_router(router or (current.router if current is not None else "none"))
    return get_or_create_state(
        session, base=base, packs=extended_members(session, current, pack, scale), router=kind,
        router_config=router_config if router_config is not None else (
            dict(current.router_config) if current is not None and router is None else {}),
        router_blob_digest=router_blob_digest, parent_id=current.id if current else None,
        description=description or (
            f"{'base' if current is None else f'state {current.id}'} + pack {pack.id}"))


def base_state(session, base: BaseCheckpoint, router: str = "none") -> ModelState:
    """The state with no packs: the plain base, the first head of every base."""
    return get_or_create_state(session, base=base, packs=[], router=check_router(router),
                               description="base model, no packs")
