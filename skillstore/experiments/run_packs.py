"""The packs a graft run made, entered in the catalog when the run finishes: one candidate
SkillPack per pack file, trained on the experiment's base (and distilled from its source where
the stage names one), linked to its run so its lineage reaches the experiment; and the model
state the run ended in (those packs behind its last router), linked as the run's state.

A candidate made here is never promoted by the run: the run judged it with the spec's gate
(`graft.stage_verdicts`) and keeps that verdict in the pack's metrics, but moves no head.
`skillstore pack show` names the experiment; promoting it is a person's decision, with a reason.
The run's state is never a head either: `skillstore state show` and `state eval` take it like
any other state.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from ..catalog import EdgeKind, create_pack, get_base, get_or_create_state, get_skill
from ..catalog.models import (
    BaseCheckpoint,
    Experiment,
    ExperimentPack,
    ExperimentRun,
    ModelState,
    SkillPack,
)
from ..packs import read_pack
from .spec import parse_spec


def register_run_packs(session: Session, run: ExperimentRun, result: dict, blobs) -> list[dict]:
    """Create a catalog pack for each of ``result["packs"]`` (a graft run's records: skill,
    digest, bytes, sizes, error, tuning) and link it to ``run``; returns the records with each
    pack's ``pack_id`` and ``name`` added. Each pack file is read and verified from ``blobs``."""
    experiment = session.get(Experiment, run.experiment_id)
    base = session.get(BaseCheckpoint, experiment.base_id)
    stages = {s.name: s for s in parse_spec(experiment.spec, f"experiment {experiment.id}'s "
                                            "spec").skills}
    actor = f"experiment:{experiment.id}/run:{run.id}"
    verdicts = {v["skill"]: v for v in result.get("gate", ())}  # the spec gate's (graft.py)
    out = []
    for record in result.get("packs", ()):
        skill, stage = record["skill"], stages[record["skill"]]
        pack_file = read_pack(blobs.local_path(record["digest"]))
        # A distilled stage's pack comes from its first listed source: with several sources
        # the run makes one pack per source, and the first is the skill's pack (graft.py);
        # the others are fused and scored, and stay blobs.
        source_name = record.get("source") or (stage.source[0] if stage.source else None)
        source = get_base(session, source_name) if source_name else None
        parents = [(base, EdgeKind.trained_on)] + (
            [(source, EdgeKind.distilled_from)] if source else [])
        metrics = {"experiment_id": experiment.id, "run_id": run.id, "seed": run.seed,
                   "policy": result.get("policy"), "rel_error": record["rel_error"],
                   "changed_params": record.get("changed_params"),
                   # with its per-sample scores' blob since the adopt step pairs them; an
                   # older run's result has the headline only
                   "finetune": record.get("finetune") or {
                       "value": result.get("finetune_scores", {}).get(skill),
                       "n": result.get("finetune_n", {}).get(skill)}}
        if record.get("tune"):
            metrics["tune"] = record["tune"]
        if skill in verdicts:
            metrics["gate"] = {k: verdicts[skill][k] for k in ("verdict", "summary")}
        pack = create_pack(session, skill=get_skill(session, skill), base=base,
                           blob_digest=record["digest"], size_bytes=record["bytes"],
                           format_version=int(pack_file.manifest["format_version"]),
                           method=stage.method, parents=parents, source=source,
                           dense_fp16_bytes=record["dense_fp16_bytes"],
                           codecs=pack_file.codecs_by_role(), metrics=metrics, actor=actor)
        session.add(ExperimentPack(pack_id=pack.id, run_id=run.id))
        out.append({**record, "pack_id": pack.id, "name": f"{skill}@v{pack.version}"})
    session.flush()
    return out


def register_run_state(session: Session, run: ExperimentRun, result: dict,
                       packs: list[dict], blobs) -> ModelState | None:
    """The state a graft run ended in: the experiment's base with ``packs`` (the records
    `register_run_packs` returned, in curriculum order) behind the run's last router, made as
    every state is (the same inputs give the same row) and set as the run's ``state_id``.
    None for a run whose router file was not kept (a learned router before routers were
    stored)."""
    router = (result.get("routers") or [{}])[-1]
    kind, digest = router.get("router", "none"), router.get("blob_digest")
    if not packs or (kind == "learned" and not digest):
        return None
    if digest:
        blobs.verify(digest)  # a damaged router file fails the run's record, as a pack does
    experiment = session.get(Experiment, run.experiment_id)
    members = [(session.get(SkillPack, p["pack_id"]), 1.0) for p in packs]
    state = get_or_create_state(
        session, base=session.get(BaseCheckpoint, experiment.base_id), packs=members,
        router=kind, router_config=router.get("config") or {}, router_blob_digest=digest,
        description=f"experiment {experiment.id} run {run.id} ({run.method}, seed "
                    f"{run.seed}): its final state")
    run.state_id = state.id
    session.flush()
    return state
