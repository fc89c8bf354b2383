"""A learning job on the TRL backend through a real worker, every step, on the tiny zoo."""

from __future__ import annotations

import pytest

from skillstore.catalog import JobStatus, PackStatus, promotions_of
from skillstore.catalog.models import SkillPack
from skillstore.gate.decision import FAILED, INCONCLUSIVE, PASSED

from .conftest import FAST_OPTIONS, FAST_TRAIN, queue_job

STEPS = ("prepare", "train", "compress", "evaluate", "gate")


@pytest.mark.slow
def test_a_trl_job_runs_every_step_and_gets_a_recorded_verdict(sqlite_env):
    trl = pytest.importorskip("trl")
    env = sqlite_env
    with env.catalog.session() as s:
        # On the tiny zoo `auto` would pick the built-in loop: only the request makes it TRL.
        job_id = queue_job(s, env.settings, "reverse", backend="trl", sft=FAST_TRAIN,
                           **FAST_OPTIONS)
    with env.worker():
        job = env.wait(job_id, timeout=300)
    assert job.status == JobStatus.succeeded, (job.stage, job.error)
    assert job.request["backend"] == "trl"
    assert set(job.outputs) == set(STEPS) and job.progress == 1.0

    trained = job.outputs["train"]["metrics"]
    assert trained["backend"] == {"requested": "trl", "chosen": "trl", "reason": "asked for"}
    assert trained["trl_version"] == trl.__version__
    assert trained["steps"] == FAST_TRAIN["max_steps"]
    assert trained["memory"]["backend"] == "trl"
    # What was evaluated is what TRL trained.
    assert job.outputs["evaluate"]["finetune"]["fingerprint"] == job.outputs["train"]["fingerprint"]

    gate = job.outputs["gate"]
    decision = gate["decision"]
    assert gate["verdict"] == decision["verdict"] in ("promoted", "rejected", "inconclusive")
    assert gate["pack_id"] == job.pack_id
    assert decision["checks"] and all(c["status"] in (PASSED, FAILED, INCONCLUSIVE)
                                      and c["n"] > 0 for c in decision["checks"])
    with env.catalog.session() as s:
        pack = s.get(SkillPack, job.pack_id)
        assert pack.status == (PackStatus.promoted if decision["promote"]
                               else PackStatus.rejected)
        env.catalog.blobs.verify(pack.blob_digest)
        audit = promotions_of(s, pack.id)
        assert [a.to_status for a in audit] == [PackStatus.candidate, pack.status]
        # The audit row carries the verdict and the report of every check beside it.
        assert audit[-1].reason.startswith(decision["verdict"])
        env.catalog.blobs.verify(audit[-1].report_ref)
