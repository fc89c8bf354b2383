"""The five steps of a learning job, each a thin call into one library function."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..atomic import publish_dir
from ..catalog import EdgeKind, create_pack, get_base, get_job, get_pack
from ..catalog.models import BaseCheckpoint, Job, Skill
from ..catalog.schema import PackStatus
from ..errors import ConfigError, StaleEvaluationError
from ..evaluation.suites import general_suite, skill_suite
from ..gate import CandidateEvaluation, evaluate_candidate, gate_pack, head_of, recorded_judge
from ..gate.reference import evaluate_base, finetune_record, finetune_score, record_fidelity
from ..models import load_causal_lm
from ..packs import FORMAT_VERSION, compress_checkpoint, load_policy
from ..packs.calibration import CALIBRATION_ROWS, skill_calibration
from ..packs.tune import TuneConfig, tune_pack
from ..settings import Settings
from ..skilldata import read_rows, rows_blob, skill_rows
from ..states import load_view
from ..training.launch import launch_training
from ..training.run import GraftSpec, TrainJob, run_training
from .lifecycle import (
    Progress,
    finish,
    forget_output,
    is_stopped,
    output,
    record_output,
    send_chain,
)
from .request import LearnRequest, check_start_state, request_of
from .workdir import blobs, scaled, scratch, work_dir

EVAL_BATCH = 32
# The candidate routes by the learned router, retrained for its pack set on every job.
CANDIDATE_ROUTER = "learned"


def prepare(session: Session, job_id: int, settings: Settings,
            progress: Progress | None = None) -> dict:
    """Validate the skill's rows and store its train and validation splits as blobs.

    For distill and dpo the source answers the first ``distill_prompts`` training prompts in
    the train step (it runs a model, so it belongs on the GPU queue).
    """
    job = get_job(session, job_id)
    if is_stopped(job) or output(job, "prepare"):
        return output(job, "prepare") or {}
    request = request_of(job)
    store = blobs(settings)
    train, val = skill_rows(store, session.get(Skill, job.skill_id))
    if request.method != "sft" and request.distill_prompts:
        train = train[:request.distill_prompts]
    out = {"train": rows_blob(store, train), "validation": rows_blob(store, val),
           "n_train": len(train), "n_validation": len(val)}
    return record_output(session, job, "prepare", out)


def _graft_specs(session: Session, job: Job, request: LearnRequest, store, settings: Settings):
    """The current state's packs, by local path and scale, when the job starts from it."""
    state = (check_start_state(session, session.get(BaseCheckpoint, job.base_id))
             if request.start_from == "current" else None)
    if state is None:
        return ()
    view = load_view(session, state)
    cache = work_dir(settings, "cache")
    return tuple(GraftSpec(path=store.local_path(m.blob_digest, cache), scale=m.scale)
                 for m in view.members)


def train_job(session: Session, job: Job, settings: Settings, store=None):
    """The library's TrainJob for this learning job: its request, its prepared rows (from
    ``store``, else the settings' blob store), its base."""
    request, prep = request_of(job), output(job, "prepare")
    store = store or blobs(settings)
    base = session.get(BaseCheckpoint, job.base_id)
    source = get_base(session, request.source) if request.source else None
    return TrainJob(
        base_dir=Path(base.uri), train_path=store.local_path(prep["train"]),
        val_path=store.local_path(prep["validation"]),
        out_dir=work_dir(settings, "checkpoints"), content_addressed=True,
        graft=_graft_specs(session, job, request, store, settings),
        source_dir=Path(source.uri) if source else None,
        skill=session.get(Skill, job.skill_id).name, verify=request.verify, sft=request.sft,
        generation=request.generation, dpo=request.dpo, backend=request.backend,
        gradient_checkpointing=request.gradient_checkpointing)


def train(session: Session, job_id: int, settings: Settings,
          progress: Progress | None = None) -> dict:
    """Fine-tune with the request's method through `run_training` (under ``accelerate launch``
    when the settings name an accelerate config); the checkpoint lands in a folder named by its
    weights' fingerprint, so a rerun after a crash never sees half a model."""
    job = get_job(session, job_id)
    done = output(job, "train")
    if is_stopped(job) or (done and Path(done["tuned_dir"], "config.json").is_file()):
        return done or {}
    started, store = time.time(), blobs(settings)
    method, request = request_of(job).method, train_job(session, job, settings, store)
    report = scaled(progress, "train", 0.0, 0.95)
    if settings.accelerate_config is None:
        result = run_training(method, request, report)
    else:  # the same run_training, in the ranks of `accelerate launch` (training.launch)
        result = launch_training(method, request, settings.accelerate_config, report,
                                 scratch_dir=scratch(settings, job.id))
    out = {"tuned_dir": result.pop("out_dir"), "fingerprint": result.pop("fingerprint"),
           "started": started, "finished": time.time(), "metrics": result}
    if not store.local:  # compress may run on another host: hand the checkpoint over as blobs
        final = Path(out["tuned_dir"])
        out["tuned_blobs"] = {f.name: store.put_file(f) for f in sorted(final.iterdir())
                              if f.is_file()}
    return record_output(session, job, "train", out)


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


