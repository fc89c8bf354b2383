"""The first three steps of a learning job: prepare the data, train, compress into a candidate pack."""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..catalog import EdgeKind, create_pack, current_head, get_state
from ..catalog.models import BaseCheckpoint, Job, Skill
from ..errors import DatasetError
from ..settings import Settings
from .context import (
    Progress,
    blobs,
    is_stopped,
    load_job,
    output,
    publish_dir,
    record_output,
    scaled,
    scratch,
    work_dir,
)

VAL_FRACTION = 0.1


def _rows_blob(store, rows: list[dict]) -> str:
    data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    return store.put_bytes(data.encode("utf-8"))


def read_rows(store, digest: str, kind: str = "sft") -> list[dict]:
    """Rows of a JSONL blob, checked like a user's file (the blob is verified on read)."""
    from ..curriculum.validate import load_rows

    return load_rows(store.local_path(digest), kind)


def skill_rows(store, skill: Skill) -> tuple[list[dict], list[dict]]:
    """(train, validation) rows of a skill: its registered data (from the blob store when it is
    there, so a later edit of the file cannot change the job) and a sibling validation.jsonl,
    else the last tenth of the training rows."""
    from ..curriculum.validate import load_rows

    if skill.data_sha256 and store.exists(skill.data_sha256):
        train = load_rows(store.local_path(skill.data_sha256))
    else:
        train = load_rows(skill.data_uri)
    val_path = Path(skill.data_uri or "").with_name("validation.jsonl")
    if skill.data_uri and val_path.is_file():
        return train, load_rows(val_path)
    rows = list(train)
    random.Random(skill.name).shuffle(rows)
    cut = max(1, int(len(rows) * VAL_FRACTION))
    return rows[cut:], rows[:cut]


def _distill_rows(job: Job, session: Session, train: list[dict], progress: Progress | None,
                  *, chosen_rejected: bool) -> tuple[list[dict], dict]:
    """The source model answers the skill's prompts; rule-based checks keep the right answers."""
    from ..curriculum.skills import skill_for_prompt
    from ..models import load_causal_lm
    from ..training.generate import generate_answers

    opts = job.params.get("options", {})
    source = session.get(BaseCheckpoint, job.params["source_id"])
    limit = int(opts.get("distill_rows", len(train)))
    prompts = [r["prompt"] for r in train[:limit]]
    model, tok = load_causal_lm(source.uri, fingerprint=False)
    answers = generate_answers(model, tok, prompts, progress=scaled(progress, "prepare", 0.0, 0.8))
    verify = bool(opts.get("verify", True))
    rows, kept = [], 0
    truth = {r["prompt"]: r["answer"] for r in train}
    for prompt, answer in zip(prompts, answers, strict=True):
        checker = skill_for_prompt(prompt)
        ok = checker.check(prompt, answer) if checker is not None else bool(answer)
        if verify and not ok:
            continue
        kept += 1
        if chosen_rejected:
            wrong = truth[prompt][::-1] + "x" if answer == truth[prompt] else truth[prompt] + "x"
            rows.append({"prompt": prompt, "chosen": answer, "rejected": wrong})
        else:
            rows.append({"prompt": prompt, "answer": answer})
    if not rows:
        raise DatasetError(f"The source model {source.name!r} answered none of {len(prompts)} "
                           "prompts correctly; train the source on this skill or use --method sft.")
    return rows, {"generated": len(prompts), "kept": kept, "source": source.name}


def prepare(session: Session, job_id: int, settings: Settings,
            progress: Progress | None = None) -> dict:
    """Validate and hash the data; for distill and dpo generate it with the source model."""
    job = load_job(session, job_id)
    if is_stopped(job) or output(job, "prepare"):
        return output(job, "prepare") or {}
    store = blobs(settings)
    skill = session.get(Skill, job.skill_id)
    train, val = skill_rows(store, skill)
    method = job.params["method"]
    info: dict = {}
    if method in ("distill", "dpo"):
        train, info = _distill_rows(job, session, train, progress, chosen_rejected=method == "dpo")
    out = {"train": _rows_blob(store, train), "validation": _rows_blob(store, val),
           "n_train": len(train), "n_validation": len(val),
           "kind": "dpo" if method == "dpo" else "sft", **info}
    record_output(job, "prepare", out)
    return out


