"""Learning jobs via HTTP: queued on the embedded broker (no worker), listed, cancelled, retried."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from .conftest import AUTH

DATA = b'{"prompt": "1+1=", "answer": "2"}\n'


@pytest.fixture(scope="module")
def skills(api, tmp_path_factory):
    for name in ("sums", "echo"):
        task = tmp_path_factory.mktemp("tasks") / f"{name}.yaml"
        task.write_text(f"task: {name}\noutput_type: generate_until\n")
        r = api.client.post("/skills/upload", headers=AUTH,
                            data={"name": name, "suite": str(task)},
                            files={"data": ("d.jsonl", DATA)})
        assert r.status_code == 201, r.text
    return ("sums", "echo")


@pytest.fixture(scope="module")
def queued(api, skills, fake_base):
    ids = []
    for skill in skills:
        r = api.client.post("/jobs", headers=AUTH,
                            json={"skill": skill, "base": fake_base, "policy": "compact",
                                  "budget": 25, "max_steps": 3, "tune_steps": 7,
                                  "lr": 0.002, "seed": 5, "batch_size": 4,
                                  "train": {"warmup_frac": 0.2}, "eval_limit": 9})
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


def test_queue_stores_the_job_and_sends_it(api, queued, fake_base):
    job = api.client.get(f"/jobs/{queued[0]}", headers=AUTH).json()
    assert job["status"] == "queued" and job["kind"] == "learn"
    assert job["celery_task_id"]  # sent to the broker: a worker started later picks it up
    request = job["request"]
    assert request["skill"] == "sums" and request["base"] == fake_base
    assert request["budget"] == 0.25 and request["eval_limit"] == 9
    sft = request["sft"]  # the same request `skillstore learn` builds, every setting kept
    assert (sft["max_steps"], sft["lr"], sft["seed"], sft["batch_size"], sft["warmup_frac"]) \
        == (3, 0.002, 5, 4, 0.2)
    assert request["tune_steps"] == 7 and job["steps"] == {}


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
    assert running.status_code == 409
    assert "only failed or cancelled" in running.json()["error"]["message"]
    assert c.get("/jobs/999999", headers=AUTH).status_code == 404
    assert c.post("/jobs/999999/cancel", headers=AUTH).status_code == 404
    assert c.get("/jobs/abc", headers=AUTH).status_code == 422


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"skill": "nope", "base": "ghost"}, 404, "No skill named 'nope'"),
    ({"skill": "sums", "base": "ghost", "method": "distill"}, 422, "--source NAME"),
    ({"skill": "sums", "base": "ghost", "train": {"nosuch": 1}}, 422, "sft.nosuch"),
    ({"skill": "sums", "base": "ghost", "dpo": {"beta": 0.1}}, 422, "pass --method dpo"),
    ({"skill": "sums", "base": "ghost", "gate": {"max_drop": 2}}, 422, "gate.max_drop"),
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
    if status == 422 and "details" in r.json()["error"]:  # the field is named for a program too
        assert r.json()["error"]["details"][0]["loc"]
    assert api.snapshot() == before
