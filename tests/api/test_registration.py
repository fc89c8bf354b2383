"""Bases and skills over HTTP: registration by path and upload, and datasets refused by line."""

from __future__ import annotations

import json
import pathlib

import pytest

from .conftest import AUTH, write


def test_register_base_by_path_hashes_the_weights(api, tiny_world):
    from skillstore.fingerprint import fingerprint_checkpoint

    r = api.client.post("/bases", json={"name": "tiny", "path": str(tiny_world.base_dir)},
                        headers=AUTH)
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["fingerprint"] == fingerprint_checkpoint(tiny_world.base_dir)
    assert doc["architecture"] == "LlamaForCausalLM"
    again = api.client.post("/bases", json={"name": "tiny", "path": str(tiny_world.base_dir)},
                            headers=AUTH)
    assert again.status_code == 201 and again.json()["id"] == doc["id"]  # idempotent
    twin = api.client.post("/bases", json={"name": "twin", "path": str(tiny_world.base_dir)},
                           headers=AUTH)
    assert twin.status_code == 400
    assert "already registered as base 'tiny'" in twin.json()["error"]["message"]
    assert api.client.get(f"/bases/{doc['id']}", headers=AUTH).json()["name"] == "tiny"
    assert api.client.get("/bases/tiny", headers=AUTH).json()["id"] == doc["id"]
    missing = api.client.post("/bases", json={"name": "gone", "path": "/no/such/folder"},
                              headers=AUTH)
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "code": "not_found", "message": "Checkpoint folder '/no/such/folder' does not exist."}


def test_register_base_with_its_behaviour_suite(api, tiny_world, tmp_path):
    probes = write(tmp_path / "probes.txt", "".join(f"say {w}\n" for w in
                                                   ("ab", "cd", "ef", "gh", "ij", "kl")))
    body = {"name": "tiny", "path": str(tiny_world.base_dir), "general_data": str(probes)}
    refused = api.client.post("/bases", json=body, headers=AUTH)
    assert refused.status_code == 400
    assert "set general_suite to true" in refused.json()["error"]["message"]
    r = api.client.post("/bases", json={**body, "general_suite": True}, headers=AUTH)
    assert r.status_code == 201, r.text
    behaviour = r.json()["behaviour"]
    assert behaviour["source"] == "general-data"
    tasks = [pathlib.Path(p) for p in behaviour["suite"].split(",")]
    assert len(tasks) == 2 and all(t.is_file() for t in tasks)  # agreement and KL
    assert api.client.get("/bases/tiny", headers=AUTH).json()["behaviour"] == behaviour


def test_register_skill_by_upload_and_by_path(api, tmp_path):
    data = write(tmp_path / "arith.jsonl", '{"prompt": "1+1=", "answer": "2"}\n'
                                           '{"prompt": "2+2=", "answer": "4"}\n')
    r = api.client.post("/skills/upload", headers=AUTH,
                        data={"name": "arith", "description": "sums", "suite": "arith"},
                        files={"data": ("arith.jsonl", data.read_bytes())})
    assert r.status_code == 201, r.text
    skill = r.json()
    assert skill["suite"] == "arith" and skill["description"] == "sums"
    assert api.catalog.blobs.get_bytes(skill["data_sha256"]) == data.read_bytes()
    by_path = api.client.post("/skills", headers=AUTH,
                              json={"name": "arith2", "path": str(data),
                                    "suite": "skillstore_arith"})
    assert by_path.status_code == 201, by_path.text
    assert by_path.json()["data_uri"] == str(data.resolve())
    listing = api.client.get("/skills", params={"limit": 1, "offset": 1}, headers=AUTH).json()
    assert [s["name"] for s in listing["items"]] == ["arith2"]
    assert listing["total"] >= 2 and listing["limit"] == 1 and listing["offset"] == 1


