"""API-side faults: a database outage answers 503 (never 500) and the API recovers after it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import AUTH, TOKEN_HASH
from tests.conftest import fresh_postgres_database

from .faults import TcpProxy, free_port

DATA = b'{"prompt": "1+1=", "answer": "2"}\n'
DURING_OUTAGE = [
    ("GET", "/packs", {}), ("GET", "/jobs", {}), ("GET", "/states", {}), ("GET", "/bases", {}),
    ("GET", "/skills/sums", {}), ("GET", "/packs/1/lineage", {}), ("GET", "/states/1/report", {}),
    ("POST", "/skills/upload", {"data": {"name": "during", "suite": "during"},
                                "files": {"data": ("d.jsonl", DATA)}}),
    ("POST", "/jobs", {"json": {"skill": "sums", "base": "ghost"}}),
    ("POST", "/packs/1/promote", {"json": {"reason": "outage"}}),
    ("POST", "/jobs/1/cancel", {}),
]


@pytest.fixture
def outage_db():
    yield from fresh_postgres_database("skillstore_apifault")


def test_api_answers_503_while_the_database_is_down(outage_db, tmp_path, figures):
    from skillstore.api import create_api
    from skillstore.catalog import init_workspace
    from skillstore.settings import Settings

    direct = Settings(home=tmp_path / "ws", database_url=outage_db, api_token_hashes=(TOKEN_HASH,))
    init_workspace(direct).close()
    proxy = TcpProxy(("127.0.0.1", 5432)).start()
    via_proxy = direct.model_copy(update={
        "database_url": outage_db.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")})
    try:
        with TestClient(create_api(via_proxy)) as client:
            up = client.post("/skills/upload", headers=AUTH,
                             data={"name": "sums", "suite": "sums"},
                             files={"data": ("d.jsonl", DATA)})
            assert up.status_code == 201, up.text
            blobs_before = sorted((tmp_path / "ws" / "blobs").rglob("*"))
            proxy.cut()
            seen = {}
            for method, path, kwargs in DURING_OUTAGE:
                r = client.request(method, path, headers=AUTH, **kwargs)
                seen[f"{method} {path}"] = r.status_code
                assert r.status_code == 503, (method, path, r.text)
                assert r.json()["error"]["code"] == "database_unavailable"
                assert r.headers["retry-after"] == "5"
            assert client.get("/health").status_code == 200  # the process itself is fine
            # the refused upload wrote nothing, not even a blob
            assert sorted((tmp_path / "ws" / "blobs").rglob("*")) == blobs_before
            proxy.restore()
            after = client.get("/skills", headers=AUTH)
            assert after.status_code == 200
            assert [s["name"] for s in after.json()["items"]] == ["sums"]
            figures.update(requests_during_outage=len(seen), answered_503=sum(
                v == 503 for v in seen.values()), answered_500=sum(v >= 500 and v != 503
                                                                   for v in seen.values()),
                recovered_after_restore=after.status_code == 200)
    finally:
        proxy.stop()


def test_api_started_while_the_database_is_down_answers_503(tmp_path):
    from skillstore.api import create_api
    from skillstore.settings import Settings

    dead = Settings(home=tmp_path / "ws", api_token_hashes=(TOKEN_HASH,),
                    database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere")
    with TestClient(create_api(dead)) as client:
        assert client.get("/health").status_code == 200
        for path in ("/packs", "/jobs", "/bases/tiny"):
            r = client.get(path, headers=AUTH)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "database_unavailable"
            assert "Cannot reach the catalog database" in r.json()["error"]["message"]
