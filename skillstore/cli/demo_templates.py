"""The demo's view by prompt template: the head state's score on the test prompts of each kind
of template (trained, a trained request after a new opener, a new phrasing), under its learned
router and under the tag oracle (each skill's prompts get that skill's pack), and the routed
history's metrics on held-out templates only (imported by `skillstore demo` only)."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.orm import Session

from ..blobstore import open_blob_store
from ..catalog import current_head, get_or_create_state, get_state
from ..catalog.models import SkillPack
from ..curriculum.build import Curriculum
from ..curriculum.skills import KINDS, SKILLS, TRAINED
from ..curriculum.validate import load_rows
from ..evaluation.cache import evaluate_state
from ..evaluation.loader import state_loader
from ..evaluation.scores import subset, suite_scores
from ..evaluation.stats import paired_test
from ..evaluation.suites import state_suites
from ..models import load_causal_lm
from ..reports.data import accuracy_matrix, attempts
from ..states import load_view

EVAL_BATCH = 32


def kind_keys(curriculum: Curriculum, skills: list[str]) -> dict[str, dict[str, set[str]]]:
    """skill -> template kind -> doc ids (row numbers) of its test split rows of that kind."""
    out = {}
    for name in skills:
        if name not in SKILLS or name not in curriculum.skills:
            continue
        rows = load_rows(curriculum.skills[name].split("test"))
        kinds: dict[str, set[str]] = {k: set() for k in KINDS}
        for i, row in enumerate(rows):
            kinds[SKILLS[name].template(row["template"]).kind].add(str(i))
        out[name] = kinds
    return out


def held_out_keys(keys: Mapping[str, Mapping[str, set[str]]]) -> dict[str, set[str]]:
    """skill -> doc ids of its test prompts in templates no training row used."""
    return {name: set().union(*(ids for kind, ids in kinds.items() if kind != TRAINED))
            for name, kinds in keys.items()}


def oracle_state(session: Session, base, state):
    """The state's packs at the same scales under tag routing: each skill's suite is answered
    by that skill's pack, whatever its prompts say (the router's upper bound)."""
    packs = [(session.get(SkillPack, m.pack_id), m.scale) for m in state.members]
    return get_or_create_state(session, base=base, packs=packs, router="tag",
                               description=f"tag-routing oracle of state {state.id}")


def template_report(session: Session, settings, base, curriculum: Curriculum, *,
                    limit: int | None = None) -> dict | None:
    """The head state under its router and under the tag oracle, scored by kind of template,
    with routed - oracle on the held-out prompts (McNemar, 95%), and the routed history's
    accuracy matrix and metrics on held-out prompts (misrouting included); None before any
    pack is promoted."""
    head = current_head(session, base.id)
    if head is None:
        return None
    state = get_state(session, head.state_id)
    if not state.members:
        return None
    store = open_blob_store(settings)
    keys = kind_keys(curriculum, [a.skill for a in attempts(session, state)])
    suites = state_suites(session, list(keys))
    oracle = oracle_state(session, base, state)
    model, tok = load_causal_lm(base.uri)
    cache = settings.home / "work" / "cache"
    evaluate_state(session, oracle, suites,
                   state_loader(model, tok, load_view(session, oracle), store, cache_dir=cache),
                   batch_size=EVAL_BATCH, limit=limit, blobs=store)
    session.commit()  # the eval table is a cache shared with the jobs
    routed_scores = suite_scores(session, state.id, suites, limit=limit, blobs=store)
    oracle_scores = suite_scores(session, oracle.id, suites, limit=limit, blobs=store)
    table, before, after = [], [], []
    for name, kinds in keys.items():
        for kind, ids in kinds.items():
            routed = subset(routed_scores[name], ids) if name in routed_scores else None
            tag = subset(oracle_scores[name], ids) if name in oracle_scores else None
            if routed is None or tag is None:
                continue
            table.append({"skill": name, "kind": kind, "n": routed.n, "routed": routed.value,
                          "oracle": tag.value})
            if kind != TRAINED:
                common = sorted(set(routed.samples) & set(tag.samples))
                before += [tag.samples[k] for k in common]
                after += [routed.samples[k] for k in common]
    held = held_out_keys(keys)
    matrix = accuracy_matrix(session, state, suites, limit=limit, only=held, blobs=store)
    out = {"state": state.id, "oracle_state": oracle.id, "by_kind": table,
           "held_out_matrix": {"skills": matrix.skills, "accuracy_matrix": matrix.matrix,
                               "held": matrix.held, "metrics": matrix.metrics()}}
    if before:
        test = paired_test(before, after)
        oracle_mean = sum(before) / len(before)
        out["held_out"] = {"n": len(before), "routed": test.after, "oracle": test.before,
                           "ratio": test.after / oracle_mean if oracle_mean else None,
                           "difference": test.difference, "low": test.low, "high": test.high}
    return out
