"""The forgetting comparison: the routed SkillPack history against naive sequential fine-tuning."""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.orm import Session

from ..catalog import current_head, get_state
from ..catalog.models import Skill, SkillPack
from ..evaluation.cache import evaluate_state, headline
from ..evaluation.metrics import continual_metrics
from .report import state_chain
from .suites import skill_suite

EVAL_BATCH = 32


def routed_matrix(session: Session, settings, base, *, limit: int | None = None) -> dict:
    """R[i][j] of the base's promoted states: every cell measured (cached results reused)."""
    from ..models import load_causal_lm
    from ..states import load_view, materialise

    head = current_head(session, base.id)
    if head is None:
        return {"skills": [], "accuracy_matrix": [], "metrics": None}
    chain = state_chain(session, get_state(session, head.state_id))
    final = chain[-1]
    skills = [session.get(Skill, session.get(SkillPack, m.pack_id).skill_id) for m in final.members]
    suites = [skill_suite(s) for s in skills]
    model, tok = load_causal_lm(base.uri)
    store = _blobs(settings)
    matrix = []
    for state in chain:
        view = load_view(session, state)

        @contextmanager
        def load(_suite, view=view):
            with materialise(model, view, store, pad_token_id=tok.pad_token_id,
                             cache_dir=settings.home / "work" / "cache"):
                yield model, tok

        rows = evaluate_state(session, state, suites, load, batch_size=EVAL_BATCH, limit=limit)
        matrix.append([headline(rows, s)[0] for s in suites])
    session.commit()  # the eval table is a cache shared with the jobs
    return {"skills": [s.name for s in skills], "accuracy_matrix": matrix,
            "states": [s.id for s in chain], "metrics": continual_metrics(matrix).as_dict()}


def _blobs(settings):
    from ..blobstore import open_blob_store

    return open_blob_store(settings)


def naive_sequential(settings, base_dir: str | Path, skills: list[Skill], train: dict, *,
                     limit: int | None = None, progress=None) -> dict:
    """The learning core's naive sequential full fine-tuning over ``skills``, with the same
    trainer settings the jobs used, scored by exact match on each skill's test split (the rows
    its lm-eval task reads); cached on disk by its inputs."""
    from ..curriculum.validate import load_rows
    from ..fingerprint import fingerprint_checkpoint
    from ..models import load_causal_lm
    from ..training.baselines import Stage, train_sequential
    from ..training.sft import SFTConfig
    from .steps import skill_rows

    if not skills:
        return {"skills": [], "accuracy_matrix": [], "metrics": None}
    store = _blobs(settings)
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
    _, matrix = train_sequential(model, tok, stages, SFTConfig(**train), progress, eval_limit=limit)
    out = {"skills": [s.name for s in skills], "accuracy_matrix": matrix,
           "metrics": continual_metrics(matrix).as_dict()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out, indent=2))
    return out
