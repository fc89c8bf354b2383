"""The demo's forgetting comparison: the routed SkillPack history against naive sequential
fine-tuning, both scored by lm-eval on the same skill suites (imported by `skillstore demo`
only, never at CLI start-up)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sqlalchemy.orm import Session

from ..blobstore import open_blob_store
from ..catalog import current_head, get_state
from ..catalog.models import Skill
from ..evaluation.cache import cache_version, evaluate_state
from ..evaluation.loader import state_loader
from ..evaluation.metrics import continual_metrics
from ..evaluation.suites import skill_suite, state_suites
from ..experiments.sequential import EVAL_BATCH, sequential_scores, skill_stages
from ..fingerprint import fingerprint_checkpoint
from ..models import load_causal_lm
from ..reports.data import accuracy_matrix, attempts
from ..states import base_state, load_view
from ..training.sft import SFTConfig

NAIVE = "naive sequential fine-tuning"  # the baseline's name in reports
SCORER = "lm-eval"  # how a baseline's cells were scored; the routed states' eval table is lm-eval


def routed_matrix(session: Session, settings, base, *, limit: int | None = None) -> dict:
    """R[i][j] of the base's history with every cell measured: each state of the head's history
    is evaluated on every skill attempted on the way to it, rejected ones included (cached
    results reused, so only the cells the gates did not measure run), then read back by
    reports.accuracy_matrix."""
    head = current_head(session, base.id)
    final = get_state(session, head.state_id) if head is not None else base_state(session, base)
    skills = [a.skill for a in attempts(session, final)]
    if not skills:
        return {"skills": [], "accuracy_matrix": [], "metrics": None}
    suites = state_suites(session, skills)
    model, tok = load_causal_lm(base.uri)
    store = open_blob_store(settings)
    cache = settings.home / "work" / "cache"
    for state_id in dict.fromkeys(accuracy_matrix(session, final, suites, limit=limit).states):
        state = get_state(session, state_id)
        evaluate_state(session, state, suites,
                       state_loader(model, tok, load_view(session, state), store, cache_dir=cache),
                       batch_size=EVAL_BATCH, limit=limit, blobs=store)
    session.commit()  # the eval table is a cache shared with the jobs
    m = accuracy_matrix(session, final, suites, limit=limit)
    return {"skills": m.skills, "accuracy_matrix": m.matrix, "states": m.states, "held": m.held,
            "verdicts": m.verdicts, "metrics": m.metrics()}


def naive_sequential(settings, base_dir: str | Path, skills: list[Skill], train: dict, *,
                     limit: int | None = None, progress=None) -> dict:
    """The naive sequential full fine-tuning baseline over ``skills``, with the same trainer
    settings the jobs used, scored by lm-eval on each skill's suite at the same version and
    sample limit as the routed states; cached on disk by its inputs."""
    if not skills:
        return {"skills": [], "accuracy_matrix": [], "metrics": None}
    store = open_blob_store(settings)
    suites = [skill_suite(s) for s in skills]
    versions = [cache_version(s, limit) for s in suites]
    key_doc = {"base": fingerprint_checkpoint(base_dir), "skills": [s.name for s in skills],
               "data": [s.data_sha256 for s in skills], "train": train, "limit": limit,
               "scorer": SCORER, "suites": versions}
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:16]
    cache = settings.home / "work" / "baselines" / f"naive-{key}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    stages = skill_stages(store, skills)
    model, tok = load_causal_lm(base_dir, fingerprint=False)
    scores = sequential_scores(model, tok, stages, suites, SFTConfig(**train), limit=limit,
                               progress=progress)
    matrix = [[sc.value for sc in row] for row in scores]
    out = {"skills": [s.name for s in skills], "accuracy_matrix": matrix,
           "n": [[sc.n for sc in row] for row in scores], "scorer": SCORER,
           "suite_versions": versions, "limit": limit,
           "metrics": continual_metrics(matrix).as_dict()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out, indent=2))
    return out
