"""A job whose policy asks for GPTQ calibrates on its own training rows and says so."""

from __future__ import annotations

from skillstore.blobstore import open_blob_store
from skillstore.catalog.models import SkillPack
from skillstore.packs import load_policy, read_pack
from skillstore.packs.calibration import CALIBRATION_ROWS
from skillstore.pipeline import steps

from .conftest import FAST_TRAIN, queue_job


def test_a_gptq_policy_calibrates_on_the_jobs_training_rows(sqlite_env):
    env = sqlite_env
    policy = env.settings.home / "gptq.json"
    policy.write_text(load_policy("compact").model_copy(
        update={"name": "compact-gptq", "gptq": True}).model_dump_json())
    with env.catalog.session() as s:
        job_id = queue_job(s, env.settings, "reverse", "tiny-llama", sft=FAST_TRAIN,
                           policy=str(policy), send=False)
    with env.catalog.session() as s:
        for step in (steps.prepare, steps.train):
            step(s, job_id, env.settings)
            s.commit()
        n_train = steps.get_job(s, job_id).outputs["prepare"]["n_train"]
        out = steps.compress(s, job_id, env.settings)
        s.commit()
        info = s.get(SkillPack, out["pack_id"]).metrics["gptq"]
        path = env.settings.home / "gptq-pack.safetensors"
        path.write_bytes(b"".join(open_blob_store(env.settings).iter_chunks(out["blob"])))
    assert info["rows"] == min(CALIBRATION_ROWS, n_train) and info["tokens"] > info["rows"]
    pack = read_pack(path)
    assert pack.manifest["policy"]["gptq"] is True
    calibrated = [n for n, e in pack.manifest["tensors"].items() if e["info"].get("calibrated")]
    assert len(calibrated) == info["matrices"] > 0
