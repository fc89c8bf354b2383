"""Steps four and five of a learning job, thin calls into skillstore.gate: evaluate the candidate
(GPU queue), then decide and record the verdict on the recorded scores (CPU queue)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from ..catalog import get_job, get_pack
from ..catalog.models import BaseCheckpoint, Skill
from ..catalog.schema import PackStatus
from ..errors import StaleEvaluationError
from ..evaluation.suites import general_suite, skill_suite
from ..gate import CandidateEvaluation, evaluate_candidate, gate_pack, head_of, recorded_judge
from ..settings import Settings
from .lifecycle import (
    Progress,
    finish,
    forget_output,
    is_stopped,
    output,
    record_output,
    send_chain,
)
from .request import request_of
from .workdir import blobs, work_dir

EVAL_BATCH = 32
# The candidate routes by the learned router, retrained for its pack set on every job.
CANDIDATE_ROUTER = "learned"


def evaluate(session: Session, job_id: int, settings: Settings,
             progress: Progress | None = None) -> dict:
    """Score the candidate state (the head's packs + this job's pack) against the head on the
    same suites, with the eval cache, and record the scores and the head they were read at."""
    from ..models import load_causal_lm  # transformers: loaded only where a model runs

    job = get_job(session, job_id)
    if is_stopped(job) or output(job, "evaluate"):
        return output(job, "evaluate") or {}
    request = request_of(job)
    pack = get_pack(session, job.pack_id)
    base = session.get(BaseCheckpoint, pack.base_id)
    general = general_suite(request.general_suite,
                            beside=[skill_suite(session.get(Skill, pack.skill_id))])
    current, version = head_of(session, base)
    model, tokenizer = load_causal_lm(base.uri)
    evaluation = evaluate_candidate(
        session, blobs(settings), model, tokenizer, pack, current, version, general=general,
        router=CANDIDATE_ROUTER, batch_size=EVAL_BATCH, limit=request.eval_limit,
        cache_dir=work_dir(settings, "cache"),
        progress=(lambda done: progress("evaluate", done)) if progress else None)
    return record_output(session, job, "evaluate", evaluation.as_json())


def gate(session: Session, job_id: int, settings: Settings,
         progress: Progress | None = None) -> dict:
    """Decide with the request's policy on the recorded scores, store the report, and record
    the verdict with the head compare-and-swap (gate_pack commits it); never evaluates.

    When the head moved since the evaluate step, the scores are stale: the step forgets them
    and sends the job back to evaluate (it stays running) instead of deciding.
    """
    job = get_job(session, job_id)
    if is_stopped(job) or output(job, "gate"):
        return output(job, "gate") or {}
    pack = get_pack(session, job.pack_id)
    if pack.status == PackStatus.candidate:
        recorded = output(job, "evaluate")
        try:
            if recorded is None:  # a redelivered gate after its evaluation was forgotten
                raise StaleEvaluationError(f"Job {job.id} has no evaluation to decide on.")
            judge = recorded_judge(blobs(settings), pack, CandidateEvaluation.from_json(recorded),
                                   request_of(job).gate)
            outcome = gate_pack(session, pack, judge, actor=f"job:{job.id}")
        except StaleEvaluationError:
            forget_output(session, job, "evaluate")
            session.commit()
            send_chain(session, settings, job, "evaluate")
            return {"sent_back_to": "evaluate"}
        verdict, reasons = outcome.decision.verdict, outcome.decision.reasons
    else:
        verdict, reasons = pack.status.value, ["decided before this attempt"]
    job = get_job(session, job_id)
    out = record_output(session, job, "gate", {"verdict": verdict, "reasons": reasons,
                                               "pack_id": pack.id})
    finish(session, job, pack_id=pack.id)
    return out
