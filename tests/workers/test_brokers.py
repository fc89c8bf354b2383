"""A real worker process serves both queues on every supported broker."""

from __future__ import annotations

import os
import uuid

import pytest

from skillstore.errors import ConfigError
from skillstore.jobqueue import (
    CPU_QUEUE,
    GPU_QUEUE,
    parse_queues,
    producer,
    spawn_worker,
    stop_worker,
)
from skillstore.settings import Settings
from tests.conftest import require_service


def _settings(tmp_path, broker: str) -> Settings:
    home = tmp_path / "ws"
    if broker == "sqlite":
        return Settings(home=home)
    vhost_key = uuid.uuid4().hex[:8]
    if broker == "redis":
        require_service("redis")
        return Settings(home=home, broker_url="redis://127.0.0.1:6379/14",
                        result_backend="redis://127.0.0.1:6379/15")
    require_service("rabbitmq")
    return Settings(home=home, broker_url="amqp://guest:guest@127.0.0.1:5672//",
                    result_backend=f"db+sqlite:///{home / ('results-' + vhost_key + '.db')}")


@pytest.mark.parametrize("broker", ["sqlite", "redis", "rabbitmq"])
def test_worker_answers_on_both_queues(tmp_path, broker):
    settings = _settings(tmp_path, broker)
    settings.home.mkdir(parents=True, exist_ok=True)
    app = producer(settings)
    worker = spawn_worker(settings, concurrency=1, pool="solo",
                          hostname=f"t-{uuid.uuid4().hex[:6]}@%h")
    try:
        for queue in (CPU_QUEUE, GPU_QUEUE):
            result = app.send_task("workers.ops.ping", queue=queue)
            answer = result.get(timeout=60)
            assert answer["pid"] != os.getpid()
            assert answer["pid"] == worker.pid
    finally:
        stop_worker(worker)


def test_queue_names_are_checked():
    assert parse_queues("gpu, cpu") == ["gpu", "cpu"]
    with pytest.raises(ConfigError, match="Unknown queue gpux"):
        parse_queues("gpux")