def _tune(base: BaseCheckpoint, store, job: Job, request: LearnRequest, pack_file: Path,
          tmp: Path, finetune: Path, progress: Progress | None) -> tuple[Path, dict]:
    """Tune the fresh pack's float payload on the job's training rows (``tune_steps``), toward
    the fine-tune in ``finetune`` or the rows' answers (``tune_objective``)."""
    rows = read_rows(store, output(job, "prepare")["train"])
    model, tok = load_causal_lm(base.uri)
    teacher = (load_causal_lm(finetune, fingerprint=False)[0]
               if request.tune_objective == "teacher" else None)
    report = ((lambda i, n, _loss: progress("compress", 0.5 + 0.4 * i / max(1, n)))
              if progress else None)
    result = tune_pack(pack_file, model, tok, rows, tmp / "tuned.safetensors",
                       TuneConfig(steps=request.tune_steps), report, teacher=teacher)
    return result.path, {"steps": result.steps, "objective": result.objective,
                         "loss_before": result.loss_before, "loss_after": result.loss_after,
                         "seconds": result.seconds}


def _calibration(base: BaseCheckpoint, store, job: Job) -> tuple[object, dict]:
    """GPTQ's statistics from the job's first ``CALIBRATION_ROWS`` training rows through the
    base, collected layer by layer as compression reads the matrices; and what to record."""
    rows = read_rows(store, output(job, "prepare")["train"])[:CALIBRATION_ROWS]
    if not rows:
        raise ConfigError(f"Job {job.id} asks for GPTQ (policy gptq=true) but its skill has no "
                          "training rows to calibrate on; add rows or set gptq to false.")
    model, tok = load_causal_lm(base.uri)
    stats = skill_calibration(model, tok, rows)
    return stats, {"rows": len(rows), "tokens": stats.tokens}


def compress(session: Session, job_id: int, settings: Settings,
             progress: Progress | None = None) -> dict:
    """Compress tuned - base with the job's policy, store the pack as a blob, and create the
    candidate pack row with its lineage; a job that already has its pack returns it."""
    job = get_job(session, job_id)
    if is_stopped(job) or job.pack_id is not None:
        return output(job, "compress") or {}
    request, store = request_of(job), blobs(settings)
    tuned = output(job, "train")
    base = session.get(BaseCheckpoint, job.base_id)
    tmp = scratch(settings, job.id)
    share = 0.5 if request.tune_steps else 0.9
    report = (lambda i, n, _name: progress("compress", share * i / max(1, n))) if progress else None
    tune_info = gptq_info = None
    try:
        policy = load_policy(request.policy, budget=request.budget)
        calibration, gptq_info = (_calibration(base, store, job) if policy.gptq
                                  else (None, None))
        finetune = tuned_checkpoint(store, settings, job.id, tuned)
        summary = compress_checkpoint(base.uri, finetune, policy, tmp / "pack.safetensors",
                                      base_fingerprint=base.fingerprint, progress=report,
                                      calibration=calibration)
        del calibration
        if gptq_info:
            gptq_info["matrices"] = summary.gptq_matrices
        pack_file, size = summary.path, summary.bytes
        if request.tune_steps:
            pack_file, tune_info = _tune(base, store, job, request, summary.path, tmp,
                                         finetune, progress)
            size = pack_file.stat().st_size
        digest = store.put_file(pack_file)  # whole or absent: named by its digest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Take the write lock on the job row first, then look again: two attempts racing past
    # the check above cannot both create a pack.
    session.execute(sa.update(Job).where(Job.id == job.id).values(stage="compress"))
    job = get_job(session, job_id)
    session.refresh(job)
    if job.pack_id is not None:
        return output(job, "compress") or {}
    skill = session.get(Skill, job.skill_id)
    source = get_base(session, request.source) if request.source else None
    parents = [(base, EdgeKind.trained_on)] + (
        [(source, EdgeKind.distilled_from)] if source else [])
    metrics = {"rel_error": summary.rel_error, "train": tuned.get("metrics", {}),
               "job_id": job.id}
    if tune_info:
        metrics["tune"] = tune_info
    if gptq_info:
        metrics["gptq"] = gptq_info
    pack = create_pack(session, skill=skill, base=base, blob_digest=digest, size_bytes=size,
                       format_version=FORMAT_VERSION, method=request.method, parents=parents,
                       source=source, dense_fp16_bytes=summary.dense_fp16_bytes,
                       codecs=summary.codecs_by_role, metrics=metrics, actor=f"job:{job.id}")
    job.pack_id = pack.id
    out = {"pack_id": pack.id, "blob": digest, "bytes": size,
           "dense_fp16_bytes": summary.dense_fp16_bytes, "ratio": pack.compression_ratio,
           "rel_error": summary.rel_error, **({"tune": tune_info} if tune_info else {}),
           **({"gptq": gptq_info} if gptq_info else {})}
    return record_output(session, job, "compress", out)