BAD_DATASETS = {
    "missing_field": ('{"prompt": "a", "answer": "b"}\n{"prompt": "c", "answer": "d"}\n'
                      '{"prompt": "e"}\n', 3, "missing field 'answer'"),
    "invalid_json": ('{"prompt": "a", "answer": "b"}\n{"prompt": "a", answer}\n', 2,
                     "invalid JSON"),
    "not_an_object": ('["prompt", "answer"]\n', 1, "expected a JSON object"),
    "not_a_string": ('{"prompt": "a", "answer": "b"}\n\n{"prompt": "a", "answer": 7}\n', 3,
                     "field 'answer' is int"),
    "not_utf8": (b'{"prompt": "a", "answer": "b"}\n{"prompt": "\xff\xfe", "answer": "b"}\n', 2,
                 "not valid UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATASETS))
@pytest.mark.parametrize("how", ["upload", "path"])
def test_bad_dataset_is_refused_with_its_line_and_nothing_changes(api, tmp_path, case, how):
    text, line, reason = BAD_DATASETS[case]
    data = write(tmp_path / f"{case}.jsonl", text)
    before = api.snapshot()
    if how == "upload":
        r = api.client.post("/skills/upload", headers=AUTH, data={"name": f"bad-{case}"},
                            files={"data": (f"{case}.jsonl", data.read_bytes())})
        where = f"{case}.jsonl:{line}:"
    else:
        r = api.client.post("/skills", headers=AUTH,
                            json={"name": f"bad-{case}", "path": str(data)})
        where = f"{data}:{line}:"
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_dataset"
    assert error["message"].startswith(where) and reason in error["message"], error["message"]
    assert api.snapshot() == before
    assert api.client.get(f"/skills/bad-{case}", headers=AUTH).status_code == 404


def test_empty_dataset_upload_is_refused(api):
    before = api.snapshot()
    r = api.client.post("/skills/upload", headers=AUTH, data={"name": "empty"},
                        files={"data": ("empty.jsonl", b"")})
    assert r.status_code == 400 and "is empty" in r.json()["error"]["message"]
    blank = api.client.post("/skills/upload", headers=AUTH, data={"name": "blank"},
                            files={"data": ("blank.jsonl", b"\n\n")})
    assert blank.status_code == 422 and "has no rows" in blank.json()["error"]["message"]
    assert api.snapshot() == before


def _successor(n: int) -> bytes:
    return "".join(json.dumps({"prompt": f"After {k} comes", "answer": f" {k + 1}"}) + "\n"
                   for k in range(100, 100 + n)).encode()


def test_a_skill_without_a_suite_gets_a_held_out_split(api, tmp_path):
    r = api.client.post("/skills/upload", headers=AUTH, data={"name": "succ", "seed": "2"},
                        files={"data": ("succ.jsonl", _successor(300))})
    assert r.status_code == 201, r.text
    skill = r.json()
    assert skill["heldout"]["seed"] == 2 and skill["heldout"]["n_test"] == 60
    assert skill["suite"].endswith("skillstore_succ.yaml")
    data = write(tmp_path / "succ.jsonl", _successor(300).decode())
    by_path = api.client.post("/skills", headers=AUTH, json={
        "name": "succ2", "path": str(data), "test_size": 100, "metric": "number"})
    assert by_path.status_code == 201, by_path.text
    assert by_path.json()["heldout"]["n_test"] == 100
    assert by_path.json()["heldout"]["metric"] == "number"
    before = api.snapshot()
    few = api.client.post("/skills/upload", headers=AUTH, data={"name": "few"},
                          files={"data": ("few.jsonl", _successor(120))})
    assert few.status_code == 422 and few.json()["error"]["message"].startswith("few.jsonl: ")
    both = api.client.post("/skills", headers=AUTH, json={
        "name": "both", "path": str(data), "suite": "both", "seed": 1})
    assert both.status_code == 400 and "seed (--seed)" in both.json()["error"]["message"]
    assert api.snapshot() == before
