"""Fixtures and helpers for the tests of training under `accelerate launch` (a pytest plugin:
tests/conftest.py loads it, so tests/learning and tests/reliability share one tiny world)."""

from __future__ import annotations

import time

import psutil
import pytest

from skillstore.curriculum.validate import write_jsonl
from skillstore.training.run import TrainJob
from skillstore.training.sft import SFTConfig
from tests.composition.tinymodel import save, tiny_llama, tiny_tokenizer

ROWS = [{"prompt": f"add: {a}+{b} =", "answer": str(a + b)}
        for a, b in ((1, 2), (3, 4), (2, 5), (6, 1))]
ONE_PROCESS = "distributed_type: 'NO'\nnum_processes: 1\nuse_cpu: true\nmixed_precision: 'no'\n"
FOUR_GPUS = ("distributed_type: MULTI_GPU\nnum_processes: 4\nnum_machines: 1\n"
             "mixed_precision: bf16\n")
#: Long enough that a rank is still training when the test kills something.
FOREVER = SFTConfig(max_steps=100_000, batch_size=2, eval_every=100_000)


@pytest.fixture(scope="module")
def launch_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch")
    tok = tiny_tokenizer()
    config = root / "one.yaml"
    config.write_text(ONE_PROCESS)
    return {"base": save(tiny_llama(tok), tok, root / "base"),
            "train": write_jsonl(root / "train.jsonl", ROWS), "root": root, "config": config}


@pytest.fixture
def one_thread_in_children(monkeypatch):
    """The ranks compute as this test process does (one thread), so their weights match."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def job_for(world, name: str, sft: SFTConfig | None = None, **kw) -> TrainJob:
    return TrainJob(base_dir=world["base"], train_path=world["train"],
                    out_dir=world["root"] / name, content_addressed=True,
                    sft=sft or SFTConfig(max_steps=4, batch_size=2, eval_every=2), **kw)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_gone(pids: list[int], timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def ranks_of(pid: int) -> list[psutil.Process]:
    """The training ranks under ``pid`` (not the accelerate launcher that started them)."""
    return [p for p in psutil.Process(pid).children(recursive=True)
            if "skillstore.training.child" in (line := " ".join(p.cmdline()))
            and "accelerate" not in line]
