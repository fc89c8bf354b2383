"""Choosing the backend: `auto` by size and device, the choice recorded with the run, and
`--backend trl` refused with one line where TRL is not installed."""

from __future__ import annotations

import sys

import pytest

from skillstore.curriculum.validate import write_jsonl
from skillstore.errors import ConfigError, RequestError
from skillstore.models import load_causal_lm
from skillstore.pipeline.request import LearnRequest, parse_request
from skillstore.training.backends import AUTO_CPU_MAX_BUILTIN_PARAMS, choose_backend, get_backend
from skillstore.training.dpo import DPOConfig
from skillstore.training.run import TrainJob, run_training
from skillstore.training.sft import SFTConfig
from tests.composition.tinymodel import save, tiny_llama, tiny_tokenizer
from tests.conftest import run_cli

ROWS = [{"prompt": f"add: {a}+{b} =", "answer": str(a + b)} for a, b in ((1, 2), (3, 4))]


@pytest.fixture
def no_trl(monkeypatch):
    """TRL as if it were not installed: `import trl` raises ImportError."""
    monkeypatch.setitem(sys.modules, "trl", None)


@pytest.fixture(scope="module")
def tiny_job(tmp_path_factory):
    root = tmp_path_factory.mktemp("choice")
    tok = tiny_tokenizer()
    return {"base_dir": save(tiny_llama(tok), tok, root / "base"),
            "train_path": write_jsonl(root / "train.jsonl", ROWS), "root": root}


def test_auto_picks_builtin_for_a_small_model_on_the_cpu_and_trl_otherwise():
    small, big = AUTO_CPU_MAX_BUILTIN_PARAMS - 1, AUTO_CPU_MAX_BUILTIN_PARAMS
    assert choose_backend("auto", small, "cpu").chosen == "builtin"
    assert choose_backend("auto", big, "cpu").chosen == "trl"
    assert choose_backend("auto", small, "cuda").chosen == "trl"
    # A named backend is kept whatever the size; a typo is the registry's "did you mean".
    assert choose_backend("builtin", big, "cuda").chosen == "builtin"
    with pytest.raises(ConfigError, match="Did you mean 'trl'"):
        choose_backend("tlr", small, "cpu")


def test_auto_falls_back_to_builtin_without_trl_and_says_why(no_trl):
    choice = choose_backend("auto", AUTO_CPU_MAX_BUILTIN_PARAMS, "cpu")
    assert choice.chosen == "builtin" and "not installed" in choice.reason


def test_trl_asked_for_without_trl_is_one_line_before_anything_loads(no_trl, tiny_job):
    with pytest.raises(ConfigError, match="TRL is not installed") as err:
        get_backend("trl")
    assert "\n" not in str(err.value) and "--backend builtin" in str(err.value)
    job = TrainJob(base_dir=tiny_job["base_dir"], train_path=tiny_job["train_path"],
                   out_dir=tiny_job["root"] / "refused", backend="trl")
    calls = []
    with pytest.raises(ConfigError, match="TRL is not installed"):
        run_training("sft", job, progress=lambda s, f: calls.append(s))
    assert not calls and not job.out_dir.exists()


def test_learn_backend_trl_without_trl_is_one_error_line(no_trl, workspace, capsys):
    assert run_cli(capsys, "init")[0] == 0
    code, out, err = run_cli(capsys, "learn", "arith", "--base", "tiny", "--backend", "trl")
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "TRL is not installed" in err and "Traceback" not in out + err


def test_the_request_takes_a_validated_backend_and_keeps_it():
    request = LearnRequest.build("arith", "tiny", backend="trl", gradient_checkpointing=True)
    stored = parse_request(request.model_dump(mode="json"))
    assert stored.backend == "trl" and stored.gradient_checkpointing
    assert LearnRequest.build("arith", "tiny").backend == "auto"
    with pytest.raises(RequestError, match="backend") as err:
        LearnRequest.build("arith", "tiny", backend="tlr")
    assert err.value.field == "backend"


def test_run_training_records_the_choice_and_the_memory_plan(tiny_job):
    job = TrainJob(base_dir=tiny_job["base_dir"], train_path=tiny_job["train_path"],
                   out_dir=tiny_job["root"] / "auto",
                   sft=SFTConfig(max_steps=2, batch_size=2, eval_every=2))
    out = run_training("sft", job)
    assert out["backend"]["requested"] == "auto" and out["backend"]["chosen"] == "builtin"
    assert "parameters on the CPU" in out["backend"]["reason"]
    memory = out["memory"]
    assert memory["backend"] == "builtin"
    assert memory["total_bytes"] > memory["parts_bytes"]["weights"] > 0
    assert memory["measured_peak_bytes"] > 0 and memory["measured_by"]


def test_a_trl_job_runs_sft_then_dpo_and_saves_a_plain_checkpoint(tiny_job):
    job = TrainJob(base_dir=tiny_job["base_dir"], train_path=tiny_job["train_path"],
                   out_dir=tiny_job["root"] / "trl", backend="trl",
                   sft=SFTConfig(lr=1e-2, max_steps=2, batch_size=2, eval_every=2),
                   dpo=DPOConfig(lr=1e-2, max_steps=2, batch_size=2, samples=0,
                                 synthetic_rejected=True))
    out = run_training("dpo", job)
    assert out["backend"] == {"requested": "trl", "chosen": "trl", "reason": "asked for"}
    assert out["dpo"]["backend"] == "trl" and out["dpo"]["steps"] == 2
    # The DPO stage holds the reference and two sequences per row: it is the plan's peak.
    assert out["memory"]["stage"] == "dpo" and "reference" in out["memory"]["parts_bytes"]
    model, _ = load_causal_lm(out["out_dir"], fingerprint=False)
    assert type(model).__name__ == "LlamaForCausalLM"
