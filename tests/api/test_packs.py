"""Packs over HTTP: verified upload, filtered list, show, lineage, download, overrides, reports."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from .conftest import ACTOR, AUTH

DATA = b'{"prompt": "a", "answer": "b"}\n'


@pytest.fixture(scope="module")
def world(api, tiny_world, fake_base):
    """The tiny base registered over HTTP, and its alpha and beta packs uploaded."""
    c = api.client
    assert c.post("/bases", headers=AUTH, json={"name": "tiny", "path": str(tiny_world.base_dir)}
                  ).status_code == 201
    packs = {}
    for skill, path in sorted(tiny_world.packs.items()):
        assert c.post("/skills/upload", headers=AUTH, data={"name": skill, "suite": skill},
                      files={"data": ("d.jsonl", DATA)}).status_code == 201
        r = c.post("/packs", headers=AUTH, data={"skill": skill, "base": "tiny"},
                   files={"file": (path.name, path.read_bytes())})
        assert r.status_code == 201, r.text
        packs[skill] = r.json()
    return packs


def test_upload_records_a_candidate_with_lineage_and_audit(api, world, tiny_world):
    alpha = world["alpha"]
    assert alpha["name"] == "alpha@v1" and alpha["status"] == "candidate"
    assert alpha["method"] == "import" and alpha["base"] == "tiny"
    assert alpha["size_bytes"] == tiny_world.packs["alpha"].stat().st_size
    shown = api.client.get("/packs/alpha@v1", headers=AUTH).json()
    assert shown["id"] == alpha["id"]
    assert [(p["kind"], p["name"]) for p in shown["parents"]] == [("trained_on", "tiny")]
    assert ([(h["from"], h["to"], h["actor"]) for h in shown["history"]]
            == [(None, "candidate", ACTOR)])


def test_download_returns_the_uploaded_bytes(api, world, tiny_world):
    r = api.client.get(f"/packs/{world['beta']['id']}/file", headers=AUTH)
    assert r.status_code == 200
    assert r.content == tiny_world.packs["beta"].read_bytes()
    assert r.headers["x-skillstore-digest"] == world["beta"]["blob_digest"]
    assert "beta-v1.safetensors" in r.headers["content-disposition"]
    assert api.client.get("/packs/9999/file", headers=AUTH).status_code == 404


def test_pack_list_pages_and_filters(api, world):
    c = api.client

    def names(**params):
        doc = c.get("/packs", headers=AUTH, params=params).json()
        return [p["name"] for p in doc["items"]], doc["total"]

    assert names() == (["beta@v1", "alpha@v1"], 2)
    assert names(limit=1, offset=1) == (["alpha@v1"], 2)
    assert names(skill="alpha") == (["alpha@v1"], 1)
    assert names(base="tiny", status="candidate") == (["beta@v1", "alpha@v1"], 2)
    assert names(base="ghost") == ([], 0)
    future = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    past = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    assert names(created_after=future) == ([], 0)
    assert names(created_after=past, created_before=future)[1] == 2
    assert c.get("/packs", headers=AUTH, params={"status": "bogus"}).status_code == 422
    assert c.get("/packs", headers=AUTH, params={"limit": 0}).status_code == 422
    assert c.get("/packs", headers=AUTH, params={"skill": "nope"}).status_code == 404


def test_lineage_graph_json_both_ways(api, world):
    alpha = world["alpha"]
    up = api.client.get("/packs/alpha@v1/lineage", headers=AUTH).json()
    assert up["root"] == f"pack:{alpha['id']}" and up["direction"] == "ancestors"
    kinds = {n["id"]: (n.get("type"), n["depth"]) for n in up["nodes"]}
    base_key = next(k for k in kinds if k.startswith("base:"))
    assert kinds == {f"pack:{alpha['id']}": ("pack", 0), base_key: ("base", 1)}
    assert up["edges"] == [{"child": f"pack:{alpha['id']}", "parent": base_key,
                            "kind": "trained_on"}]
    down = api.client.get("/packs/alpha@v1/lineage", headers=AUTH,
                          params={"direction": "descendants"}).json()
    assert down["direction"] == "descendants" and down["edges"] == []
    assert api.client.get("/packs/alpha@v1/lineage", headers=AUTH,
                          params={"direction": "sideways"}).status_code == 422


def _truncated(data: bytes) -> bytes:
    return data[:-37]


def _bit_flipped(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[-5] ^= 0x10  # in the payload: the header still parses, the digest does not match
    return bytes(flipped)


def _foreign(_: bytes) -> bytes:
    import torch
    from safetensors.torch import save

    return save({"model.layers.0.mlp.down_proj.weight": torch.zeros(4, 4)}, metadata={"x": "y"})


CORRUPT = {"truncated": (_truncated, "corrupt_pack", "not fully covered"),
           "bit_flipped": (_bit_flipped, "corrupt_pack", "altered"),
           "foreign": (_foreign, "corrupt_pack", "without a SkillPack manifest"),
           "garbage": (lambda _: b"not a safetensors file at all", "corrupt_pack",
                       "cannot be read")}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_uploads_are_refused_and_change_nothing(api, world, tiny_world, case):
    make, code, words = CORRUPT[case]
    before = api.snapshot()
    body = make(tiny_world.packs["alpha"].read_bytes())
    r = api.client.post("/packs", headers=AUTH, data={"skill": "alpha", "base": "tiny"},
                        files={"file": ("alpha.safetensors", body)})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code and words in r.json()["error"]["message"]
    assert "'alpha.safetensors' is not a valid SkillPack" in r.json()["error"]["message"]
    assert api.snapshot() == before


def test_pack_for_another_base_is_refused(api, world, tiny_world, fake_base):
    before = api.snapshot()
    r = api.client.post("/packs", headers=AUTH, data={"skill": "alpha", "base": fake_base},
                        files={"file": ("alpha.safetensors",
                                        tiny_world.packs["alpha"].read_bytes())})
    assert r.status_code == 422 and r.json()["error"]["code"] == "base_mismatch", r.text
    assert f"not base {fake_base!r}" in r.json()["error"]["message"]
    assert api.snapshot() == before


def test_overrides_move_the_pack_and_the_current_state(api, world):
    c = api.client
    r = c.post("/packs/alpha@v1/promote", headers=AUTH, json={"reason": "reviewed by hand"})
    assert r.status_code == 200, r.text
    audit = r.json()
    assert (audit["from"], audit["to"], audit["actor"]) == ("candidate", "promoted", ACTOR)
    assert audit["reason"] == "manual: reviewed by hand"
    state = c.get(f"/states/{audit['state_id']}", headers=AUTH).json()
    assert state["current"] and [p["name"] for p in state["packs"]] == ["alpha@v1"]
    listed = c.get("/states", headers=AUTH, params={"base": "tiny"}).json()
    assert listed["items"][0]["id"] == state["id"] and listed["total"] >= 1
    assert c.get("/packs", headers=AUTH, params={"status": "promoted"}).json()["total"] == 1
    again = c.post("/packs/alpha@v1/promote", headers=AUTH, json={"reason": "twice"})
    assert again.status_code == 400 and "cannot become promoted" in again.json()["error"]["message"]
    no_reason = c.post("/packs/beta@v1/reject", headers=AUTH, json={"reason": "   "})
    assert no_reason.status_code == 422
    rejected = c.post("/packs/beta@v1/reject", headers=AUTH, json={"reason": "worse"}).json()
    assert rejected["to"] == "rejected"
    retired = c.post("/packs/alpha@v1/retire", headers=AUTH, json={"reason": "superseded"}).json()
    assert retired["to"] == "retired"
    now = c.get(f"/states/{retired['state_id']}", headers=AUTH).json()
    assert now["current"] and now["packs"] == []
    history = c.get("/packs/alpha@v1", headers=AUTH).json()["history"]
    assert [h["to"] for h in history] == ["candidate", "promoted", "retired"]
    # A rejection the gate could not decide is flagged; a manual one is not.
    from skillstore.catalog import get_pack, set_pack_status

    def flagged():
        listed = c.get("/packs", headers=AUTH, params={"status": "rejected"}).json()["items"]
        return [(p["name"], p["inconclusive"]) for p in listed]

    assert flagged() == [("beta@v1", False)]
    with api.catalog.session() as s:
        beta = get_pack(s, "beta@v1")
        set_pack_status(s, beta, "promoted", actor="gate", reason="all checks passed")
        set_pack_status(s, beta, "rejected", actor="gate",
                        reason="inconclusive: needs n ≈ 480 per suite; alpha: dropped +0.020")
    assert flagged() == [("beta@v1", True)]
    assert c.get("/packs/beta@v1", headers=AUTH).json()["inconclusive"] is True


def test_reports_as_json_html_and_png(api, world):
    c = api.client
    c.post("/packs/beta@v1/promote", headers=AUTH, json={"reason": "for the report"})
    doc = c.get("/packs/beta@v1/report", headers=AUTH)
    assert doc.status_code == 200 and doc.headers["content-type"] == "application/json"
    report = doc.json()
    assert report["title"].startswith("Pack ") and report["skills"] == ["beta"]
    assert report["decision"]["verdict"] == "promoted"
    assert report["lineage"]["root"] == f"pack:{world['beta']['id']}"
    html = c.get("/packs/beta@v1/report", headers=AUTH, params={"format": "html"})
    assert html.headers["content-type"].startswith("text/html")
    assert "<img alt='accuracy matrix heatmap' src='data:image/png;base64," in html.text
    png = c.get("/packs/beta@v1/report/heatmap.png", headers=AUTH)
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    state = c.get(f"/states/{report['state']['id']}/report", headers=AUTH).json()
    assert state["state"] == report["state"] and json.dumps(state)
    md = c.get(f"/states/{report['state']['id']}/report", headers=AUTH, params={"format": "md"})
    assert md.text.startswith("# State ")
    assert c.get("/packs/beta@v1/report", headers=AUTH, params={"format": "pdf"}).status_code == 422
    never = c.get("/packs/9999/report", headers=AUTH)
    assert never.status_code == 404


def test_upload_without_a_base_finds_it_by_fingerprint(api, world, tiny_world):
    r = api.client.post("/packs", headers=AUTH, data={"skill": "alpha"},
                        files={"file": ("alpha.safetensors",
                                        tiny_world.packs["alpha"].read_bytes())})
    assert r.status_code == 201, r.text
    assert (r.json()["name"], r.json()["base"]) == ("alpha@v2", "tiny")
    assert r.json()["blob_digest"] == world["alpha"]["blob_digest"]  # same bytes, one blob
