"""A worker SIGKILLed while an experiment run goes on, on the embedded SQL broker, which never
hands a taken message back: the next worker on the host finds the run's dead owner, sends the
run again, and it finishes once."""

from __future__ import annotations

import socket
import time

import psutil

from skillstore.catalog import JobStatus
from skillstore.catalog.serialize import run_dict
from skillstore.experiments import parse_spec
from skillstore.experiments.catalog import get_run
from skillstore.experiments.queue import queue_experiment
from skillstore.jobqueue import stop_worker
from tests.workerenv import make_env

from .checks import run_of, wait_run

# long enough that the kill lands while the run trains
TRAIN = {"max_steps": 400, "batch_size": 8, "eval_every": 400}


def test_a_run_whose_worker_is_killed_is_sent_again_and_finishes_once(tmp_path, tiny_zoo,
                                                                       figures):
    env = make_env(tmp_path, tiny_zoo, skills=("reverse",))
    spec = parse_spec({"name": "killed", "base": "tiny-llama", "skills": [{"name": "reverse"}],
                       "methods": {"naive_ft": None}, "seeds": [0], "eval_limit": 10,
                       "train": TRAIN})
    with env.catalog.session() as s:
        experiment = queue_experiment(s, env.settings, spec, blobs=env.catalog.blobs)
        run_id = experiment.runs[0].id
    with env.worker() as worker:
        run = wait_run(env, run_id, lambda r: r.status == JobStatus.running, timeout=120)
        time.sleep(1.0)  # into the training
        stop_worker(worker, kill=True)
    run = run_of(env, run_id)
    assert run.status == JobStatus.running, "the kill must land while the run goes on"
    assert run.owner_pid == worker.pid and not psutil.pid_exists(worker.pid)

    with env.worker():
        run = wait_run(env, run_id, lambda r: JobStatus(r.status).finished, timeout=300)
    assert (run.status, run.error) == (JobStatus.succeeded, None)
    assert run.result["accuracy_matrix"] and run.owner_pid != worker.pid
    with env.catalog.session() as s:  # `experiment show --json` names the worker that ran it
        assert run_dict(get_run(s, run_id))["owner"] == {"host": socket.gethostname(),
                                                         "pid": run.owner_pid}
    logs = "".join(p.read_text(errors="replace") for p in env.logs.glob("*.log"))
    assert f"sent experiment run {run_id} again: its worker is gone" in logs
    figures.update(run=run_id, killed_pid=worker.pid)
    env.catalog.close()
