"""A killed attempt's scratch folder is swept by the next worker; a live attempt's is kept."""

from __future__ import annotations

from skillstore.catalog import create_job, init_workspace
from skillstore.pipeline.lifecycle import begin, finish
from skillstore.pipeline.workdir import scratch, sweep_scratch
from skillstore.settings import Settings

HOST, LIVE_PID, DEAD_PID = "here", 111, 222


def test_sweep_removes_only_folders_no_live_attempt_owns(tmp_path):
    settings = Settings(home=tmp_path / "ws")
    catalog = init_workspace(settings)
    with catalog.session() as s:
        jobs = {}
        for name, host, pid in [("live", HOST, LIVE_PID), ("dead", HOST, DEAD_PID),
                                ("elsewhere", "other-host", DEAD_PID), ("done", HOST, LIVE_PID)]:
            job = begin(s, create_job(s, kind="learn", request={}).id, "compress", host, pid)
            jobs[name] = job
        finish(s, jobs["done"])
        s.flush()
        folders = {name: scratch(settings, job.id) for name, job in jobs.items()}
        folders["gone"] = scratch(settings, 999)  # its job row no longer exists
        (folders["dead"] / "model").mkdir()
        (folders["dead"] / "model" / "model.safetensors").write_bytes(b"half a checkpoint")
        unrelated = settings.home / "work" / "tmp" / "notes"
        unrelated.mkdir()

        removed = sweep_scratch(s, settings, HOST, alive=lambda pid: pid == LIVE_PID)
    catalog.close()

    assert sorted(removed) == sorted([folders["dead"], folders["done"], folders["gone"]])
    for name in ("dead", "done", "gone"):
        assert not folders[name].exists(), name
    for name in ("live", "elsewhere"):
        assert folders[name].is_dir(), name
    assert unrelated.is_dir()
