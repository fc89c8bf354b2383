"""State operations behind the CLI and the pipeline: fuse packs, train a state's router, manual overrides."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import sqlalchemy as sa

from ..catalog.models import BaseCheckpoint, ModelState, Promotion, Skill, SkillPack
from ..catalog.packs import create_pack, set_pack_status
from ..catalog.registry import add_skill
from ..catalog.schema import EdgeKind, PackStatus
from ..catalog.states import advance_head, current_head, get_or_create_state, get_state
from ..errors import ConfigError
from ..packs.format import FORMAT_VERSION, read_pack
from .fusion import get_fusion, merged_deltas, write_fused_pack
from .view import base_state, extend_state


def _skill_names(session, packs: Sequence[SkillPack]) -> list[str]:
    names = {s.id: s.name for s in session.scalars(sa.select(Skill).where(
        Skill.id.in_([p.skill_id for p in packs])))}
    return [names[p.skill_id] for p in packs]


def fuse_packs(session, blobs, packs: Sequence[SkillPack], method: str, *, scale: float = 1.0,
               actor: str = "cli", cache_dir: str | Path | None = None) -> ModelState:
    """A candidate state that fuses ``packs`` on their common base.

    Merging methods write one fused pack (lineage ``fused_from`` every input) and a state
    holding it alone; ``learned`` makes a state holding every input behind the learned router
    (train the router next with :func:`attach_router`).
    """
    fusion = get_fusion(method)
    if len(packs) < 2:
        raise ConfigError("Fusion needs at least two packs; name them all.")
    if len({p.base_id for p in packs}) != 1:
        raise ConfigError("The packs belong to different bases; fuse packs of one base model.")
    base = session.get(BaseCheckpoint, packs[0].base_id)
    skills = _skill_names(session, packs)
    if not fusion.merges:
        return get_or_create_state(session, base=base, packs=[(p, scale) for p in packs], router="learned",
                                   router_config={"fused_from": [p.id for p in packs]},
                                   description=f"fusion of {', '.join(skills)} by learned routing")
    files = [read_pack(blobs.local_path(p.blob_digest, cache_dir)) for p in packs]
    merged = merged_deltas(files, [scale] * len(files), fusion)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fused.safetensors"
        size = write_fused_pack(out, files, merged, fusion.name)
        digest = blobs.put_file(out)
    name = "fused-" + "-".join(sorted(skills))
    suites = ",".join(s.suite for s in session.scalars(sa.select(Skill).where(Skill.name.in_(skills))))
    skill = session.scalar(sa.select(Skill).where(Skill.name == name)) or add_skill(
        session, name=name, suite=suites, description=f"{fusion.name} fusion of {', '.join(skills)}")
    dense = sum(int(t.numel()) * 2 for t in merged.values())
    fused = create_pack(session, skill=skill, base=base, blob_digest=digest, size_bytes=size,
                        format_version=FORMAT_VERSION, method=f"fusion:{fusion.name}",
                        parents=[(p, EdgeKind.fused_from) for p in packs],
                        compression_ratio=dense / max(size, 1), codecs={"all": ["dense"]}, actor=actor)
    return get_or_create_state(session, base=base, packs=[(fused, 1.0)], router="none",
                               description=f"{fusion.name} fusion of {', '.join(skills)}")


def attach_router(session, blobs, state: ModelState, model, tokenizer,
                  prompts: Mapping[str, Sequence[str]], *, top_k: int = 1) -> ModelState:
    """Train the learned router for this state's packs and return the state that carries it."""
    from ..routing import NONE_CLASS, save_router, train_router

    members = {m.pack_id: m for m in state.members}
    packs = list(session.scalars(sa.select(SkillPack).where(SkillPack.id.in_(members))))
    packs.sort(key=lambda p: members[p.id].position)
    names = _skill_names(session, packs)
    unknown = sorted(set(prompts) - set(names) - {NONE_CLASS})
    if unknown or set(names) - set(prompts):
        raise ConfigError(f"Router prompts must cover exactly the state's skills {names} (plus "
                          f"{NONE_CLASS!r}); got {sorted(prompts)}.")
    trained = train_router(model, tokenizer, prompts, top_k=top_k)
    with tempfile.TemporaryDirectory() as tmp:
        digest = blobs.put_file(save_router(trained.classifier, Path(tmp) / "router.safetensors"))
    base = session.get(BaseCheckpoint, state.base_id)
    return get_or_create_state(
        session, base=base, packs=[(p, members[p.id].scale) for p in packs], router="learned",
        router_config={**state.router_config, "top_k": top_k, "train_accuracy": trained.train_accuracy},
        router_blob_digest=digest, parent_id=state.parent_id, description=state.description)


def manual_override(session, pack: SkillPack, action: str, *, reason: str, actor: str) -> Promotion:
    """`pack promote|reject|retire`: the status change, the audit row, and the head move it implies.

    Promote adds the pack to the current state; retire removes it; reject leaves the head alone.
    The head is locked and compare-and-swapped exactly as the gate does.
    """
    to = {"promote": PackStatus.promoted, "reject": PackStatus.rejected, "retire": PackStatus.retired}.get(action)
    if to is None:
        raise ConfigError(f"Unknown override {action!r}; use promote, reject or retire.")
    base = session.get(BaseCheckpoint, pack.base_id)
    head = current_head(session, base.id, lock=True)
    current = get_state(session, head.state_id) if head else base_state(session, base)
    version = head.version if head else None
    in_state = any(m.pack_id == pack.id for m in current.members)
    target = None
    if to is PackStatus.promoted and not in_state:
        target = extend_state(session, base, current, pack, description=f"manual promotion of pack {pack.id}")
    elif to is not PackStatus.promoted and in_state:
        keep = [(session.get(SkillPack, m.pack_id), m.scale) for m in current.members if m.pack_id != pack.id]
        target = get_or_create_state(session, base=base, packs=keep, router=current.router,
                                     router_config=dict(current.router_config), parent_id=current.id,
                                     description=f"pack {pack.id} {to.value} by hand")
    audit = set_pack_status(session, pack, to, reason=f"manual: {reason}", actor=actor,
                            state_id=target.id if target else current.id)
    if target is not None:
        advance_head(session, base.id, target.id, expected_version=version)
    return audit
