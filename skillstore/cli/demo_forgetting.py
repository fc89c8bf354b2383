"""The demo's forgetting comparison: the routed SkillPack history against naive sequential
fine-tuning (imported by `skillstore demo` only, never at CLI start-up)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sqlalchemy.orm import Session

from ..blobstore import open_blob_store
from ..catalog import current_head, get_state
from ..catalog.models import Skill
from ..curriculum.validate import load_rows
from ..evaluation.cache import evaluate_state
from ..evaluation.loader import state_loader
from ..evaluation.metrics import continual_metrics
from ..evaluation.suites import state_suites
from ..fingerprint import fingerprint_checkpoint
from ..models import load_causal_lm
from ..reports.data import accuracy_matrix
from ..skilldata import skill_rows
from ..states import load_view
from ..training.baselines import Stage, train_sequential
from ..training.sft import SFTConfig

EVAL_BATCH = 32


def routed_matrix(session: Session, settings, base, *, limit: int | None = None) -> dict:
    """R[i][j] of the base's promoted states with every cell measured: each state of the
    head's history is evaluated on every skill the head holds (cached results reused, so only
    the cells the gates did not measure run), then read back by reports.accuracy_matrix."""
    head = current_head(session, base.id)
    if head is None:
        return {"skills": [], "accuracy_matrix": [], "metrics": None}
    final = get_state(session, head.state_id)
    suites = state_suites(session, load_view(session, final).skills)
    model, tok = load_causal_lm(base.uri)
    store = open_blob_store(settings)
    cache = settings.home / "work" / "cache"
    for state_id in accuracy_matrix(session, final, suites, limit=limit).states:
        state = get_state(session, state_id)
        evaluate_state(session, state, suites,
                       state_loader(model, tok, load_view(session, state), store, cache_dir=cache),
                       batch_size=EVAL_BATCH, limit=limit, blobs=store)
    session.commit()  # the eval table is a cache shared with the jobs
    m = accuracy_matrix(session, final, suites, limit=limit)
    return {"skills": m.skills, "accuracy_matrix": m.matrix, "states": m.states,
            "metrics": continual_metrics(m.matrix).as_dict()}


def naive_sequential(settings, base_dir: str | Path, skills: list[Skill], train: dict, *,
                     limit: int | None = None, progress=None) -> dict:
    """The learning core's naive sequential full fine-tuning over ``skills``, with the same
    trainer settings the jobs used, scored by exact match on each skill's test split (the rows
    its lm-eval task reads); cached on disk by its inputs."""
    if not skills:
        return {"skills": [], "accuracy_matrix": [], "metrics": None}
    store = open_blob_store(settings)
    key_doc = {"base": fingerprint_checkpoint(base_dir), "skills": [s.name for s in skills],
               "data": [s.data_sha256 for s in skills], "train": train, "limit": limit}
    key = hashlib.sha256(json.dumps(key_doc, sort_keys=True).encode()).hexdigest()[:16]
    cache = settings.home / "work" / "baselines" / f"naive-{key}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    stages = []
    for skill in skills:
        rows, val = skill_rows(store, skill)
        test = load_rows(Path(skill.data_uri).with_name("test.jsonl"))
        stages.append(Stage(skill.name, rows, val, test))
    model, tok = load_causal_lm(base_dir, fingerprint=False)
    _, matrix = train_sequential(model, tok, stages, SFTConfig(**train), progress,
                                 eval_limit=limit)
    out = {"skills": [s.name for s in skills], "accuracy_matrix": matrix,
           "metrics": continual_metrics(matrix).as_dict()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out, indent=2))
    return out
