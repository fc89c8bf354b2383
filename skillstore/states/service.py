"""State operations behind the CLI and the pipeline: fuse packs, train a state's router, build a
candidate or the state without a pack, manual overrides."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import sqlalchemy as sa

from ..catalog.models import BaseCheckpoint, ModelState, Promotion, Skill, SkillPack
from ..catalog.packs import create_pack, set_pack_status
from ..catalog.registry import add_skill
from ..catalog.schema import EdgeKind, PackStatus
from ..catalog.states import advance_head, current_head, get_or_create_state, get_state
from ..curriculum.validate import load_rows
from ..errors import ConfigError, PromotionConflictError
from ..models import load_causal_lm
from ..packs.format import FORMAT_VERSION, read_pack
from ..routing import NONE_CLASS, save_router, train_router
from ..routing.evaluate import EVAL_PROMPTS, evaluate_router
from ..routing.learned import DEFAULT_FEATURES, RouterTraining
from ..skilldata import read_rows, skill_rows
from .fusion import get_fusion, merged_deltas, write_fused_pack
from .view import base_state, extend_state, extended_members

# Prompts per class that the learned router trains on (a skill's first training prompts). At
# 200 the zoo's router sent 1-3 of its 101 general test prompts to a pack (2 seeds), at 400 0-1
# (docs/composition.md, "Familiarity"). On curriculum version 3 (28 training templates a
# skill) 400 placed 0.927-0.990 of the held-out templates' prompts over 5 seeds, 800
# 0.980-0.994 (`python -m bench routing`), at about twice the training time (28 s on the zoo).
ROUTER_PROMPTS = 800
# The share of those prompts held out of fitting to calibrate the router's abstention threshold.
CALIBRATION = 0.2
# () -> (model, tokenizer) of the plain base, called only when a router is trained.
LoadModel = Callable[[], tuple[object, object]]


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
        return get_or_create_state(session, base=base, packs=[(p, scale) for p in packs],
                                   router="learned",
                                   router_config={"fused_from": [p.id for p in packs]},
                                   description=f"fusion of {', '.join(skills)} by learned routing")
    files = [read_pack(blobs.local_path(p.blob_digest, cache_dir)) for p in packs]
    merged = merged_deltas(files, [scale] * len(files), fusion)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fused.safetensors"
        size = write_fused_pack(out, files, merged, fusion.name)
        digest = blobs.put_file(out)
    name = "fused-" + "-".join(sorted(skills))
    suites = ",".join(
        s.suite for s in session.scalars(sa.select(Skill).where(Skill.name.in_(skills))))
    skill = session.scalar(sa.select(Skill).where(Skill.name == name)) or add_skill(
        session, name=name, suite=suites,
        description=f"{fusion.name} fusion of {', '.join(skills)}")
    dense = sum(int(t.numel()) * 2 for t in merged.values())
    fused = create_pack(session, skill=skill, base=base, blob_digest=digest, size_bytes=size,
                        format_version=FORMAT_VERSION, method=f"fusion:{fusion.name}",
                        parents=[(p, EdgeKind.fused_from) for p in packs],
                        dense_fp16_bytes=dense, codecs={"all": ["dense"]},
                        actor=actor)
    return get_or_create_state(session, base=base, packs=[(fused, 1.0)], router="none",
                               description=f"{fusion.name} fusion of {', '.join(skills)}")


def skill_prompts(skill: Skill, blobs, limit: int = ROUTER_PROMPTS) -> list[str]:
    """The first ``limit`` training prompts of a skill (its stored data, as jobs train on it)."""
    if not skill.data_uri and not skill.data_sha256:
        raise ConfigError(f"Skill {skill.name!r} has no training data to route on; "
                          "register it with `skillstore skill add --data FILE`.")
    train, _ = skill_rows(blobs, skill)
    return [r["prompt"] for r in train[:limit]]


def skill_test_prompts(skill: Skill, blobs, limit: int = EVAL_PROMPTS) -> list[str]:
    """Up to ``limit`` prompts of a skill's test split, which no job trains on: the held-out
    split of a skill registered from one JSONL, else the ``test.jsonl`` beside its data (a
    curriculum skill's, every template, held-out ones included); [] when it has neither."""
    if skill.heldout:
        rows = read_rows(blobs, skill.heldout["test_sha256"])
    else:
        path = Path(skill.data_uri or "").with_name("test.jsonl")
        rows = load_rows(path) if skill.data_uri and path.is_file() else []
    return [r["prompt"] for r in rows[:limit]]


def _class_prompts(session, packs: Sequence[SkillPack], general: Sequence[str], limit: int,
                   read: Callable[[Skill, int], list[str]]) -> dict[str, list[str]]:
    """class -> prompts: ``read(skill, limit)`` for each pack's skill, and ``general`` (inputs
    that get no pack) as NONE_CLASS."""
    skills = {s.id: s for s in session.scalars(sa.select(Skill).where(
        Skill.id.in_([p.skill_id for p in packs])))}
    prompts = {skills[p.skill_id].name: read(skills[p.skill_id], limit) for p in packs}
    if general:
        prompts[NONE_CLASS] = list(general[:limit])
    return prompts


def router_prompts(session, blobs, packs: Sequence[SkillPack], general: Sequence[str] = (), *,
                   limit: int = ROUTER_PROMPTS) -> dict[str, list[str]]:
    """class -> prompts for the learned router of ``packs``: each pack's skill's training
    prompts, and ``general`` (the base's own inputs, which get no pack) as NONE_CLASS."""
    return _class_prompts(session, packs, general, limit,
                          lambda skill, n: skill_prompts(skill, blobs, n))


def _trained_router(blobs, model, tokenizer, prompts: Mapping[str, Sequence[str]],
                    top_k: int, held_out: Mapping[str, Sequence[str]],
                    features: str = DEFAULT_FEATURES) -> tuple[str, dict, dict | None]:
    """(blob digest of the router file, router config facts, its evaluation on ``held_out``) of
    a router trained on ``prompts`` (CALIBRATION of them set its abstention threshold); no
    evaluation (None) when no held-out prompt is left."""
    trained = train_router(model, tokenizer, prompts, top_k=top_k, calibration=CALIBRATION,
                           features=features)
    digest, facts = store_router(blobs, trained, top_k)
    trained_on = {p for items in prompts.values() for p in items}
    unseen = {c: kept for c, items in held_out.items()
              if (kept := [p for p in items if p not in trained_on])}
    evaluation = ({**evaluate_router(trained.classifier, model, tokenizer, unseen),
                   "prompts": "held-out test split"} if unseen else None)
    return digest, facts, evaluation


def store_router(blobs, trained: RouterTraining, top_k: int) -> tuple[str, dict]:
    """(blob digest of the router file, the config facts a learned state records) of a
    trained router; the file is whole in ``blobs`` or absent."""
    clf = trained.classifier
    with tempfile.TemporaryDirectory() as tmp:
        digest = blobs.put_file(save_router(clf, Path(tmp) / "router.safetensors"))
    return digest, {"top_k": top_k, "train_accuracy": trained.train_accuracy,
                    "threshold": clf.threshold, "features": clf.features,
                    "familiarity": clf.familiarity()}


def held_out_prompts(session, blobs, packs: Sequence[SkillPack], general_test: Sequence[str] = (),
                     *, limit: int = EVAL_PROMPTS) -> dict[str, list[str]]:
    """class -> prompts a learned router of ``packs`` is evaluated on: each skill's test split
    (``skill_test_prompts``) and ``general_test`` (the general suite's test prompts) as
    NONE_CLASS, at most ``limit`` each."""
    return _class_prompts(session, packs, general_test, limit,
                          lambda skill, n: skill_test_prompts(skill, blobs, n))


def with_evaluation(state: ModelState, evaluation: dict | None) -> ModelState:
    """Store a router's held-out evaluation under ``router_config["evaluation"]``. It is a
    measurement, not an input: the fingerprint was made without it (the same router on the
    same packs is the same state), and a state that already has one keeps it."""
    config = state.router_config or {}
    if evaluation is not None and "evaluation" not in config:
        state.router_config = {**config, "evaluation": evaluation}
    return state


def _inputs(config: Mapping) -> dict:
    """A router config without its evaluation: what the fingerprint covers."""
    return {k: v for k, v in config.items() if k != "evaluation"}


def attach_router(session, blobs, state: ModelState, model, tokenizer,
                  prompts: Mapping[str, Sequence[str]], *, top_k: int = 1,
                  features: str = DEFAULT_FEATURES,
                  general_test: Sequence[str] = ()) -> ModelState:
    """Train the learned router for this state's packs and return the state that carries it,
    its evaluation on the skills' test splits (and ``general_test`` as NONE_CLASS) stored."""
    members = {m.pack_id: m for m in state.members}
    packs = list(session.scalars(sa.select(SkillPack).where(SkillPack.id.in_(members))))
    packs.sort(key=lambda p: members[p.id].position)
    names = _skill_names(session, packs)
    unknown = sorted(set(prompts) - set(names) - {NONE_CLASS})
    if unknown or set(names) - set(prompts):
        raise ConfigError(f"Router prompts must cover exactly the state's skills {names} (plus "
                          f"{NONE_CLASS!r}); got {sorted(prompts)}.")
    digest, facts, evaluation = _trained_router(
        blobs, model, tokenizer, prompts, top_k,
        held_out_prompts(session, blobs, packs, general_test), features)
    base = session.get(BaseCheckpoint, state.base_id)
    return with_evaluation(get_or_create_state(
        session, base=base, packs=[(p, members[p.id].scale) for p in packs], router="learned",
        router_config={**_inputs(state.router_config), **facts}, router_blob_digest=digest,
        parent_id=state.parent_id, description=state.description), evaluation)


def _learned_routing(session, blobs, packs: Sequence[SkillPack], load_model: LoadModel,
                     general_prompts: Sequence[str], top_k: int,
                     general_test: Sequence[str] = ()) -> tuple[dict, dict | None]:
    """(the router fields of a learned-routing state of ``packs``, the router's held-out
    evaluation): a router trained by the one trainer on each skill's training prompts (and
    ``general_prompts`` as NONE_CLASS) and stored, evaluated on the skills' test splits (and
    ``general_test``); or router ``none``, no evaluation, with fewer than two classes to tell
    apart (nothing to route: graft)."""
    if len(packs) + bool(general_prompts) < 2:
        return {"router": "none", "router_config": {}}, None
    prompts = router_prompts(session, blobs, packs, general_prompts)
    model, tokenizer = load_model()
    digest, facts, evaluation = _trained_router(
        blobs, model, tokenizer, prompts, min(top_k, len(prompts)),
        held_out_prompts(session, blobs, packs, general_test))
    return ({"router": "learned", "router_config": facts, "router_blob_digest": digest},
            evaluation)


def candidate_state(session, blobs, current: ModelState, pack: SkillPack, model, tokenizer, *,
                    router: str | None = None, general_prompts: Sequence[str] = (),
                    top_k: int = 1, general_test: Sequence[str] = ()) -> ModelState:
    """The state ``pack`` would make: ``current``'s packs plus ``pack`` (replacing an older
    version of its skill), with ``current``'s router unless ``router`` is given.

    A learned router is trained for the new pack set (on each skill's training prompts, and on
    ``general_prompts`` as NONE_CLASS) before the state row is made, so no learned state without
    its router file is ever written. With a single class to tell apart there is nothing to
    route: the state grafts its pack (router ``none``). The learned router's evaluation on the
    skills' test splits (and ``general_test``, the general suite's test prompts, as
    NONE_CLASS) is stored in the state's ``router_config["evaluation"]``.
    """
    return _extended(session, blobs, current, pack, lambda: (model, tokenizer), router=router,
                     general_prompts=general_prompts, top_k=top_k, general_test=general_test)


def _extended(session, blobs, current: ModelState, pack: SkillPack, load_model: LoadModel, *,
              router: str | None = None, general_prompts: Sequence[str] = (), top_k: int = 1,
              description: str = "", general_test: Sequence[str] = ()) -> ModelState:
    base = session.get(BaseCheckpoint, pack.base_id)
    if (router or current.router) != "learned":
        return extend_state(session, base, current, pack, router=router, description=description)
    packs = [p for p, _ in extended_members(session, current, pack)]
    routing, evaluation = _learned_routing(session, blobs, packs, load_model, general_prompts,
                                           top_k, general_test)
    return with_evaluation(extend_state(session, base, current, pack, description=description,
                                        **routing), evaluation)


def unloaded_state(session, blobs, current: ModelState, pack: SkillPack, load_model: LoadModel, *,
                   general_prompts: Sequence[str] = (), description: str = "") -> ModelState:
    """The state ``current`` becomes without ``pack``: with no pack left, the base's plain state;
    a learned router is retrained for the packs left, as :func:`candidate_state` trains one (with
    a single class left the state grafts, router ``none``); any other router is kept."""
    base = session.get(BaseCheckpoint, current.base_id)
    by_id = {p.id: p for p in session.scalars(
        sa.select(SkillPack).where(SkillPack.id.in_([m.pack_id for m in current.members])))}
    keep = [(by_id[m.pack_id], float(m.scale)) for m in current.members if m.pack_id != pack.id]
    if not keep:
        return base_state(session, base)
    routing = {"router": current.router, "router_config": _inputs(current.router_config)}
    evaluation = None
    if current.router == "learned":
        routing, evaluation = _learned_routing(session, blobs, [p for p, _ in keep], load_model,
                                               general_prompts,
                                               int(current.router_config.get("top_k", 1)))
    return with_evaluation(get_or_create_state(session, base=base, packs=keep,
                                               parent_id=current.id, description=description,
                                               **routing), evaluation)


def _routing_note(current: ModelState, target: ModelState) -> str:
    """How an override's target routes, for its audit reason ("" when nothing changed)."""
    n = len(target.members)
    if n == 0:
        return "the plain base: no packs left"
    if current.router != "learned":
        return ""
    if target.router == "learned":
        return f"learned router retrained for {n} packs"
    return f"router none: {n} pack left, grafted"


def manual_override(session, blobs, pack: SkillPack, action: str, *, reason: str, actor: str,
                    general_prompts: Sequence[str] = (),
                    load_model: LoadModel | None = None) -> Promotion:
    """`pack promote|reject|retire` (`state unload` is retire): the status change, the audit
    row, and the head move it implies.

    Promote adds the pack to the current state (as :func:`candidate_state` does); reject and
    retire take it out (:func:`unloaded_state`); a pack outside the current state leaves the
    head alone. A learned router is retrained for the new pack set (``general_prompts`` as its
    NONE_CLASS; the base is loaded by ``load_model``, default ``load_causal_lm(base.uri)``), so
    the target state is ready, router stored, before anything moves; the audit reason says how
    it routes. Then the head is locked and the audit row and the head's compare-and-swap are
    written in the caller's transaction; a head that moved meanwhile raises
    PromotionConflictError.
    """
    to = {"promote": PackStatus.promoted, "reject": PackStatus.rejected,
          "retire": PackStatus.retired}.get(action)
    if to is None:
        raise ConfigError(f"Unknown override {action!r}; use promote, reject or retire.")
    base = session.get(BaseCheckpoint, pack.base_id)
    head = current_head(session, base.id)  # locked below, once the target is built
    current = get_state(session, head.state_id) if head else base_state(session, base)
    version = head.version if head else None
    load = load_model or (lambda: load_causal_lm(base.uri))
    in_state = any(m.pack_id == pack.id for m in current.members)
    target = None
    if to is PackStatus.promoted and not in_state:
        target = _extended(session, blobs, current, pack, load, general_prompts=general_prompts,
                           top_k=int(current.router_config.get("top_k", 1)),
                           description=f"manual promotion of pack {pack.id}")
    elif to is not PackStatus.promoted and in_state:
        target = unloaded_state(session, blobs, current, pack, load,
                                general_prompts=general_prompts,
                                description=f"pack {pack.id} {to.value} by hand")
    locked = current_head(session, base.id, lock=True)
    if (locked.version if locked else None) != version:
        raise PromotionConflictError(
            f"The current state of base {base.name!r} moved while the {action} of pack "
            f"{pack.id} was prepared; run it again to retry.")
    note = _routing_note(current, target) if target is not None else ""
    audit = set_pack_status(session, pack, to, reason=f"manual: {reason}" + (
        f"; {note}" if note else ""), actor=actor, state_id=target.id if target else current.id)
    if target is not None:
        advance_head(session, base.id, target.id, expected_version=version)
    return audit
