"""Plain-dict views of catalog rows, shared by `--json`, tables and the HTTP API."""

from __future__ import annotations

from .models import (
    BaseCheckpoint,
    EvalResult,
    Experiment,
    ExperimentRun,
    Job,
    ModelState,
    Promotion,
    Skill,
    SkillPack,
)


def base_dict(b: BaseCheckpoint) -> dict:
    return {"id": b.id, "name": b.name, "uri": b.uri, "architecture": b.architecture,
            "fingerprint": b.fingerprint, "tokenizer_fingerprint": b.tokenizer_fingerprint,
            "behaviour": b.behaviour, "created_at": b.created_at}


def skill_dict(s: Skill) -> dict:
    return {"id": s.id, "name": s.name, "description": s.description, "suite": s.suite,
            "data_uri": s.data_uri, "data_sha256": s.data_sha256, "heldout": s.heldout,
            "created_at": s.created_at}


def pack_dict(p: SkillPack) -> dict:
    """Needs skill, base and source loaded (get_pack and list_packs load them)."""
    return {"id": p.id, "name": f"{p.skill.name}@v{p.version}", "skill": p.skill.name,
            "version": p.version, "base": p.base.name, "status": p.status,
            "blob_digest": p.blob_digest, "size_bytes": p.size_bytes,
            "format_version": p.format_version, "compression_ratio": p.compression_ratio,
            "codecs": p.codecs, "method": p.method,
            "source": p.source.name if p.source is not None else None,
            "metrics": p.metrics, "created_at": p.created_at}


def job_dict(j: Job) -> dict:
    return {"id": j.id, "kind": j.kind, "status": j.status, "stage": j.stage,
            "progress": j.progress, "attempts": j.attempts, "error": j.error,
            "celery_task_id": j.celery_task_id, "request": j.request, "steps": j.outputs,
            "owner": {"host": j.owner_host, "pid": j.owner_pid} if j.owner_host else None,
            "base_id": j.base_id,
            "skill_id": j.skill_id, "pack_id": j.pack_id, "created_at": j.created_at,
            "started_at": j.started_at, "updated_at": j.updated_at, "finished_at": j.finished_at}


def promotion_dict(p: Promotion) -> dict:
    return {"id": p.id, "pack_id": p.pack_id, "from": p.from_status, "to": p.to_status,
            "reason": p.reason, "report_ref": p.report_ref, "state_id": p.state_id,
            "actor": p.actor, "at": p.created_at}


def state_dict(s: ModelState) -> dict:
    """Needs members loaded (get_state loads them)."""
    return {"id": s.id, "fingerprint": s.fingerprint, "base_id": s.base_id,
            "parent_id": s.parent_id, "router": s.router, "router_config": s.router_config,
            "router_blob_digest": s.router_blob_digest, "description": s.description,
            "packs": [{"position": m.position, "pack_id": m.pack_id, "scale": m.scale}
                      for m in s.members],
            "created_at": s.created_at}


def eval_dict(r: EvalResult) -> dict:
    return {"id": r.id, "state_id": r.state_id, "skill_id": r.skill_id, "suite": r.suite,
            "suite_version": r.suite_version, "task": r.task, "metric": r.metric,
            "value": r.value, "stderr": r.stderr, "n": r.n, "lm_eval_version": r.lm_eval_version,
            "samples_digest": r.samples_digest, "created_at": r.created_at}


def run_dict(r: ExperimentRun) -> dict:
    return {"id": r.id, "method": r.method, "seed": r.seed, "status": r.status,
            "error": r.error, "result": r.result, "job_id": r.job_id, "state_id": r.state_id,
            "owner": {"host": r.owner_host, "pid": r.owner_pid} if r.owner_host else None,
            "stage": r.stage, "progress": r.progress,
            "started_at": r.started_at, "finished_at": r.finished_at}


def experiment_dict(e: Experiment) -> dict:
    """With its runs (loaded with the experiment)."""
    counts = {}
    for r in e.runs:
        counts[r.status.value] = counts.get(r.status.value, 0) + 1
    return {"id": e.id, "name": e.name, "status": e.status, "base_id": e.base_id,
            "spec_sha256": e.spec_sha256, "spec": e.spec, "run_counts": counts,
            "runs": [run_dict(r) for r in e.runs], "created_at": e.created_at,
            "finished_at": e.finished_at}
