"""Flower, started with the command docs/deploy.md gives, sees the workers on Redis and RabbitMQ."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import httpx
import pytest

from skillstore.jobqueue import settings_env, spawn_worker, stop_worker
from skillstore.settings import Settings

from .conftest import free_port

AUTH = ("ops", "flower-test-password")


def flower_command(port: int) -> list[str]:
    """`celery -A workers.main flower --address=... --port=... --basic-auth=user:password`."""
    return [sys.executable, "-m", "celery", "-A", "workers.main", "flower", "--address=127.0.0.1",
            f"--port={port}", f"--basic-auth={AUTH[0]}:{AUTH[1]}"]


def wait_for(check, timeout: float, what: str, proc: subprocess.Popen, log):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            value = check()
            if value:
                return value
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} never happened; flower said:\n{log.read_text()[-3000:]}")


@pytest.mark.parametrize("broker", [pytest.param("redis", marks=pytest.mark.redis),
                                    pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def test_flower_lists_the_workers(request, tmp_path, broker):
    url = request.getfixturevalue("private_redis" if broker == "redis" else "rabbitmq_vhost")
    settings = Settings(home=tmp_path / "ws",
                        broker_url=url if broker == "rabbitmq" else f"{url}/0")
    settings.home.mkdir(parents=True)
    name = f"flower-{uuid.uuid4().hex[:6]}"
    worker = spawn_worker(settings, concurrency=1, pool="solo", hostname=f"{name}@%h",
                          log_path=tmp_path / "worker.log")
    port, log = free_port(), tmp_path / "flower.log"
    with open(log, "wb") as out:
        flower = subprocess.Popen(flower_command(port), env=settings_env(settings),
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{base}/healthcheck", timeout=5).text == "OK", 90,
                 "flower answering /healthcheck", flower, log)
        assert httpx.get(f"{base}/api/workers", timeout=10).status_code == 401  # no password
        workers = wait_for(
            lambda: [w for w in httpx.get(f"{base}/api/workers?refresh=1", auth=AUTH,
                                          timeout=30).json() if w.startswith(name)],
            120, f"worker {name} listed by flower", flower, log)
        info = httpx.get(f"{base}/api/workers?workername={workers[0]}", auth=AUTH,
                         timeout=30).json()[workers[0]]
        assert {q["name"] for q in info["active_queues"]} == {"gpu", "cpu"}
        assert "workers.learn.train" in info["registered"]
    finally:
        stop_worker(flower)
        stop_worker(worker)
