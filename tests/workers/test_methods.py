"""Every learning method through a real worker: the request's trainer settings reach the trainer."""

from __future__ import annotations

import pytest

from skillstore.catalog import JobStatus

from .conftest import FAST_OPTIONS, queue_job

# Unusual values, so that a default cannot pass for them.
ASKED = {"max_steps": 3, "lr": 0.0021, "batch_size": 4, "seed": 7}
# The tiny zoo's source is barely trained (its greedy answer is often empty): sample it and keep
# its answers unverified, so that every method has rows to learn from.
SOURCE = {"source": "src-gpt2", "verify": False, "distill_prompts": 16,
          "generation": {"do_sample": True, "samples": 4, "temperature": 1.5}}
METHODS = {"sft": {}, "distill": SOURCE, "dpo": {**SOURCE, "dpo": {"samples": 2}}}


def _ran_with(config: dict) -> dict:
    return {k: config[k] for k in ASKED}


@pytest.mark.slow
def test_each_method_trains_with_the_settings_it_was_asked_for(sqlite_env):
    env = sqlite_env
    with env.catalog.session() as s:
        jobs = {method: queue_job(s, env.settings, "reverse", method=method, **ASKED,
                                  sft={"eval_every": 50}, **extra, **FAST_OPTIONS)
                for method, extra in METHODS.items()}
    with env.worker():
        done = {method: env.wait(job_id, timeout=300) for method, job_id in jobs.items()}
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
