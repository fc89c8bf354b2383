"""Training under `accelerate launch`, killed: a dead rank fails the step with one line and the
job's retry trains again; neither a cancel nor a killed worker leaves a training process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from skillstore.errors import TrainingError
from skillstore.training.launch import PROGRESS_FILE, launch_training
from tests.launching import FOREVER, alive, job_for, ranks_of, wait_gone

pytestmark = pytest.mark.usefixtures("one_thread_in_children")


def test_a_killed_rank_fails_the_run_with_one_clear_line(launch_world, tmp_path):
    scratch, killed = tmp_path / "scratch", []

    def kill_the_rank(_stage, _fraction):
        if not killed and (scratch / PROGRESS_FILE).exists():  # rank 0 is up and training
            for rank in ranks_of(os.getpid()):
                rank.kill()
                killed.append(rank.pid)

    job = job_for(launch_world, "killed", sft=FOREVER)
    with pytest.raises(TrainingError, match="a launched training process was killed by SIGKILL "
                                            "before it finished") as err:
        launch_training("sft", job, launch_world["config"], kill_the_rank, scratch_dir=scratch)
    assert len(killed) == 1 and "\n" not in str(err.value) and "retry the job" in str(err.value)
    assert not job.out_dir.exists() and not scratch.exists()


class Cancelled(Exception):
    pass


def test_a_cancel_kills_the_whole_process_tree(launch_world, tmp_path):
    scratch, tree = tmp_path / "scratch", []

    def cancel(_stage, _fraction):
        if (scratch / PROGRESS_FILE).exists():
            # the launcher and its ranks, not the suite's other children (its private servers)
            tree.extend(p.pid for p in psutil.Process().children(recursive=True)
                        if "skillstore.training.child" in " ".join(p.cmdline()))
            raise Cancelled("job cancelled")

    with pytest.raises(Cancelled):
        launch_training("sft", job_for(launch_world, "cancelled", sft=FOREVER),
                        launch_world["config"], cancel, scratch_dir=scratch)
    assert len(tree) >= 2  # the launcher and the rank
    assert [p for p in tree if alive(p)] == []  # gone when launch_training returns
    assert not scratch.exists()


WORKER = """
import sys
from pathlib import Path
from skillstore.training.launch import launch_training
from skillstore.training.run import TrainJob
launch_training("sft", TrainJob.model_validate_json(Path(sys.argv[1]).read_text()), sys.argv[2],
                scratch_dir=Path(sys.argv[3]))
"""


def test_a_killed_worker_leaves_no_training_process(launch_world, tmp_path):
    job_file, scratch = tmp_path / "job.json", tmp_path / "scratch"
    job_file.write_text(job_for(launch_world, "orphan", sft=FOREVER).model_dump_json())
    worker = subprocess.Popen([sys.executable, "-c", WORKER, str(job_file),
                               str(launch_world["config"]), str(scratch)])
    try:
        deadline = time.monotonic() + 120
        while not (scratch / PROGRESS_FILE).exists():
            assert worker.poll() is None and time.monotonic() < deadline, "the rank never started"
            time.sleep(0.1)
        tree = [p.pid for p in psutil.Process(worker.pid).children(recursive=True)]
        assert ranks_of(worker.pid)
        worker.send_signal(signal.SIGKILL)  # no finally, no cleanup: a worker lost
        worker.wait()
        assert wait_gone(tree) == []
    finally:
        if worker.poll() is None:
            worker.kill()



@pytest.mark.slow
def test_the_train_step_launches_and_a_killed_attempt_is_trained_again(launch_world, tmp_path,
                                                                        tiny_zoo):
    """The pipeline's train step under a multi-GPU worker's settings: a rank killed mid-run fails
    the step with one line and records nothing; the retry's attempt trains and records it."""
    from skillstore.pipeline import steps
    from skillstore.pipeline.lifecycle import output
    from tests.workerenv import FAST_TRAIN, make_env, queue_job

    env = make_env(tmp_path, tiny_zoo, skills=("reverse",))
    settings = env.settings.model_copy(update={"accelerate_config": launch_world["config"]})
    killed = []

    def kill_the_rank(_stage, _fraction):
        if not killed and (ranks := ranks_of(os.getpid())):
            time.sleep(1.0)  # let it get going
            ranks[0].kill()
            killed.append(ranks[0].pid)

    try:
        with env.catalog.session() as s:
            job_id = queue_job(s, settings, "reverse", "tiny-llama", sft=FAST_TRAIN, send=False)
            steps.prepare(s, job_id, settings)
            s.commit()
            with pytest.raises(TrainingError, match="killed by SIGKILL"):
                steps.train(s, job_id, settings, kill_the_rank)
            s.rollback()
            assert killed and output(env.job(job_id), "train") is None
            out = steps.train(s, job_id, settings)
            s.commit()
        assert out["metrics"]["launch"]["distributed_type"] == "NO"
        assert (Path(out["tuned_dir"]) / "config.json").is_file()
        assert output(env.job(job_id), "train")["fingerprint"] == out["fingerprint"]
    finally:
        env.catalog.close()