def _start_packs(session: Session, job: Job, store, settings: Settings):
    """Packs (and scales) to graft before training when the job starts from the current state."""
    from ..states import load_packs, load_view

    if job.params.get("start_from") != "current":
        return [], []
    head = current_head(session, job.base_id)
    if head is None:
        return [], []
    view = load_view(session, get_state(session, head.state_id))
    return load_packs(view, store, work_dir(settings, "cache")), [m.scale for m in view.members]


def _train_model(model, tok, prep: dict, store, job: Job, progress: Progress | None):
    from ..training.sft import SFTConfig, clone_model, train_sft

    if prep["kind"] == "dpo":
        from ..training.dpo import DPOConfig, train_dpo

        # The frozen reference is the model as training starts (the base, or the current state).
        pairs = read_rows(store, prep["train"], "dpo")
        cfg = DPOConfig(**job.params.get("options", {}).get("dpo", {}))
        return train_dpo(model, clone_model(model), tok, pairs, cfg, progress).metrics
    cfg = SFTConfig(**job.params.get("train", {}))
    train, val = read_rows(store, prep["train"]), read_rows(store, prep["validation"])
    return train_sft(model, tok, train, val, cfg, progress).metrics


def train(session: Session, job_id: int, settings: Settings,
          progress: Progress | None = None) -> dict:
    """Fine-tune the base on the prepared data; the tuned checkpoint lands in a folder named by
    its weights' fingerprint, so a rerun after a crash never sees a half-written model."""
    from ..fingerprint import fingerprint_checkpoint
    from ..models import load_causal_lm
    from ..states import grafted_all

    job = load_job(session, job_id)
    done = output(job, "train")
    if is_stopped(job) or (done and Path(done["tuned_dir"], "config.json").is_file()):
        return done or {}
    started = time.time()
    store = blobs(settings)
    prep = output(job, "prepare")
    base = session.get(BaseCheckpoint, job.base_id)
    packs, scales = _start_packs(session, job, store, settings)
    model, tok = load_causal_lm(base.uri, fingerprint=bool(packs))
    with grafted_all(model, packs, scales, exact=False):
        # Training moves the grafted weights; subtracting the packs afterwards leaves
        # base + (the new skill's delta), which is what the pack must hold. An exact unapply
        # would restore the base on every tensor a pack touched and lose the training there.
        metrics = _train_model(model, tok, prep, store, job, scaled(progress, "train", 0.0, 0.95))
    tmp = scratch(settings, job.id) / "model"
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    fingerprint = fingerprint_checkpoint(tmp)
    final = publish_dir(tmp, work_dir(settings, "checkpoints") / fingerprint.removeprefix("sha256:")[:32])
    shutil.rmtree(tmp.parent, ignore_errors=True)
    out = {"tuned_dir": str(final), "fingerprint": fingerprint, "started": started,
           "finished": time.time(), "metrics": {k: v for k, v in metrics.items() if k != "history"}}
    if not store.local:  # compress may run on another host: hand the checkpoint over as blobs
        out["tuned_blobs"] = {f.name: store.put_file(f) for f in sorted(final.iterdir()) if f.is_file()}
    record_output(job, "train", out)
    return out


def tuned_checkpoint(store, settings: Settings, job_id: int, tuned: dict) -> Path:
    """The train step's checkpoint: its folder when train ran on this host, else a verified copy
    fetched from the blob store into this host's own checkpoints folder."""
    folder = Path(tuned["tuned_dir"])
    if (folder / "config.json").is_file() or not tuned.get("tuned_blobs"):
        return folder
    local = work_dir(settings, "checkpoints") / folder.name
    if (local / "config.json").is_file():
        return local
    tmp = scratch(settings, job_id)
    try:
        for name, digest in tuned["tuned_blobs"].items():
            with open(tmp / name, "wb") as f:
                for block in store.iter_chunks(digest):  # raises on a missing or corrupt blob
                    f.write(block)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return publish_dir(tmp, local)


