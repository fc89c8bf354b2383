"""Adopt a graft run: put its packs, in curriculum order, through the service's own gate, as
the learning jobs of the same curriculum would be judged.

A run's packs enter the catalog as candidates, and the run's verdicts (`graft.stage_verdicts`)
were taken on the run's own states, where a pack the gate rejects still joins the later stages.
Adopting judges each pack again on the state it would really join: the base's current head
plus the pack, with the spec's router retrained for the new pack set, scored against the head
on the same prompts (every skill the candidate holds, and the base's general suite) and decided
with the spec's gate policy, fidelity to the pack's own fine-tune included. `gate_pack` records
the verdict: a promoted pack moves the head, a rejected or inconclusive one leaves it where it
was, and every decision has its audit row and its HTML report, as a learning job's has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..catalog import inconclusive_packs, status_label
from ..catalog.models import (
    BaseCheckpoint,
    Experiment,
    ExperimentPack,
    ExperimentRun,
    Promotion,
    Skill,
    SkillPack,
)
from ..catalog.schema import JobStatus, PackStatus
from ..errors import ConfigError
from ..evaluation.suites import general_suite, skill_suite
from ..gate import evaluate_candidate, gate_pack, head_of, recorded_judge
from ..gate.reference import FINETUNE, evaluate_base, finetune_score, record_fidelity
from ..models import load_causal_lm
from ..pipeline.steps import EVAL_BATCH
from ..pipeline.workdir import work_dir
from ..settings import Settings
from .catalog import get_experiment
from .spec import parse_spec

# progress(pack name, fraction of the run's packs done)
Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class Adopted:
    """One pack's outcome: the gate's verdict on the state it would join; for a pack decided
    before (by an earlier adopt, or by hand) its status and that decision's audit reason."""

    pack_id: int
    name: str
    verdict: str
    summary: str
    state_id: int | None = None

    def as_json(self) -> dict:
        return asdict(self)

    @property
    def line(self) -> str:
        """``sort@v1 inconclusive: needs n ≈ ...``: the name, the verdict and why, with the
        verdict said once (a gate summary, the audit line, begins with it)."""
        why = self.summary.removeprefix(f"{self.verdict}: ")
        return f"{self.name} {self.verdict}: {why}"


def graft_run(session: Session, ref: int | str, run_id: int | None = None) -> ExperimentRun:
    """The experiment's succeeded graft run: ``run_id`` when given, else its only one."""
    experiment = get_experiment(session, ref)
    runs = [r for r in experiment.runs if r.method == "graft"
            and (run_id is None or r.id == run_id)]
    if run_id is not None and not runs:
        raise ConfigError(f"Experiment {experiment.id} has no graft run {run_id}; `skillstore "
                          f"experiment show {experiment.id}` lists its runs.")
    if not runs:
        raise ConfigError(f"Experiment {experiment.id} has no graft run, so it made no packs "
                          "to adopt.")
    if len(runs) > 1:
        raise ConfigError(f"Experiment {experiment.id} has {len(runs)} graft runs (runs "
                          f"{', '.join(str(r.id) for r in runs)}); name one with --run.")
    run = runs[0]
    if run.status != JobStatus.succeeded:
        raise ConfigError(f"Graft run {run.id} of experiment {experiment.id} is "
                          f"{run.status.value}; only a succeeded run's packs can be adopted.")
    return run


def run_packs(session: Session, run: ExperimentRun) -> list[SkillPack]:
    """The catalog packs ``run`` made, in its curriculum's order."""
    return list(session.scalars(sa.select(SkillPack).join(
        ExperimentPack, ExperimentPack.pack_id == SkillPack.id).where(
        ExperimentPack.run_id == run.id).order_by(SkillPack.id)))


def adopt_run(session: Session, settings: Settings, blobs, run: ExperimentRun, *,
              progress: Progress | None = None) -> list[Adopted]:
    """Judge each candidate pack of ``run`` (a succeeded graft run) on the base's current head
    with the experiment's gate, in curriculum order; each verdict is committed as it is made
    (`gate_pack`), so a second call judges only what is left. Returns every pack's outcome."""
    experiment = session.get(Experiment, run.experiment_id)
    spec = parse_spec(experiment.spec, f"experiment {experiment.id}'s spec")
    base = session.get(BaseCheckpoint, experiment.base_id)
    packs = run_packs(session, run)
    router = spec.settings("graft").router
    actor = f"experiment:{experiment.id}/run:{run.id}/adopt"
    cache = work_dir(settings, "cache")
    model = tokenizer = None
    out = []
    for done, pack in enumerate(packs):
        skill_row = session.get(Skill, pack.skill_id)
        skill = skill_row.name
        name = f"{skill}@v{pack.version}"
        if progress is not None:
            progress(name, done / len(packs))
        if pack.status != PackStatus.candidate:  # decided before: by an earlier adopt, or a person
            last = session.scalar(sa.select(Promotion).where(Promotion.pack_id == pack.id)
                                  .order_by(Promotion.id.desc()).limit(1))
            undecided = pack.id in inconclusive_packs(session, [pack.id])
            out.append(Adopted(pack.id, name, status_label(pack.status, undecided),
                               f"decided before ({last.actor}): {last.reason}" if last
                               else "decided before", last.state_id if last else None))
            continue
        if model is None:
            model, tokenizer = load_causal_lm(base.uri)
        suite = skill_suite(skill_row)
        general = general_suite(beside=[suite], base=base)
        current, version = head_of(session, base)
        evaluation = evaluate_candidate(
            session, blobs, model, tokenizer, pack, current, version, general=general,
            router=router, batch_size=EVAL_BATCH, limit=spec.eval_limit, cache_dir=cache)
        evaluate_base(session, blobs, model, tokenizer, base, [suite], limit=spec.eval_limit,
                      batch_size=EVAL_BATCH, cache_dir=cache)
        record = (pack.metrics or {}).get(FINETUNE) or {}
        finetune = finetune_score(blobs, record) if record.get("samples_digest") else None
        if finetune is not None:
            record_fidelity(session, pack, record, evaluation.after[skill])
        outcome = gate_pack(session, pack, recorded_judge(blobs, pack, evaluation, spec.gate,
                                                          finetune=finetune), actor=actor)
        out.append(Adopted(pack.id, name, outcome.decision.verdict, outcome.decision.summary(),
                           outcome.state_id))
    if progress is not None:
        progress("", 1.0)
    return out
