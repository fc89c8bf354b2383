"""Shared fixtures: an isolated workspace per test, and real services that never skip in CI."""

from __future__ import annotations

import os
import socket

import pytest

pytest_plugins = ["tests.launching"]  # the accelerate-launch fixtures of two test folders

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}

SERVICES = {
    "postgres": ("127.0.0.1", 5432),
    "redis": ("127.0.0.1", 6379),
    "rabbitmq": ("127.0.0.1", 5672),
}


def service_up(name: str) -> bool:
    host, port = SERVICES[name]
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str) -> None:
    """Skip locally when a server is down; in CI a missing server is a failure, never a skip."""
    if service_up(name):
        return
    message = f"{name} is not reachable at {SERVICES[name][0]}:{SERVICES[name][1]}"
    if IN_CI:
        pytest.fail(f"{message}; .ci/run should have started it")
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach a model hub."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def workspace(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A fresh SKILLSTORE_HOME with every URL left at its embedded default."""
    home = tmp_path / "ws"
    monkeypatch.setenv("SKILLSTORE_HOME", str(home))
    for var in ("DATABASE_URL", "BLOB_URL", "BROKER_URL", "RESULT_BACKEND"):
        monkeypatch.delenv(f"SKILLSTORE_{var}", raising=False)
    return home


PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"


def fresh_postgres_database(prefix: str = "skillstore_test"):
    """Create a PostgreSQL database with a unique name; yield its URL; drop it afterwards."""
    import uuid

    from skillstore.catalog.db import create_database, drop_database

    require_service("postgres")
    url = f"{PG_SERVER}/{prefix}_{uuid.uuid4().hex[:10]}"
    create_database(url)
    try:
        yield url
    finally:
        drop_database(url)


@pytest.fixture(scope="session")
def pg_url():
    """A PostgreSQL database of this test run's own, dropped at the end of the run."""
    yield from fresh_postgres_database()


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """One tiny zoo per test run, shared by every test that runs real workers."""
    from tests.workerenv import build_tiny_zoo

    return build_tiny_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture
def redis_url():
    """A Redis database of its own, emptied before and after."""
    require_service("redis")
    import redis

    url = "redis://127.0.0.1:6379/12"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def postgres_url():
    """A PostgreSQL database made for this test and dropped after it."""
    yield from fresh_postgres_database("skillstore_workers")


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """The console entry point in-process: (exit status, stdout, stderr)."""
    import sys

    from skillstore.cli import main

    old, sys.argv = sys.argv, ["skillstore", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err
