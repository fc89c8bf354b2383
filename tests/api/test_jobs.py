"""Learning jobs over HTTP: queued on the embedded broker (no worker), listed, cancelled, retried."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from .conftest import AUTH

DATA = b'{"prompt": "1+1=", "answer": "2"}\n'


@pytest.fixture(scope="module")
def skills(api):
    for name in ("sums", "echo"):
        r = api.client.post("/skills/upload", headers=AUTH, data={"name": name},
                            files={"data": ("d.jsonl", DATA)})
        assert r.status_code == 201, r.text
    return ("sums", "echo")


@pytest.fixture(scope="module")
def queued(api, skills, fake_base):
    ids = []
    for skill in skills:
        r = api.client.post("/jobs", headers=AUTH,
                            json={"skill": skill, "base": fake_base, "policy": "compact",
                                  "budget": 25, "max_steps": 3, "tune_steps": 7})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


def test_queue_stores_the_job_and_sends_it(api, queued, fake_base):
    job = api.client.get(f"/jobs/{queued[0]}", headers=AUTH).json()
    assert job["status"] == "queued" and job["kind"] == "learn"
    assert job["celery_task_id"]  # sent to the broker: a worker started later picks it up
    assert job["params"]["skill"] == "sums" and job["params"]["base"] == fake_base
    assert job["params"]["budget"] == 0.25 and job["params"]["train"] == {"max_steps": 3}
    assert job["params"]["tune_steps"] == 7


def test_job_list_pages_and_filters(api, queued, fake_base):
    def ids(**params):
        doc = api.client.get("/jobs", headers=AUTH, params=params).json()
        return [j["id"] for j in doc["items"]], doc["total"]

    newest_first = sorted(queued, reverse=True)
    assert ids(base=fake_base) == (newest_first, 2)
    assert ids(base=fake_base, limit=1, offset=1) == (newest_first[1:], 2)
    assert ids(skill="echo") == ([queued[1]], 1)
    assert ids(skill="sums", status="queued") == ([queued[0]], 1)
    assert ids(status="succeeded") == ([], 0)
    soon = (datetime.now(timezone.utc) + timedelta(minutes=5)).isoformat()
    assert ids(created_after=soon) == ([], 0)
    assert ids(created_before=soon, base=fake_base)[1] == 2
    assert api.client.get("/jobs", headers=AUTH, params={"status": "done"}).status_code == 422


def test_cancel_then_retry(api, queued):
    c = api.client
    job_id = queued[1]
    r = c.post(f"/jobs/{job_id}/cancel", headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    twice = c.post(f"/jobs/{job_id}/cancel", headers=AUTH)
    assert twice.status_code == 409 and twice.json()["error"]["code"] == "job_conflict"
    first_task = r.json()["celery_task_id"]
    again = c.post(f"/jobs/{job_id}/retry", headers=AUTH).json()
    assert again["status"] == "queued" and again["celery_task_id"] != first_task
    running = c.post(f"/jobs/{job_id}/retry", headers=AUTH)
    assert running.status_code == 409 and "only failed or cancelled" in running.json()["error"]["message"]
    assert c.get("/jobs/999999", headers=AUTH).status_code == 404
    assert c.post("/jobs/999999/cancel", headers=AUTH).status_code == 404
    assert c.get("/jobs/abc", headers=AUTH).status_code == 422


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"skill": "nope", "base": "ghost"}, 404, "No skill named 'nope'"),
    ({"skill": "sums", "base": "ghost", "method": "distill"}, 400, "pass --source"),
    ({"skill": "sums", "base": "ghost", "method": "rlhf"}, 422, "method"),
    ({"skill": "sums", "base": "ghost", "policy": "../../etc/policy"}, 422, "policy"),
    ({"skill": "sums", "base": "ghost", "policy": "nosuchpreset"}, 400, "nosuchpreset"),
    ({"skill": "sums", "base": "ghost", "budget": 0}, 422, "budget"),
    ({"skill": "sums", "base": "ghost", "extra": 1}, 422, "extra"),
])
def test_bad_job_requests_queue_nothing(api, skills, fake_base, body, status, words):
    before = api.snapshot()
    r = api.client.post("/jobs", headers=AUTH, json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]["message"], r.json()
    assert api.snapshot() == before
