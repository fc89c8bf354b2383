"""Training under `accelerate launch`: the launched run saves what the in-process run saves, and
bad configs and GPU requests are refused with one line before anything starts (killed ranks,
cancels and killed workers: tests/reliability/test_launch_kills.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from skillstore.errors import ConfigError
from skillstore.training.launch import check_host, launch_training, read_config
from skillstore.training.run import run_training
from tests.launching import FOUR_GPUS, job_for

pytestmark = pytest.mark.usefixtures("one_thread_in_children")


def test_a_launched_run_saves_the_checkpoint_the_in_process_run_saves(launch_world):
    local = run_training("sft", job_for(launch_world, "local"))
    seen = []
    launched = launch_training("sft", job_for(launch_world, "launched"), launch_world["config"],
                               lambda stage, fraction: seen.append((stage, fraction)))
    # Same weights (same fingerprint), in a folder of its own, with the same record beside it.
    assert launched["fingerprint"] == local["fingerprint"]
    assert Path(launched["out_dir"]).parent == launch_world["root"] / "launched"
    assert (Path(launched["out_dir"]) / "model.safetensors").is_file()
    assert set(launched) - set(local) == {"launch"} and launched["steps"] == local["steps"] == 4
    assert launched["backend"] == local["backend"]
    assert launched["launch"] == {"config": str(launch_world["config"]), "distributed_type": "NO",
                                  "num_processes": 1, "use_cpu": True, "world_size": 1}
    # Rank 0's progress reaches the caller, in order, up to the save.
    trained = [f for s, f in seen if s == "train"]
    assert trained == sorted(trained) and trained[-1] == 1.0 and seen[-1] == ("save", 1.0)


@pytest.mark.parametrize("text, why", [
    (None, "does not exist"),
    ("distributed_type: [MULTI_GPU\n", "does not parse"),
    ("- a list\n- not a mapping\n", "does not parse"),
    ("num_processes: 2\n", "does not parse"),  # no distributed_type
    ("distributed_type: FSDP\nnum_processes: 4\n", "launches NO .* or MULTI_GPU"),
    ("distributed_type: MULTI_CPU\nnum_processes: 2\n", "launches NO .* or MULTI_GPU"),
])
def test_a_bad_accelerate_config_is_one_line_before_anything_starts(launch_world, tmp_path, text,
                                                                   why):
    config = tmp_path / "accelerate.yaml"
    if text is not None:
        config.write_text(text)
    job = job_for(launch_world, f"refused-{tmp_path.name}")
    with pytest.raises(ConfigError, match=why) as err:
        launch_training("sft", job, config, scratch_dir=tmp_path / "scratch")
    assert "\n" not in str(err.value) and str(config) in str(err.value)
    assert not job.out_dir.exists() and not (tmp_path / "scratch").exists()


def test_a_multi_gpu_request_on_a_host_without_the_gpus_is_refused(launch_world, tmp_path):
    config = tmp_path / "ddp4.yaml"
    config.write_text(FOUR_GPUS)
    job = job_for(launch_world, "four-gpus")
    with pytest.raises(ConfigError, match=r"asks for 4 GPUs .* this host has \d") as err:
        launch_training("sft", job, config, scratch_dir=tmp_path / "scratch")  # torch's count
    assert "\n" not in str(err.value) and not job.out_dir.exists()
    with pytest.raises(ConfigError, match="this host has 3"):
        check_host(read_config(config), gpus=3)
    check_host(read_config(config), gpus=4)  # a 4-GPU host takes it


def test_a_multi_process_launch_refuses_the_one_device_loop(launch_world, tmp_path):
    config = tmp_path / "ddp4.yaml"
    config.write_text(FOUR_GPUS)
    job = job_for(launch_world, "builtin-ddp", backend="builtin")
    with pytest.raises(ConfigError, match="--backend trl") as err:
        launch_training("sft", job, config, gpus=4, scratch_dir=tmp_path / "scratch")
    assert "\n" not in str(err.value) and not (tmp_path / "scratch").exists()


def test_the_setting_is_read_from_the_environment_and_empty_means_in_process(monkeypatch,
                                                                                 tmp_path):
    from skillstore.settings import Settings

    monkeypatch.setenv("SKILLSTORE_ACCELERATE_CONFIG", str(tmp_path / "a.yaml"))
    assert Settings(home=tmp_path).accelerate_config == tmp_path / "a.yaml"
    monkeypatch.setenv("SKILLSTORE_ACCELERATE_CONFIG", "")
    assert Settings(home=tmp_path).accelerate_config is None
