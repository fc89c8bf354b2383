"""Cancelling a running job, and refusing bad job parameters at `learn` time."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import sqlalchemy as sa
from safetensors.torch import load_file, save_file

from skillstore.catalog import JobStatus
from skillstore.catalog.models import BaseHead, Job, SkillPack
from skillstore.errors import ConfigError, JobError, NotFoundError, RequestError, SkillstoreError
from skillstore.jobqueue import settings_env
from skillstore.pipeline import cancel, retry
from skillstore.zoo.register import register_checkpoint

from .conftest import FAST_OPTIONS, FAST_TRAIN, make_env, queue_job


def test_cancel_stops_training_and_the_next_job_runs(sqlite_env):
    env = sqlite_env
    with env.catalog.session() as s:
        endless = queue_job(s, env.settings, "reverse", "tiny-llama",
                            sft={"max_steps": 100_000, "batch_size": 8, "eval_every": 10_000},
                            **FAST_OPTIONS)
        after = queue_job(s, env.settings, "sort", "tiny-llama", sft=FAST_TRAIN,
                                   **FAST_OPTIONS)
        diverges = queue_job(s, env.settings, "reverse", "tiny-llama",
                                      sft={**FAST_TRAIN, "lr": 1e30}, **FAST_OPTIONS)
    with env.worker():
        env.wait(endless, until=lambda j: j.stage == "train" and j.progress > 0.2)
        assert env.job(after).outputs.get("train") is None  # it waits for the first job
        with env.catalog.session() as s:
            cancel(s, endless)
        env.wait(after, timeout=150)  # only possible once the endless training stopped
        with env.catalog.session() as s:
            head_before = s.execute(sa.select(BaseHead.state_id, BaseHead.version)).all()
        failed = env.wait(diverges, timeout=150)
    # A job that fails is marked failed with its stage and error; nothing else changed.
    assert failed.status == JobStatus.failed and failed.stage == "train"
    assert "loss" in failed.error and "\n" not in failed.error
    with env.catalog.session() as s:
        assert s.execute(sa.select(BaseHead.state_id, BaseHead.version)).all() == head_before
    assert env.job(endless).status == JobStatus.cancelled
    assert env.job(endless).pack_id is None
    assert env.job(after).status == JobStatus.succeeded
    with env.catalog.session() as s:
        packs = list(s.scalars(sa.select(SkillPack)))
    assert [p.skill_id for p in packs] == [env.job(after).skill_id]
    # A cancelled job can be queued again from where it stopped; a finished one cannot.
    with env.catalog.session() as s:
        retry(s, env.settings, endless)
        with pytest.raises(JobError, match="only failed or cancelled"):
            retry(s, env.settings, after)
    job = env.job(endless)
    assert job.status == JobStatus.queued and job.stage == "train" and job.celery_task_id


@pytest.fixture
def no_tokenizer_source(sqlite_env, tiny_zoo, tmp_path):
    folder = tmp_path / "bare-source"
    shutil.copytree(tiny_zoo.sources["gpt2"], folder)
    for f in folder.iterdir():
        if "token" in f.name or f.name in ("vocab.json", "merges.txt"):
            f.unlink()
    # Other weights too, so the catalog sees a new checkpoint rather than the zoo's source.
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, weights, metadata={"format": "pt"})
    with sqlite_env.catalog.session() as s:
        register_checkpoint(s, "bare", folder)
    return "bare"


@pytest.mark.parametrize("kwargs, error, words", [
    ({"skill": "nope"}, NotFoundError, "No skill named 'nope'"),
    ({"base": "nobase"}, NotFoundError, "No base named 'nobase'"),
    ({"policy": "superdense"}, ConfigError, "Unknown policy preset 'superdense'"),
    ({"budget": 2.0}, RequestError, "option budget"),
    ({"method": "magic"}, RequestError, "option method: Input should be 'sft', 'distill' or 'dpo'"),
    ({"method": "distill"}, RequestError, "--source NAME"),
    ({"method": "sft", "source": "src-gpt2"}, RequestError, "--source would be ignored"),
    ({"distill_prompts": 5, "verify": False}, RequestError,
     "--distill-prompts, --no-verify would be ignored"),
    ({"generation": {"do_sample": True}}, RequestError, "--generation would be ignored"),
    ({"method": "sft", "dpo": {"beta": 0.5}}, RequestError, "pass --method dpo"),
    ({"method": "dpo", "source": "src-gpt2", "max_steps": 0}, RequestError, "sft.max_steps"),
    ({"general_suite": "/no/such.yaml"}, NotFoundError, "General suite YAML"),
    ({"eval_limit": 0}, RequestError, "option eval_limit"),
    ({"method": "distill", "source": "bare"}, NotFoundError, "no tokenizer files"),
])
def test_bad_parameters_fail_at_learn_time_and_queue_nothing(sqlite_env, no_tokenizer_source,
                                                            kwargs, error, words):
    env = sqlite_env
    args = {"skill": "reverse", "base": "tiny-llama", **kwargs}
    with env.catalog.session() as s, pytest.raises(error) as caught:
        queue_job(s, env.settings, args.pop("skill"), args.pop("base"), **args)
    message = str(caught.value)
    assert words in message and "\n" not in message
    with env.catalog.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Job)) == 0
    assert not (env.settings.home / "broker.db").exists()  # no producer ever connected


def test_bad_policy_file_is_one_line_from_the_cli(sqlite_env, tmp_path):
    bad = tmp_path / "policy.json"
    bad.write_text('{"attention": {"codec": "nosuchcodec"}}')
    done = subprocess.run([sys.executable, "-m", "skillstore.cli", "learn", "reverse", "--base",
                           "tiny-llama", "--policy", str(bad)], capture_output=True, text=True,
                          env=settings_env(sqlite_env.settings), timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "policy" in lines[0].lower()
    with sqlite_env.catalog.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Job)) == 0
    assert issubclass(ConfigError, SkillstoreError)


def test_unreachable_broker_fails_the_job_with_one_line(tmp_path, tiny_zoo):
    env = make_env(tmp_path, tiny_zoo, broker_url="redis://127.0.0.1:1/0", skills=("reverse",))
    try:
        with env.catalog.session() as s, pytest.raises(
                JobError, match="could not be sent to the broker"):
            queue_job(s, env.settings, "reverse", "tiny-llama")
        job = env.job(1)
        assert job.status == JobStatus.failed and "broker" in job.error
    finally:
        env.catalog.close()


def _learn(env, *args):
    return subprocess.run([sys.executable, "-m", "skillstore.cli", "learn", "reverse", "--base",
                           "tiny-llama", *args], capture_output=True, text=True,
                          env=settings_env(env.settings), timeout=120)


def test_trainer_options_from_the_cli_reach_the_job(sqlite_env):
    done = _learn(sqlite_env, "--max-steps", "7", "--lr", "0.002", "--batch-size", "4",
                  "--seed", "3", "--train", "warmup_frac=0.2", "--train", "patience=2")
    assert done.returncode == 0, done.stderr
    job = sqlite_env.job(int(done.stdout.strip()))
    sft = job.request["sft"]
    assert {k: sft[k] for k in ("max_steps", "lr", "batch_size", "seed", "warmup_frac",
                                "patience")} == {"max_steps": 7, "lr": 0.002, "batch_size": 4,
                                                 "seed": 3, "warmup_frac": 0.2, "patience": 2}


@pytest.mark.parametrize("option, words", [
    ("nosuch=1", "nosuch"),            # not a trainer setting
    ("lr=fast", "lr"),                 # the wrong type
    ("warmup_frac", "KEY=VALUE"),      # not KEY=VALUE
])
def test_bad_trainer_option_is_one_line_and_queues_nothing(sqlite_env, option, words):
    done = _learn(sqlite_env, "--train", option)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    with sqlite_env.catalog.session() as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Job)) == 0


def test_tune_steps_tune_the_jobs_pack_before_it_is_stored(sqlite_env):
    from skillstore.blobstore import open_blob_store
    from skillstore.packs import read_pack
    from skillstore.pipeline import steps

    env = sqlite_env
    with env.catalog.session() as s:
        job_id = queue_job(s, env.settings, "reverse", "tiny-llama", sft=FAST_TRAIN,
                                    policy="compact", tune_steps=4, tune_objective="teacher",
                                    send=False)
    with env.catalog.session() as s:
        for step in (steps.prepare, steps.train):
            step(s, job_id, env.settings)
            s.commit()
        out = steps.compress(s, job_id, env.settings)
        s.commit()
        pack = s.get(SkillPack, out["pack_id"])
        assert pack.metrics["tune"]["steps"] == 4 and pack.size_bytes == out["bytes"]
        # toward the job's own fine-tune, as the request asked (labels by default)
        assert pack.metrics["tune"]["objective"] == "teacher"
        path = env.settings.home / "tuned-pack.safetensors"
        path.write_bytes(b"".join(open_blob_store(env.settings).iter_chunks(out["blob"])))
    tuned = read_pack(path).manifest["tuned"]  # the stored blob is the tuned pack
    assert tuned["steps"] == 4 and tuned["objective"] == "teacher"
    with env.catalog.session() as s, pytest.raises(RequestError, match="tune_steps"):
        queue_job(s, env.settings, "reverse", "tiny-llama", tune_steps=-1, send=False)
    with env.catalog.session() as s, pytest.raises(RequestError, match="tune_objective"):
        queue_job(s, env.settings, "reverse", "tiny-llama", tune_objective="both", send=False)
