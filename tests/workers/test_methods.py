"""Every learning method through a real worker: the request's trainer settings reach the trainer,
and a job on the TRL backend runs every step to a recorded verdict."""

from __future__ import annotations

import pytest
import trl

from skillstore.catalog import JobStatus, PackStatus, promotions_of
from skillstore.catalog.models import SkillPack
from skillstore.gate.decision import FAILED, INCONCLUSIVE, PASSED

from .conftest import FAST_OPTIONS, FAST_TRAIN, queue_job

# Unusual values, so that a default cannot pass for them.
ASKED = {"max_steps": 3, "lr": 0.0021, "batch_size": 4, "seed": 7}
# The tiny zoo's source is barely trained (its greedy answer is often empty): sample it and keep
# its answers unverified, so that every method has rows to learn from.
SOURCE = {"source": "src-gpt2", "verify": False, "distill_prompts": 16,
          "generation": {"do_sample": True, "samples": 4, "temperature": 1.5}}
METHODS = {"sft": {}, "distill": SOURCE, "dpo": {**SOURCE, "dpo": {"samples": 2}}}


def _ran_with(config: dict) -> dict:
    return {k: config[k] for k in ASKED}


STEPS = ("prepare", "train", "compress", "evaluate", "gate")


@pytest.mark.slow
def test_each_method_trains_with_the_settings_it_was_asked_for(sqlite_env):
    env = sqlite_env
    with env.catalog.session() as s:
        jobs = {method: queue_job(s, env.settings, "reverse", method=method, **ASKED,
                                  sft={"eval_every": 50}, **extra, **FAST_OPTIONS)
                for method, extra in METHODS.items()}
        # On the tiny zoo `auto` would pick the built-in loop: only the request makes it TRL.
        trl_job = queue_job(s, env.settings, "reverse", backend="trl", sft=FAST_TRAIN,
                            **FAST_OPTIONS)
    with env.worker():
        done = {method: env.wait(job_id, timeout=300) for method, job_id in jobs.items()}
        on_trl = env.wait(trl_job, timeout=300)
    check_trl_job(env, on_trl)
    for method, job in done.items():
        assert job.status == JobStatus.succeeded, f"{method}: {job.stage}: {job.error}"
        assert job.request["method"] == method
        trained = job.outputs["train"]["metrics"]
        assert trained["method"] == method
        # The supervised stage every method runs: exactly the asked steps, lr, batch and seed.
        assert trained["steps"] == ASKED["max_steps"], method
        assert _ran_with(trained["config"]) == ASKED, method

    distill = done["distill"].outputs["train"]["metrics"]["distill"]
    assert distill["n_prompts"] == METHODS["distill"]["distill_prompts"]
    assert done["distill"].outputs["prepare"]["n_train"] == METHODS["distill"]["distill_prompts"]

    # DPO runs after SFT, with the same common settings, on pairs whose rejected side comes
    # from answers the check refused; the synthetic fallback stays off unless asked for.
    dpo = done["dpo"].outputs["train"]["metrics"]["dpo"]
    assert dpo["steps"] == ASKED["max_steps"]
    assert _ran_with(dpo["config"]) == ASKED
    assert dpo["pairs"]["synthetic"] == 0 and dpo["n_pairs"] > 0
    assert dpo["n_pairs"] == sum(dpo["pairs"][k] for k in ("source", "greedy", "sampled"))


def check_trl_job(env, job) -> None:
    """A job on the TRL backend ran all five steps, recorded the backend and TRL's version,
    evaluated what TRL trained, and got a verdict whose checks and audit are stored."""
    assert job.status == JobStatus.succeeded, (job.stage, job.error)
    assert job.request["backend"] == "trl"
    assert set(job.outputs) == set(STEPS) and job.progress == 1.0
    trained = job.outputs["train"]["metrics"]
    assert trained["backend"] == {"requested": "trl", "chosen": "trl", "reason": "asked for"}
    assert trained["trl_version"] == trl.__version__
    assert trained["steps"] == FAST_TRAIN["max_steps"]
    assert trained["memory"]["backend"] == "trl"
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
        assert audit[-1].reason.startswith(decision["verdict"])
        env.catalog.blobs.verify(audit[-1].report_ref)
