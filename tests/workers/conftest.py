"""Worker fixtures: a registered SQLite workspace per test, on the shared tiny zoo."""

from __future__ import annotations

import pytest

from tests.workerenv import (  # noqa: F401
    FAST_OPTIONS,
    FAST_TRAIN,
    PG_ROOT,
    REDIS,
    Env,
    make_env,
    queue_job,
)


@pytest.fixture
def sqlite_env(tmp_path, tiny_zoo):
    env = make_env(tmp_path, tiny_zoo)
    yield env
    env.catalog.close()
