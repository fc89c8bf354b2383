"""Reliability fixtures: every test here is marked `reliability`; private servers; the figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .faults import PrivateRedis

HERE = Path(__file__).parent
FIGURES: dict[str, dict] = {}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if Path(str(item.fspath)).is_relative_to(HERE):
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def figures(request):
    """A dict the test fills with what it injected and what survived; printed at the end."""
    doc: dict = {}
    FIGURES[request.node.name] = doc
    return doc


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for name, doc in FIGURES.items():
        terminalreporter.write_line(f"{name}: {json.dumps(doc, sort_keys=True)}")
    cache = getattr(config, "cache", None)  # absent under -p no:cacheprovider
    if cache is not None:
        cache.set("reliability/figures", FIGURES)


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test's own (append-only, fsync always) that it may restart."""
    redis = PrivateRedis(tmp_path / "redis").start()
    yield redis
    redis.stop()