def evaluate(session: Session, job_id: int, settings: Settings,
             progress: Progress | None = None) -> dict:
    """Score the candidate state (the head's packs + this job's pack) against the head on the
    same suites, with the eval cache, and record the scores and the head they were read at."""
    job = get_job(session, job_id)
    if is_stopped(job) or output(job, "evaluate"):
        return output(job, "evaluate") or {}
    request, store = request_of(job), blobs(settings)
    pack = get_pack(session, job.pack_id)
    base = session.get(BaseCheckpoint, pack.base_id)
    new_suite = skill_suite(session.get(Skill, pack.skill_id))
    general = general_suite(request.general_suite, beside=[new_suite], base=base)
    current, version = head_of(session, base)
    model, tokenizer = load_causal_lm(base.uri)
    cache = work_dir(settings, "cache")
    evaluation = evaluate_candidate(
        session, store, model, tokenizer, pack, current, version, general=general,
        router=CANDIDATE_ROUTER, batch_size=EVAL_BATCH, limit=request.eval_limit,
        cache_dir=cache,
        progress=(lambda done: progress("evaluate", 0.8 * done)) if progress else None)
    # The plain base on the new skill (forward transfer), then the uncompressed fine-tune on
    # it (fidelity), each measured once: the eval cache and the pack's metrics keep them.
    evaluate_base(session, store, model, tokenizer, base, [new_suite], limit=request.eval_limit,
                  batch_size=EVAL_BATCH, cache_dir=cache)
    del model
    trained = output(job, "train")
    finetune = finetune_record(session, store, pack,
                               tuned_checkpoint(store, settings, job.id, trained), new_suite,
                               fingerprint=trained.get("fingerprint"), limit=request.eval_limit,
                               batch_size=EVAL_BATCH)
    record_fidelity(session, pack, finetune, evaluation.after[evaluation.new_skill])
    return record_output(session, job, "evaluate",
                         {**evaluation.as_json(), "finetune": finetune})


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
    outcome = None
    if pack.status == PackStatus.candidate:
        recorded = output(job, "evaluate")
        try:
            if recorded is None:  # a redelivered gate after its evaluation was forgotten
                raise StaleEvaluationError(f"Job {job.id} has no evaluation to decide on.")
            store = blobs(settings)
            judge = recorded_judge(store, pack, CandidateEvaluation.from_json(recorded),
                                   request_of(job).gate,
                                   finetune=finetune_score(store, recorded.get("finetune")))
            outcome = gate_pack(session, pack, judge, actor=f"job:{job.id}")
        except StaleEvaluationError:
            session.rollback()
            # The head moved; if it was another attempt of this very job deciding this pack
            # (a chain resumed beside a redelivered one), nothing is stale: finish with its
            # verdict below. Otherwise the scores are stale: evaluate again on the gpu queue.
            job, pack = get_job(session, job_id, lock=True), get_pack(session, pack.id)
            if is_stopped(job) or output(job, "gate"):
                return output(job, "gate") or {}
            if pack.status == PackStatus.candidate:
                forget_output(session, job, "evaluate")
                session.commit()
                send_chain(session, settings, job, "evaluate")
                return {"sent_back_to": "evaluate"}
    if outcome is not None:
        verdict, reasons = outcome.decision.verdict, outcome.decision.reasons
        decided = {"decision": outcome.decision.as_dict()}
    else:
        verdict, reasons, decided = pack.status.value, ["decided before this attempt"], {}
    job = get_job(session, job_id)
    out = record_output(session, job, "gate", {"verdict": verdict, "reasons": reasons,
                                               "pack_id": pack.id, **decided})
    finish(session, job, pack_id=pack.id)
    return out
