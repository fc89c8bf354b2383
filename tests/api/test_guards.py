"""Tokens, body limits and path-like identifiers: refused before anything changes."""

from __future__ import annotations

import pytest

from .conftest import AUTH, TOKEN, write

PACK_BYTES = b"\x00" * 64
WRITES = [
    ("/bases", {"json": {"name": "b1", "path": "/tmp"}}),
    ("/skills", {"json": {"name": "s1", "path": "/tmp/x.jsonl"}}),
    ("/skills/upload", {"data": {"name": "s2"},
                        "files": {"data": ("d.jsonl", b'{"prompt": "a", "answer": "b"}\n')}}),
    ("/jobs", {"json": {"skill": "s1", "base": "b1"}}),
    ("/jobs/1/cancel", {}),
    ("/jobs/1/retry", {}),
    ("/packs", {"data": {"skill": "s1"}, "files": {"file": ("p.safetensors", PACK_BYTES)}}),
    ("/packs/1/promote", {"json": {"reason": "because"}}),
    ("/packs/1/reject", {"json": {"reason": "because"}}),
    ("/packs/1/retire", {"json": {"reason": "because"}}),
    ("/bases", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}),
]
BAD_AUTH = {
    "missing": {},
    "wrong": {"Authorization": "Bearer not-the-token"},
    "not_bearer": {"Authorization": f"Basic {TOKEN}"},
    "empty": {"Authorization": "Bearer "},
}


@pytest.mark.parametrize("auth", sorted(BAD_AUTH))
def test_every_write_without_a_valid_token_is_401_and_changes_nothing(api, auth):
    before = api.snapshot()
    for path, request in WRITES:
        kwargs = dict(request)
        headers = {**kwargs.pop("headers", {}), **BAD_AUTH[auth]}
        r = api.client.post(path, headers=headers, **kwargs)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
    assert api.snapshot() == before


def test_reads_need_a_token_unless_opened(api):
    assert api.client.get("/packs").status_code == 401
    assert api.client.get("/packs", headers=AUTH).status_code == 200
    assert api.client.get("/openapi.json").status_code == 200  # the schema is public
    opened = api.make(api_open_reads=True)
    assert opened.get("/packs").status_code == 200
    assert opened.get("/bases").status_code == 200
    r = opened.post("/bases", json={"name": "b1", "path": "/tmp"})
    assert r.status_code == 401  # open reads never open writes


def test_a_server_without_tokens_refuses_every_write(api):
    bare = api.make(api_token_hashes=())
    r = bare.post("/bases", json={"name": "b1", "path": "/tmp"}, headers=AUTH)
    assert r.status_code == 401 and "no API tokens configured" in r.json()["error"]["message"]


def test_oversized_upload_is_413_and_stores_nothing(api, tmp_path):
    small = api.make(api_max_upload_bytes=4096)
    row = '{"prompt": "%s", "answer": "b"}\n' % ("x" * 100)
    data = write(tmp_path / "big.jsonl", row * 100)  # ~12 KB
    before = api.snapshot()
    r = small.post("/skills/upload", headers=AUTH, data={"name": "big"},
                   files={"data": ("big.jsonl", data.read_bytes())})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "too_large"
    big_json = small.post("/skills", headers=AUTH,
                          json={"name": "big", "path": "/x", "description": "d" * 5000})
    assert big_json.status_code == 413
    assert api.snapshot() == before
    fits = small.post("/skills/upload", headers=AUTH, data={"name": "fits", "suite": "fits"},
                      files={"data": ("fits.jsonl", row.encode())})
    assert fits.status_code == 201, fits.text  # the limit, not uploads, refused the first


@pytest.mark.parametrize("url", [
    "/packs/..%2F..%2Fetc%2Fpasswd", "/packs/%2e%2e", "/bases/%2E%2E", "/skills/a%5Cb",
    "/packs/..%2Fx/file", "/states/%2e%2e%2f%2e%2e%2fetc",
])
def test_path_like_identifiers_are_refused(api, url):
    r = api.client.get(url, headers=AUTH)
    assert r.status_code in (400, 422), (url, r.status_code, r.text)
    assert r.json()["error"]["code"] in ("path_like_identifier", "invalid_request")


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "a\\b", "x" * 200])
def test_path_like_names_in_bodies_are_refused(api, name):
    before = api.snapshot()
    r = api.client.post("/skills/upload", headers=AUTH, data={"name": name},
                        files={"data": ("d.jsonl", b'{"prompt": "a", "answer": "b"}\n')})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    r = api.client.post("/bases", headers=AUTH, json={"name": name, "path": "/tmp"})
    assert r.status_code == 422
    assert api.snapshot() == before


def test_server_paths_outside_the_allowed_roots_are_refused(api, tmp_path):
    data = write(tmp_path / "ok.jsonl", '{"prompt": "a", "answer": "b"}\n')
    fenced = api.make(api_path_roots=(tmp_path / "inside",))
    (tmp_path / "inside").mkdir()
    before = api.snapshot()
    for path in (str(data), str(tmp_path / "inside" / ".." / "ok.jsonl")):
        r = fenced.post("/skills", headers=AUTH, json={"name": "fenced", "path": path})
        assert r.status_code == 400 and "SKILLSTORE_API_PATH_ROOTS" in r.json()["error"]["message"]
    r = fenced.post("/bases", headers=AUTH, json={"name": "fenced", "path": str(tmp_path)})
    assert r.status_code == 400
    assert api.snapshot() == before


@pytest.mark.parametrize("url", ["/packs/99999999999", "/bases/2147483648000", "/jobs/99999999999",
                                 "/states/12345678901234567890/report"])
def test_ids_beyond_the_catalog_range_are_refused_not_crashed(api, url):
    r = api.client.get(url, headers=AUTH)  # found by the schemathesis run: was a 500 (DataError)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("path", ["/tmp/" + "x" * 300, "/tmp/a\x00b", "/tmp/tab\there"])
def test_unreadable_server_paths_are_refused_not_crashed(api, path):
    for route, body in (("/bases", {"name": "odd", "path": path}),
                        ("/skills", {"name": "odd", "path": path})):
        r = api.client.post(route, headers=AUTH, json=body)
        assert r.status_code in (400, 422), r.text  # NUL was a 500 (ValueError) until fuzzed
