"""A skill handed in as a JSONL alone, on a base of the user's own, through a real worker."""

from __future__ import annotations

import json
import random

import sqlalchemy as sa

from skillstore.catalog import JobStatus, PackStatus, init_workspace
from skillstore.catalog.models import EvalResult, Skill, SkillPack
from skillstore.heldout import SUITES_DIR
from skillstore.intake import register_skill_dataset
from skillstore.settings import Settings
from skillstore.skilldata import read_rows
from skillstore.zoo.register import register_checkpoint

from .conftest import FAST_OPTIONS, FAST_TRAIN, Env, queue_job


def test_a_jsonl_alone_gets_a_verdict_on_a_user_base(tmp_path, tiny_zoo):
    settings = Settings(home=tmp_path / "ws")
    catalog = init_workspace(settings)
    (tmp_path / "logs").mkdir()
    env = Env(settings, catalog, tmp_path / "logs")
    data = tmp_path / "succ.jsonl"
    rng = random.Random(1)
    data.write_text("".join(json.dumps({"prompt": f"After {n} comes", "answer": f" {n + 1}"})
                            + "\n" for n in rng.sample(range(100, 999), 300)))
    try:
        with catalog.session() as s:
            register_checkpoint(s, "my-gpt2", tiny_zoo.sources["gpt2"])
            skill = register_skill_dataset(s, catalog.blobs, name="successor", data=data,
                                           suites_dir=settings.home / SUITES_DIR)
            heldout = skill.heldout
            job_id = queue_job(s, settings, "successor", "my-gpt2", sft=FAST_TRAIN,
                               **FAST_OPTIONS)
        with env.worker():
            job = env.wait(job_id, timeout=150)
        assert job.status == JobStatus.succeeded, (job.stage, job.error)
        test = {r["prompt"] for r in read_rows(catalog.blobs, heldout["test_sha256"])}
        prepared = job.outputs["prepare"]
        seen = read_rows(catalog.blobs, prepared["train"]) + \
            read_rows(catalog.blobs, prepared["validation"])
        assert len(seen) == heldout["n_train"] == 240 and not test & {r["prompt"] for r in seen}
        with catalog.session() as s:
            pack = s.get(SkillPack, job.pack_id)
            assert pack.status in (PackStatus.promoted, PackStatus.rejected)
            skill_id = s.scalar(sa.select(Skill.id).where(Skill.name == "successor"))
            evals = list(s.scalars(sa.select(EvalResult).where(EvalResult.skill_id == skill_id)))
            assert {(e.task, e.metric, e.n) for e in evals} == {
                ("skillstore_successor", "exact_match", FAST_OPTIONS["eval_limit"])}
            assert len({e.state_id for e in evals}) == 2  # the base, then the candidate
    finally:
        catalog.close()
