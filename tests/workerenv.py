"""A real worker environment for tests: a tiny zoo, a registered workspace, worker processes.

Shared by every test folder that runs real Celery workers (workers, api, scaleout, reliability);
the pytest fixtures built on it live in the root conftest.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from skillstore.catalog import Catalog, JobStatus, get_job, init_workspace
from skillstore.jobqueue import spawn_worker, stop_worker
from skillstore.settings import Settings
from skillstore.zoo.register import register_zoo

PG_ROOT = "postgresql+psycopg://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379"
# Fast settings: a few optimiser steps, five eval prompts, a gate that judges but never blocks.
FAST_TRAIN = {"max_steps": 5, "batch_size": 8, "eval_every": 5}
# (min_gain -1 and tolerances 1: every confidence bound passes, whatever five prompts say.)
FAST_OPTIONS = {"eval_limit": 5,
                "gate": {"min_gain": -1.0, "max_drop": 1.0, "max_general_drop": 1.0,
                         "min_fidelity": 0.0}}


def queue_job(session, settings, skill: str, base: str = "tiny-llama", *, send: bool = True,
              **fields) -> int:
    """Queue a learning job the way `skillstore learn` does: build the request, then queue it."""
    from skillstore.pipeline import LearnRequest, queue

    return queue(session, settings, LearnRequest.build(skill, base, **fields), send=send).id


def build_tiny_zoo(folder: Path):
    """The smallest zoo that is still the real thing: a 2-layer Llama and a 2-layer GPT-2."""
    from skillstore.training.sft import SFTConfig
    from skillstore.zoo import ModelSpec, ZooRecipe, build_zoo

    spec = ModelSpec(hidden=32, layers=2, heads=2, intermediate=64, max_positions=64,
                     train=SFTConfig(lr=3e-3, max_steps=10, batch_size=16, eval_every=5))
    recipe = ZooRecipe(n_train=40, n_eval=8, target=spec, source=spec)
    return build_zoo(folder, recipe=recipe)


@dataclass
class Env:
    settings: Settings
    catalog: Catalog
    logs: Path

    @contextmanager
    def worker(self, concurrency: int = 1) -> Iterator:
        """A real worker process on both queues, always stopped (its whole group) at the end."""
        log = self.logs / f"worker-{uuid.uuid4().hex[:6]}.log"
        proc = spawn_worker(self.settings, concurrency=concurrency, log_path=log,
                            hostname=f"w{uuid.uuid4().hex[:6]}@%h")
        try:
            yield proc
        finally:
            stop_worker(proc)

    def job(self, job_id: int):
        with self.catalog.session() as s:
            return get_job(s, job_id)

    def wait(self, job_id: int, until=lambda job: JobStatus(job.status).finished,
             timeout: float = 180, poll: float = 0.2):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if until(job):
                return job
            time.sleep(poll)
        tail = "".join(p.read_text()[-3000:] for p in self.logs.glob("*.log"))
        raise AssertionError(f"job {job_id} never got there: {self.job(job_id).status} "
                             f"{self.job(job_id).stage}\n{tail}")


def make_env(tmp_path: Path, zoo, *, database_url: str = "", broker_url: str = "",
             result_backend: str = "", skills=("reverse", "sort")) -> Env:
    settings = Settings(home=tmp_path / "ws", database_url=database_url, broker_url=broker_url,
                        result_backend=result_backend)
    catalog = init_workspace(settings)
    with catalog.session() as s:
        register_zoo(s, catalog.blobs, zoo, skills=list(skills))
    logs = tmp_path / "logs"
    logs.mkdir()
    return Env(settings, catalog, logs)
