"""What must hold after any fault: every job ended with a reason, nothing lost or duplicated."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import sqlalchemy as sa

from skillstore.catalog import (
    JobStatus,
    PackStatus,
    current_head,
    get_job,
    get_state,
    promotions_of,
)
from skillstore.catalog.models import SkillPack
from skillstore.experiments.catalog import get_run
from skillstore.pipeline import STAGES
from skillstore.zoo.register import register_checkpoint
from tests.workerenv import FAST_OPTIONS, FAST_TRAIN, queue_job


def run_of(env, run_id: int):
    """An experiment run's row as it is now."""
    with env.catalog.session() as s:
        return get_run(s, run_id)


def wait_run(env, run_id: int, until, timeout: float):
    """The experiment run once ``until(run)`` holds; fails with the workers' logs' tails if it
    does not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = run_of(env, run_id)
        if until(run):
            return run
        time.sleep(0.2)
    logs = "".join(p.read_text(errors="replace")[-3000:] for p in env.logs.glob("*.log"))
    raise AssertionError(f"run {run_id} never got there: {run_of(env, run_id).status}\n{logs}")


def variant_base(zoo, folder: Path, k: int) -> Path:
    """A copy of the zoo's target whose weights differ slightly (another base fingerprint)."""
    from safetensors.torch import load_file, save_file

    if folder.exists():
        return folder
    shutil.copytree(zoo.target, folder)
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(n for n in tensors if n.endswith("norm.weight"))[0]
    tensors[name] = tensors[name] * (1.0 + 1e-3 * k)
    save_file(tensors, weights, metadata={"format": "pt"})
    return folder


def add_bases(env, zoo, n: int) -> list[str]:
    """The zoo's base plus n-1 variants, registered in the env's catalog."""
    names = ["tiny-llama"]
    with env.catalog.session() as s:
        for k in range(1, n):
            folder = variant_base(zoo, env.settings.home.parent / f"base{k}", k)
            names.append(register_checkpoint(s, f"tiny-llama-{k}", folder).name)
    return names


def queue(env, skill: str, base: str = "tiny-llama", train: dict | None = None, **kw) -> int:
    with env.catalog.session() as s:
        return queue_job(s, env.settings, skill, base, sft=train or FAST_TRAIN,
                                  **FAST_OPTIONS, **kw)


def assert_nothing_lost(env, job_ids: list[int], context: str) -> dict:
    """Every job succeeded or failed with a reason; one pack per succeeded job and one blob per
    pack, each verified; no staged write left; every promotion audited with its report; and the
    head of each base holds every pack promoted on it. Returns the figures."""
    blobs = env.catalog.blobs
    with env.catalog.session() as s:
        jobs = [get_job(s, j) for j in job_ids]
        for job in jobs:
            assert job.status in (JobStatus.succeeded, JobStatus.failed), \
                f"{context}: job {job.id} ended {job.status.value} at {job.stage}"
            if job.status == JobStatus.failed:
                assert job.error and job.stage, f"{context}: job {job.id} failed without a reason"
            else:
                assert job.pack_id is not None, f"{context}: job {job.id} succeeded without a pack"
                assert job.progress == 1.0 and set(job.outputs) == set(STAGES), \
                    f"{context}: job {job.id} succeeded with outputs {sorted(job.outputs)}"
        packs = list(s.scalars(sa.select(SkillPack).order_by(SkillPack.id)))
        digests = [p.blob_digest for p in packs]
        assert len(packs) == len(set(digests)), f"{context}: packs share blobs: {digests}"
        made_by = [p.metrics.get("job_id") for p in packs]
        assert len(made_by) == len(set(made_by)), f"{context}: one job made two packs: {made_by}"
        assert set(made_by) == {j.id for j in jobs if j.pack_id is not None}, context
        for digest in digests:
            blobs.verify(digest)
        promoted: dict[int, set[int]] = {}
        for pack in packs:
            audit = promotions_of(s, pack.id)
            steps = [a.to_status for a in audit]
            if pack.status == PackStatus.promoted:
                assert steps == [PackStatus.candidate, PackStatus.promoted], \
                    f"{context}: pack {pack.id} audit {steps}"
                assert audit[-1].report_ref, f"{context}: promotion of pack {pack.id} has no report"
                blobs.verify(audit[-1].report_ref)
                promoted.setdefault(pack.base_id, set()).add(pack.id)
            else:
                assert steps[0] == PackStatus.candidate and steps[-1] == pack.status, \
                    f"{context}: pack {pack.id} is {pack.status.value} but its audit says {steps}"
        for base_id, ids in promoted.items():
            members = {m.pack_id for m in get_state(s, current_head(s, base_id).state_id).members}
            assert ids <= members, f"{context}: base {base_id} head lost packs {ids - members}"
    stored = list(blobs.iter_blobs())
    for info in stored:
        blobs.verify(info.digest)
    staged = [path for path, _ in blobs.iter_staging()]
    assert not staged, f"{context}: staged writes left behind: {staged}"
    return {"jobs": len(jobs), "succeeded": sum(j.status == JobStatus.succeeded for j in jobs),
            "failed": sum(j.status == JobStatus.failed for j in jobs), "packs": len(packs),
            "pack_blobs": len(set(digests)), "stored_blobs": len(stored),
            "promoted": sum(len(v) for v in promoted.values())}
