"""Manual overrides as the CLI and the API run them: the base's general prompts for a learned
router, then the one override, ``states.manual_override``."""

from __future__ import annotations

import sqlalchemy as sa

from ..catalog.models import BaseCheckpoint, ModelState, Promotion, Skill, SkillPack
from ..errors import ConfigError, EvaluationError, NotFoundError
from ..evaluation.suites import general_suite, skill_suite, suite_prompts
from ..states.service import ROUTER_PROMPTS, manual_override
from ..states.view import load_view
from .judge import head_of


def general_prompts(session, current: ModelState, pack: SkillPack) -> list[str]:
    """The NONE-class prompts of a learned router for ``current`` with or without ``pack``: the
    training prompts of the base's general suite, found as the gate finds it (the general YAML
    beside the skills' task YAML); [] when there is none."""
    names = [*load_view(session, current).skills, session.get(Skill, pack.skill_id).name]
    rows = {s.name: s for s in session.scalars(sa.select(Skill).where(Skill.name.in_(names)))}
    beside = []
    for name in dict.fromkeys(names):  # the state's skills in order, then the pack's
        try:
            beside.append(skill_suite(rows[name]))
        except (NotFoundError, ConfigError, EvaluationError):
            continue  # a suite named by task (no folder given here) has no folder to look beside
    general = general_suite(beside=beside)
    return suite_prompts(general, ROUTER_PROMPTS) if general is not None else []


def override_pack(session, blobs, pack: SkillPack, action: str, *, reason: str,
                  actor: str) -> Promotion:
    """`pack promote|reject|retire` and `state unload`: ``states.manual_override`` with, when the
    head routes with the learned router (whose retrained router then keeps its no-pack class),
    the base's general prompts."""
    current, _ = head_of(session, session.get(BaseCheckpoint, pack.base_id))
    prompts = general_prompts(session, current, pack) if current.router == "learned" else []
    return manual_override(session, blobs, pack, action, reason=reason, actor=actor,
                           general_prompts=prompts)
