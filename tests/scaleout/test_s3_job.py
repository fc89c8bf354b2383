"""A learning job on S3 blobs: the worker writes the pack to the bucket and reads it back."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from skillstore.catalog import JobStatus, PackStatus, current_head, get_state
from skillstore.catalog.models import Promotion, SkillPack
from tests.workerenv import FAST_OPTIONS, FAST_TRAIN, queue_job

from .conftest import make_scaleout_env, s3_objects, s3_settings


@pytest.mark.slow
def test_learning_job_keeps_every_blob_in_s3(tmp_path, tiny_zoo, s3_bucket):
    endpoint, bucket, client = s3_bucket
    settings = s3_settings(tmp_path / "ws", endpoint, bucket)
    env, (base,) = make_scaleout_env(tmp_path, tiny_zoo, settings, skills=("reverse",))
    try:
        with env.catalog.session() as s:
            job_id = queue_job(s, settings, "reverse", base, sft=FAST_TRAIN,
                                        **FAST_OPTIONS)
        with env.worker():  # the child gets the S3 settings through its environment only
            job = env.wait(job_id, timeout=300)
        assert job.status == JobStatus.succeeded, (job.stage, job.error)
        objects = s3_objects(client, bucket)
        with env.catalog.session() as s:
            pack = s.get(SkillPack, job.pack_id)
            assert pack.status == PackStatus.promoted
            hexpart = pack.blob_digest.removeprefix("sha256:")
            assert objects[f"blobs/sha256/{hexpart[:2]}/{hexpart[2:]}"] == pack.size_bytes
            report = s.scalar(sa.select(Promotion.report_ref).where(
                Promotion.pack_id == pack.id, Promotion.to_status == PackStatus.promoted))
            router = get_state(s, current_head(s, pack.base_id).state_id).router_blob_digest
        for digest in (report, router, job.outputs["prepare"]["train"]):
            hexpart = digest.removeprefix("sha256:")
            assert f"blobs/sha256/{hexpart[:2]}/{hexpart[2:]}" in objects
        assert all(k.startswith("blobs/sha256/") for k in objects), "no staging leftovers"
        # The worker read the pack back out of S3: its verified download is in the local cache,
        # and nothing was ever written to a local blob folder.
        cached = {p.name for p in settings.home.rglob("*") if p.is_file()}
        assert pack.blob_digest.removeprefix("sha256:") in cached
        assert not (settings.home / "blobs").exists()
        env.catalog.blobs.verify(pack.blob_digest)
    finally:
        env.catalog.close()
