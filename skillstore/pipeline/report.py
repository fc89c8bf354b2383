"""The gate's report: accuracy matrix over the base's learning history, CL metrics, the decision."""

from __future__ import annotations

import json

from sqlalchemy.orm import Session

from ..catalog import get_state
from ..catalog.models import ModelState, Skill, SkillPack
from ..errors import EvaluationError
from ..evaluation.cache import cached_rows, headline
from ..evaluation.metrics import continual_metrics
from .suites import skill_suite

REPORT_FORMAT = "skillstore.gate-report/1"


def state_chain(session: Session, state: ModelState) -> list[ModelState]:
    """The states a base went through up to ``state``, oldest first, pack-less base excluded."""
    chain = [state]
    while chain[-1].parent_id is not None and len(chain) < 10_000:
        chain.append(get_state(session, chain[-1].parent_id))
    return [s for s in reversed(chain) if s.members]


def _score(session: Session, state: ModelState, suite) -> float | None:
    rows = cached_rows(session, state.id, suite)
    try:
        return headline(rows, suite)[0] if rows else None
    except EvaluationError:
        return None


def accuracy_matrix(session: Session, state: ModelState) -> tuple[list[str], list[list[float | None]]]:
    """R[i][j]: score on skill j after learning stage i, read from the eval table only.

    Cells above the diagonal (skill j not learned yet) hold the score measured just before j
    was learned, which the gate always evaluates; earlier rows reuse that value, so BWT and
    forgetting are exact and the upper triangle is an approximation marked as such.
    """
    chain = state_chain(session, state)
    final = chain[-1] if chain else state
    packs = [session.get(SkillPack, m.pack_id) for m in final.members]
    skills = [session.get(Skill, p.skill_id) for p in packs]
    suites = [skill_suite(s) for s in skills]
    n = len(chain)
    matrix: list[list[float | None]] = [[None] * n for _ in range(n)]
    for i, st in enumerate(chain):
        for j in range(n):
            if j <= i or j == i + 1:
                matrix[i][j] = _score(session, st, suites[j]) if j < len(suites) else None
    for j in range(1, n):
        for i in range(j - 1):
            matrix[i][j] = matrix[j - 1][j]
    return [s.name for s in skills], matrix


def matrix_metrics(matrix: list[list[float | None]]) -> dict:
    if not matrix or any(v is None for row in matrix for v in row):
        return {"average_accuracy": None, "bwt": None, "forgetting": None}
    m = continual_metrics(matrix)
    return {"average_accuracy": m.average_accuracy, "bwt": m.bwt, "forgetting": m.forgetting}


def build_report(session: Session, job, pack: SkillPack, ev: dict, decision) -> dict:
    candidate = get_state(session, ev["candidate_state_id"])
    skills, matrix = accuracy_matrix(session, candidate)
    return {"format": REPORT_FORMAT, "job_id": job.id, "pack_id": pack.id,
            "pack": f"{ev['new_skill']}@v{pack.version}", "candidate_state_id": candidate.id,
            "current_state_id": ev["current_state_id"], "skills": skills,
            "accuracy_matrix": matrix, **matrix_metrics(matrix),
            "before": ev["before"], "after": ev["after"], "decision": decision.as_dict(),
            "pack_bytes": pack.size_bytes, "compression_ratio": pack.compression_ratio,
            "codecs": pack.codecs, "method": pack.method, "baselines": {}}


def write_report(session: Session, store, job, pack: SkillPack, ev: dict, decision) -> str:
    """Store the report as content-addressed blobs and return the reference of the HTML one.

    The JSON document (accuracy matrix, metrics, decision, scores) is written first; the HTML
    page is rendered by skillstore.reports with this decision filled in, since the verdict is
    committed only after the report exists.
    """
    from ..reports.data import build_report as gather
    from ..reports.render import render_report

    doc = build_report(session, job, pack, ev, decision)
    json_ref = store.put_bytes(json.dumps(doc, indent=2, sort_keys=True).encode("utf-8"))
    data = gather(session, state=get_state(session, ev["candidate_state_id"]))
    data.title = f"Gate report: {doc['pack']} (job {job.id})"
    data.decision = {**decision.as_dict(), "report_json": json_ref}
    return store.put_bytes(render_report(data, "html").encode("utf-8"))