def _tune(base: BaseCheckpoint, store, job: Job, pack_file: Path, tmp: Path, steps: int,
          progress: Progress | None) -> tuple[Path, dict]:
    """Tune the fresh pack's float payload on the job's training rows (``tune_steps``)."""
    from ..models import load_causal_lm
    from ..packs.tune import TuneConfig, tune_pack

    prep = output(job, "prepare")
    # DPO's rows are preference pairs: its chosen answers are what the pack should produce
    rows = read_rows(store, prep["train"], prep["kind"])
    if prep["kind"] == "dpo":
        rows = [{"prompt": r["prompt"], "answer": r["chosen"]} for r in rows]
    model, tok = load_causal_lm(base.uri)
    report = (lambda i, n, _loss: progress("compress", 0.5 + 0.4 * i / max(1, n))) if progress else None
    result = tune_pack(pack_file, model, tok, rows, tmp / "tuned.safetensors", TuneConfig(steps=steps),
                       report)
    return result.path, {"steps": result.steps, "loss_before": result.loss_before,
                         "loss_after": result.loss_after, "seconds": result.seconds}


def compress(session: Session, job_id: int, settings: Settings,
             progress: Progress | None = None) -> dict:
    """Compress tuned - base with the job's policy, store the pack as a blob, and create the
    candidate pack row with its lineage; a job that already has its pack returns it."""
    from ..packs import FORMAT_VERSION, compress_checkpoint, load_policy

    job = load_job(session, job_id)
    if is_stopped(job) or job.pack_id is not None:
        return output(job, "compress") or {}
    store = blobs(settings)
    tuned = output(job, "train")
    base = session.get(BaseCheckpoint, job.base_id)
    tmp = scratch(settings, job.id)
    tune_steps = job.params.get("tune_steps") or 0
    share = 0.5 if tune_steps else 0.9
    report = (lambda i, n, _name: progress("compress", share * i / max(1, n))) if progress else None
    tune_info = None
    try:
        policy = load_policy(job.params["policy"], budget=job.params.get("budget"))
        summary = compress_checkpoint(base.uri, tuned_checkpoint(store, settings, job.id, tuned), policy,
                                      tmp / "pack.safetensors", base_fingerprint=base.fingerprint,
                                      progress=report)
        pack_file, size = summary.path, summary.bytes
        if tune_steps:
            pack_file, tune_info = _tune(base, store, job, summary.path, tmp, tune_steps, progress)
            size = pack_file.stat().st_size
        digest = store.put_file(pack_file)  # whole or absent: named by its digest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Take the write lock on the job row first, then look again: two attempts racing past
    # the check above cannot both create a pack.
    session.execute(sa.update(Job).where(Job.id == job.id).values(stage="compress"))
    job = load_job(session, job_id)
    session.refresh(job)
    if job.pack_id is not None:
        return output(job, "compress") or {}
    skill = session.get(Skill, job.skill_id)
    source = session.get(BaseCheckpoint, job.params["source_id"]) if job.params.get("source_id") else None
    parents = [(base, EdgeKind.trained_on)] + ([(source, EdgeKind.distilled_from)] if source else [])
    ratio = summary.dense_fp16_bytes / max(1, size)
    metrics = {"rel_error": summary.rel_error, "dense_fp16_bytes": summary.dense_fp16_bytes,
               "train": tuned.get("metrics", {}), "job_id": job.id}
    if tune_info:
        metrics["tune"] = tune_info
    pack = create_pack(session, skill=skill, base=base, blob_digest=digest, size_bytes=size,
                       format_version=FORMAT_VERSION, method=job.params["method"], parents=parents,
                       source=source, compression_ratio=ratio, codecs=summary.codecs_by_role,
                       metrics=metrics, actor=f"job:{job.id}")
    job.pack_id = pack.id
    out = {"pack_id": pack.id, "blob": digest, "bytes": size,
           "dense_fp16_bytes": summary.dense_fp16_bytes, "ratio": ratio, "rel_error": summary.rel_error,
           **({"tune": tune_info} if tune_info else {})}
    record_output(job, "compress", out)
    return out
