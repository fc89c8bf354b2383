"""What a candidate is measured against besides the current state: the uncompressed fine-tune
its pack came from (fidelity) and the plain base (forward transfer).

The fine-tune is not a model state (it is not base + packs), so its scores do not go to the
eval table: the evaluate step measures it once per pack and suite version, and the record
(headline score, and its per-sample scores as a blob) is kept in the pack's metrics under
``finetune``, where a later evaluate step of the same job finds it.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm.attributes import flag_modified

from ..catalog.models import BaseCheckpoint, SkillPack
from ..evaluation.cache import Suite, cache_version, evaluate_state, read_samples, samples_bytes
from ..evaluation.loader import state_loader
from ..evaluation.runner import run_tasks
from ..evaluation.scores import Score, model_score
from ..models import load_causal_lm
from ..states.view import base_state, load_view

FINETUNE = "finetune"
FIDELITY = "fidelity"


def finetune_record(session, blobs, pack: SkillPack, tuned_dir: str | Path, suite: Suite, *,
                    fingerprint: str | None = None, limit: int | None = None,
                    batch_size: int = 16, runner=run_tasks) -> dict:
    """The fine-tune's score on the new skill's ``suite`` (at ``limit``), as a JSON record:
    headline value, stderr, n, suite version, metric, and ``samples_digest`` (the blob of its
    per-sample scores, keyed like the candidate's). Measured once per pack, suite version and
    fine-tune fingerprint; the record is stored in ``pack.metrics["finetune"]`` (flushed in
    the caller's transaction) and read back on a later call."""
    version = cache_version(suite, limit)
    known = (pack.metrics or {}).get(FINETUNE)
    if known and known.get("version") == version and known.get("fingerprint") == fingerprint:
        return known
    model, tokenizer = load_causal_lm(tuned_dir)
    score = model_score(model, tokenizer, suite, limit=limit, batch_size=batch_size,
                        runner=runner)
    record = {**score.as_json(), "suite": suite.name, "fingerprint": fingerprint,
              "samples_digest": (blobs.put_bytes(samples_bytes(score.samples))
                                 if score.samples else None)}
    _set_metric(session, pack, FINETUNE, record)
    return record


def finetune_score(blobs, record: dict | None) -> Score | None:
    """The Score (with its per-sample scores when they were kept) of a finetune_record."""
    if not record:
        return None
    digest = record.get("samples_digest")
    return Score(record["value"], record.get("stderr") or 0.0, record.get("n") or 0,
                 read_samples(blobs, digest) if digest else None,
                 version=record.get("version"), metric=record.get("metric"))


def record_fidelity(session, pack: SkillPack, finetune: dict, candidate: Score) -> dict:
    """Store what the pack state keeps of the fine-tune's score on its skill in
    ``pack.metrics["fidelity"]`` (the decision's fidelity check holds its interval)."""
    ratio = candidate.value / finetune["value"] if finetune["value"] > 0 else None
    fidelity = {"suite": finetune["suite"], "finetune": finetune["value"],
                "pack": candidate.value, "ratio": ratio, "n": candidate.n}
    _set_metric(session, pack, FIDELITY, fidelity)
    return fidelity


def _set_metric(session, pack: SkillPack, key: str, value: dict) -> None:
    """One key of the pack's metrics JSON, flushed in the caller's transaction."""
    pack.metrics = {**(pack.metrics or {}), key: value}
    flag_modified(pack, "metrics")
    session.flush()


def evaluate_base(session, blobs, model, tokenizer, base: BaseCheckpoint, suites: list[Suite], *,
                  limit: int | None = None, batch_size: int = 16,
                  cache_dir: str | Path | None = None) -> None:
    """Score the plain base (its pack-less state) on ``suites`` through the eval cache, so a
    report has b[j] for forward transfer. Costs nothing when the base already has them (the
    first job of a base evaluates it as the current state)."""
    state = base_state(session, base)
    evaluate_state(session, state, suites,
                   state_loader(model, tokenizer, load_view(session, state), blobs,
                                cache_dir=cache_dir),
                   batch_size=batch_size, limit=limit, blobs=blobs)
