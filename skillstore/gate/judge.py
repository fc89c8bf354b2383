"""The standard judge for gate_pack: build the candidate, evaluate both states (cached), decide, report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ..catalog.models import BaseCheckpoint, ModelState, SkillPack
from ..evaluation.cache import evaluate_state
from ..evaluation.suites import state_loader, state_suites
from ..states.view import extend_state, load_view
from .decision import GENERAL, Decision, decide
from .policy import GatePolicy


def make_judge(blobs, model, tokenizer, pack: SkillPack, *, tasks_dir: str | Path, policy: GatePolicy,
               general_task: str | None = "skillstore_general", router: str | None = None,
               router_prompts: Mapping[str, Sequence[str]] | None = None, batch_size: int = 16,
               limit: int | None = None, cache_dir: str | Path | None = None):
    """A Judge for :func:`gate_pack` that the pipeline calls once per attempt.

    It extends the current state with ``pack``, trains the learned router when the state routes
    that way (``router_prompts``: class -> prompts, including ``<none>``), evaluates the current
    and the candidate state on every learned skill, the new skill and the general suite (the
    eval cache makes a re-judge after a lost race cost only the new state), decides with
    ``policy`` and stores an HTML report in the blob store; its digest is the report reference.
    """
    from ..reports import build_report, render_report
    from ..states.service import attach_router

    def judge(session, current: ModelState, _version: int | None) -> tuple[ModelState, Decision, str]:
        base = session.get(BaseCheckpoint, pack.base_id)
        candidate = extend_state(session, base, current, pack, router=router)
        if candidate.router == "learned":
            if router_prompts is None:
                from ..errors import RoutingError

                raise RoutingError(f"Pack {pack.id} joins a learned-router state; pass router_prompts to retrain it.")
            candidate = attach_router(session, blobs, candidate, model, tokenizer, router_prompts)
        cand_view, cur_view = load_view(session, candidate), load_view(session, current)
        suites = state_suites(session, cand_view.skills, tasks_dir, general_task=general_task)
        for state, view in ((current, cur_view), (candidate, cand_view)):
            evaluate_state(session, state, suites, state_loader(model, tokenizer, view, blobs, cache_dir=cache_dir),
                           batch_size=batch_size, limit=limit)
        from ..reports.data import suite_scores

        new_skill = cand_view.skills[-1]
        decision = decide(policy, new_skill=new_skill, before=suite_scores(session, current.id),
                          after=suite_scores(session, candidate.id),
                          earlier_skills=[s for s in cur_view.skills if s != new_skill],
                          general_suites=(GENERAL,) if general_task else ())
        data = build_report(session, state=candidate)
        data.decision = decision.as_dict()
        report_ref = blobs.put_bytes(render_report(data, "html").encode())
        return candidate, decision, report_ref

    return judge
