"""Steps four and five: evaluate the candidate state (router retrained, results cached), then gate."""

from __future__ import annotations

from contextlib import contextmanager

from sqlalchemy.orm import Session

from ..catalog import JobStatus, finish_job, get_pack, get_state
from ..catalog.models import BaseCheckpoint, ModelState, Skill, SkillPack
from ..catalog.schema import PackStatus
from ..evaluation.cache import Suite, evaluate_state, headline
from ..settings import Settings
from .context import Progress, blobs, is_stopped, load_job, output, record_output, scratch, work_dir
from .suites import (
    general_suite,
    general_suite_path,
    skill_prompts,
    skill_suite,
    train_prompts_of_yaml,
)

EVAL_BATCH = 32


def state_suites(session: Session, state: ModelState, extra: Skill, general: str | None) -> list[Suite]:
    """The suites a candidate is judged on: every skill it holds (the new one included) and the
    base's general suite."""
    packs = [session.get(SkillPack, m.pack_id) for m in state.members]
    skills = [session.get(Skill, p.skill_id) for p in packs]
    if extra.id not in {s.id for s in skills}:
        skills.append(extra)
    suites = [skill_suite(s) for s in skills]
    g = general_suite(general)
    return suites + ([g] if g is not None else [])


def _train_router(session, model, tok, store, settings, job_id, skills: list[Skill],
                  general: str | None) -> str | None:
    """Retrain the learned router for this pack set; its file is a content-addressed blob."""
    from ..routing import NONE_CLASS, save_router, train_router

    prompts = {s.name: skill_prompts(s, store) for s in skills}
    if general:
        prompts[NONE_CLASS] = train_prompts_of_yaml(general)
    if len(prompts) < 2:
        return None
    trained = train_router(model, tok, prompts, seed=0)
    tmp = scratch(settings, job_id)
    try:
        return store.put_file(save_router(trained.classifier, tmp / "router.safetensors"))
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def scores_of(rows, suites: list[Suite]) -> dict[str, list[float]]:
    out = {}
    for suite in suites:
        value, stderr, n = headline(rows, suite)
        out[suite.name] = [value, stderr, n]
    return out


def judge_candidate(session: Session, settings: Settings, job, pack: SkillPack,
                    progress: Progress | None = None) -> dict:
    """Build the candidate (current packs + this one, learned router retrained) and evaluate it
    and the current state on the same suites; results already in the eval table are reused."""
    from ..gate import head_of
    from ..models import load_causal_lm
    from ..states import extend_state, load_view, materialise

    store = blobs(settings)
    base = session.get(BaseCheckpoint, pack.base_id)
    skill = session.get(Skill, pack.skill_id)
    current, version = head_of(session, base)
    general = general_suite_path(skill, job.params.get("options", {}).get("general_suite"))
    member_packs = [session.get(SkillPack, m.pack_id) for m in current.members]
    member_skills = [session.get(Skill, p.skill_id) for p in member_packs if p.skill_id != skill.id]
    model, tok = load_causal_lm(base.uri)
    router_blob = _train_router(session, model, tok, store, settings, job.id,
                                member_skills + [skill], general)
    candidate = extend_state(session, base, current, pack, router="learned" if router_blob else "none",
                             router_blob_digest=router_blob, router_config={} if router_blob else None)
    suites = state_suites(session, candidate, skill, general)
    limit = job.params.get("options", {}).get("eval_limit")
    cache = work_dir(settings, "cache")
    results = {}
    for i, state in enumerate((current, candidate)):
        view = load_view(session, state)

        @contextmanager
        def load(_suite, view=view):
            with materialise(model, view, store, pad_token_id=tok.pad_token_id, cache_dir=cache):
                yield model, tok

        rows = evaluate_state(session, state, suites, load, batch_size=EVAL_BATCH, limit=limit)
        results[i] = scores_of(rows, suites)
        if progress:
            progress("evaluate", 0.5 * (i + 1))
    return {"current_state_id": current.id, "head_version": version,
            "candidate_state_id": candidate.id, "router_blob": router_blob,
            "new_skill": skill.name, "earlier": [s.name for s in member_skills],
            "general": [s.name for s in suites if s.skill_id is None],
            "before": results[0], "after": results[1]}


def evaluate(session: Session, job_id: int, settings: Settings,
             progress: Progress | None = None) -> dict:
    """Evaluate the candidate state against the current one; idempotent through the eval cache."""
    job = load_job(session, job_id)
    if is_stopped(job) or output(job, "evaluate"):
        return output(job, "evaluate") or {}
    pack = get_pack(session, job.pack_id)
    out = judge_candidate(session, settings, job, pack, progress)
    record_output(job, "evaluate", out)
    return out


def _decision(job, ev: dict):
    from ..gate import GatePolicy, Score, decide

    policy = GatePolicy(**job.params.get("options", {}).get("gate", {}))
    before = {k: Score(*v) for k, v in ev["before"].items()}
    after = {k: Score(*v) for k, v in ev["after"].items()}
    return decide(policy, new_skill=ev["new_skill"], before=before, after=after,
                  earlier_skills=ev["earlier"], general_suites=ev["general"])


def gate(session: Session, job_id: int, settings: Settings, progress: Progress | None = None) -> dict:
    """Promote or reject the candidate pack; the report is written before the verdict is, and
    the verdict, the audit row (naming the report) and the head move commit together."""
    from ..gate import gate_pack
    from .report import write_report

    job = load_job(session, job_id)
    if is_stopped(job):
        return output(job, "gate") or {}
    pack = get_pack(session, job.pack_id)
    if pack.status == PackStatus.candidate:
        def judge(session, current, version):
            ev = output(job, "evaluate")
            if ev is None or ev["head_version"] != version or ev["current_state_id"] != current.id:
                ev = judge_candidate(session, settings, job, pack)  # the base moved: judge again
            decision = _decision(job, ev)
            ref = write_report(session, blobs(settings), job, pack, ev, decision)
            return get_state(session, ev["candidate_state_id"]), decision, ref

        outcome = gate_pack(session, pack, judge, actor=f"job:{job.id}")
        verdict, reasons = outcome.decision.verdict, outcome.decision.reasons
    else:
        verdict, reasons = pack.status.value, ["decided before this attempt"]
    job = load_job(session, job_id)
    out = {"verdict": verdict, "reasons": reasons, "pack_id": pack.id}
    record_output(job, "gate", out)
    if job.status != JobStatus.succeeded:
        finish_job(session, job, pack_id=pack.id)
    return out


__all__ = ["evaluate", "gate", "judge_candidate", "state_suites"]
