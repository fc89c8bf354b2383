"""API fixtures: a workspace on the real PostgreSQL, a TestClient per settings, state snapshots."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from tests.composition.conftest import make_base, make_pack, tiny_world  # noqa: F401 - fixtures

TOKEN = "api-test-token-0123456789"
TOKEN_HASH = hashlib.sha256(TOKEN.encode()).hexdigest()
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ACTOR = f"api:{TOKEN_HASH[:12]}"


@dataclass
class Api:
    """A client on a workspace, and the workspace's catalog for checks behind the API's back."""

    client: TestClient
    catalog: object
    settings: object
    make: Callable[..., TestClient]

    def snapshot(self) -> dict:
        """Row count of every catalog table and the digests in the blob store."""
        from skillstore.catalog.models import Record

        with self.catalog.session() as s:
            counts = {t.name: s.scalar(sa.select(sa.func.count()).select_from(t))
                      for t in Record.metadata.sorted_tables}
        return {"rows": counts, "blobs": sorted(b.digest for b in self.catalog.blobs.iter_blobs())}


def _wipe(url: str) -> None:
    from skillstore.catalog.db import make_engine

    engine = make_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    engine.dispose()


@pytest.fixture(scope="module")
def api_workspace(pg_url, tmp_path_factory):
    """A workspace of this module's own on the run's PostgreSQL database (wiped first)."""
    from skillstore.catalog import init_workspace
    from skillstore.settings import Settings

    _wipe(pg_url)
    home = tmp_path_factory.mktemp("api_home")
    settings = Settings(home=home, database_url=pg_url, api_token_hashes=(TOKEN_HASH,))
    catalog = init_workspace(settings)
    yield settings
    catalog.close()


@pytest.fixture(scope="module")
def api(api_workspace):
    """A TestClient with the module's settings; ``api.make(**overrides)`` builds another."""
    from skillstore.api import create_api
    from skillstore.catalog import open_catalog

    clients = []

    def make(**overrides) -> TestClient:
        settings = api_workspace.model_copy(update=overrides)
        client = TestClient(create_api(settings))
        client.__enter__()
        clients.append(client)
        return client

    catalog = open_catalog(api_workspace)
    yield Api(make(), catalog, api_workspace, make)
    for client in clients:
        client.__exit__(None, None, None)
    catalog.close()


@pytest.fixture(scope="module")
def fake_base(api):
    """A base row whose weights exist nowhere: enough for jobs, overrides and refused packs."""
    with api.catalog.session() as s:
        return make_base(s, name="ghost").name


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path
