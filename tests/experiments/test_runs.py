"""Experiments from the edges: `skillstore experiment run | list | show | wait | cancel` and the
HTTP API, with bad input refused before anything is queued, and one experiment end to end on a
real worker."""

from __future__ import annotations

import hashlib
import json
import random
import re

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from skillstore.catalog import add_skill, init_workspace, register_base
from skillstore.catalog.db import make_engine, sqlite_path
from skillstore.catalog.models import Experiment, Skill
from skillstore.curriculum.skills import SKILLS
from skillstore.routing import NONE_CLASS
from skillstore.settings import Settings
from tests.conftest import run_cli
from tests.workerenv import FAST_TRAIN, make_env

from .conftest import spec_doc

TOKEN = "experiments-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def catalog(workspace):
    """A workspace with the spec fixture's base and skills (rows only: nothing runs here)."""
    cat = init_workspace(Settings(home=workspace,
                                  api_token_hashes=(hashlib.sha256(TOKEN.encode()).hexdigest(),)))
    with cat.session() as s:
        register_base(s, name="tiny", uri="/models/tiny", architecture="LlamaForCausalLM",
                      fingerprint="sha256:" + "0" * 64)
        for name in ("arith", "sort"):
            add_skill(s, name=name, suite=f"{name}_suite", description=name)
    yield cat
    cat.close()


def experiments(cat) -> int:
    with cat.session() as s:
        return s.scalar(sa.select(sa.func.count()).select_from(Experiment))


def broker_messages(settings) -> int:
    """Messages the embedded broker holds (none before its table exists)."""
    engine = make_engine(f"sqlite:///{sqlite_path(settings.broker_url.removeprefix('sqla+'))}")
    try:
        if "kombu_message" not in sa.inspect(engine).get_table_names():
            return 0
        with engine.connect() as conn:
            return conn.scalar(sa.text("SELECT count(*) FROM kombu_message"))
    finally:
        engine.dispose()


def write_spec(tmp_path, **changes):
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec_doc(**changes)))  # JSON is YAML
    return path


def sort_jsonl(path, rows: int = 250) -> None:
    """A user's own JSONL skill: ``rows`` distinct prompts of the curriculum's sort skill (250:
    the fewest whose default split has the 50 test rows a held-out suite needs)."""
    rng, seen = random.Random(7), {}
    while len(seen) < rows:
        row = SKILLS["sort"].sample(rng)
        seen.setdefault(row["prompt"], {"prompt": row["prompt"], "answer": row["answer"]})
    path.write_text("".join(json.dumps(r) + "\n" for r in seen.values()))


def skill_rows(cat) -> dict[str, dict | None]:
    with cat.session() as s:
        return {k.name: k.heldout for k in s.scalars(sa.select(Skill))}


def test_an_impossible_stage_is_refused_before_anything_is_queued(catalog, tmp_path, capsys):
    path = write_spec(tmp_path, sources=["tiny"], methods={"lora_seq": None}, skills=[
        {"name": "arith"}, {"name": "sort", "method": "dpo", "source": "tiny"}])
    code, out, err = run_cli(capsys, "experiment", "run", str(path))
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in out + err, err
    assert "skill 'sort' learns by dpo, which lora_seq cannot" in err
    assert experiments(catalog) == 0 and broker_messages(catalog.settings) == 0


def test_a_skill_given_as_data_is_registered_with_a_held_out_suite_once(catalog, tmp_path,
                                                                         capsys):
    """A spec's JSONL skill is registered when the spec is queued, as `skill add` registers it
    (a 50-row test half scored by the stage's metric); queued again, the same file reuses it."""
    sort_jsonl(tmp_path / "k.jsonl")
    path = write_spec(tmp_path, skills=[{"name": "arith"},
                                        {"name": "k", "data": "k.jsonl", "metric": "exact_match"}])
    for queued in (1, 2):
        code, out, err = run_cli(capsys, "experiment", "run", str(path), "--json")
        assert code == 0, err
        assert experiments(catalog) == queued and broker_messages(catalog.settings) == 4 * queued
    heldout = skill_rows(catalog)["k"]
    assert (heldout["n_test"], heldout["n_train"], heldout["metric"]) == (50, 200, "exact_match")
    code, out, err = run_cli(capsys, "skill", "show", "k", "--json")
    assert code == 0 and json.loads(out)["description"] == "registered by experiment two-skills"


@pytest.mark.parametrize(("content", "metric", "message"), [
    ('{"prompt": "a", "answer": "b"}\nnot json\n', None, "k.jsonl:2: "),
    (250, "number", "has no number for metric number"),
    ("".join(json.dumps({"prompt": f"p{i}", "answer": "x"}) + "\n" for i in range(40)), None,
     "too small to judge or learn from"),
    (200, None, "pass test_size between 50 and 100"),
])
def test_a_bad_data_skill_is_refused_before_anything_is_stored(catalog, tmp_path, capsys,
                                                               content, metric, message):
    data = tmp_path / "k.jsonl"
    if isinstance(content, int):
        sort_jsonl(data, rows=content)
    else:
        data.write_text(content)
    stage = {"name": "k", "data": "k.jsonl", **({"metric": metric} if metric else {})}
    path = write_spec(tmp_path, skills=[{"name": "arith"}, stage])
    code, out, err = run_cli(capsys, "experiment", "run", str(path))
    assert code == 1 and err.count("\n") == 1 and message in err, err
    assert "--metric" not in err and "--test-size" not in err, err  # a spec has keys, not flags
    assert experiments(catalog) == 0 and broker_messages(catalog.settings) == 0
    assert "k" not in skill_rows(catalog)
    assert not (catalog.settings.home / "suites" / "k").exists()


def test_data_for_a_registered_skill_must_be_the_file_it_came_from(catalog, tmp_path, capsys):
    sort_jsonl(tmp_path / "k.jsonl")
    sort_jsonl(tmp_path / "other.jsonl", rows=260)
    first = write_spec(tmp_path, skills=[{"name": "arith"}, {"name": "k", "data": "k.jsonl"}])
    assert run_cli(capsys, "experiment", "run", str(first))[0] == 0
    cases = [({"name": "k", "data": "other.jsonl"}, "registered already from other data"),
             ({"name": "k", "data": "k.jsonl", "metric": "loglikelihood"},
              "with metric exact_match, not loglikelihood; drop it"),
             ({"name": "k", "data": "k.jsonl", "test_size": 60}, "test_size 50, not 60")]
    for stage, message in cases:
        path = write_spec(tmp_path, skills=[{"name": "arith"}, stage])
        code, out, err = run_cli(capsys, "experiment", "run", str(path))
        assert code == 1 and err.count("\n") == 1 and message in err, err
    assert experiments(catalog) == 1


def test_experiment_show_fits_80_columns_with_errors_whole(catalog, tmp_path, capsys,
                                                           monkeypatch):
    from skillstore.experiments.catalog import begin_run, fail_run, report_progress

    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli(capsys, "experiment", "run", str(write_spec(tmp_path)), "--json")
    assert code == 0, err
    doc = json.loads(out)
    error = ("could not reach the broker at 'redis://127.0.0.1:6379/0': connection refused; "
             "start the broker or fix SKILLSTORE_BROKER_URL")
    with catalog.session() as s:
        run_id, running = (run.id for run in s.get(Experiment, doc["id"]).runs[:2])
        assert fail_run(s, run_id, error)
        assert begin_run(s, running) is not None
        assert not report_progress(s, running, "reverse:train", 0.4)
        s.commit()
    code, out, err = run_cli(capsys, "experiment", "show", str(doc["id"]))
    assert code == 0, err
    wide = [line for line in out.splitlines() if len(line) > 80]
    assert not wide, wide
    assert error in " ".join(line.strip() for line in out.splitlines()), out
    assert re.search(rf"^{run_id} +\w+ +\d+ +failed\b", out, re.M), out  # one line a run
    # A running run names its step and how far it is, as the worker reported them.
    assert re.search(rf"^{running} +\w+ +\d+ +reverse:train 40% ", out, re.M), out


def test_an_unknown_experiment_is_one_line_naming_the_fix(catalog, capsys):
    for command in ("show", "wait", "cancel"):
        code, out, err = run_cli(capsys, "experiment", command, "42")
        assert code == 1 and err == "error: No experiment '42'; list them with `skillstore " \
                                    "experiment list`.\n", (command, err)
    code, out, _ = run_cli(capsys, "experiment", "list")
    assert code == 0 and "No experiments yet" in out


def test_the_api_queues_lists_shows_and_cancels(catalog, tmp_path):
    from skillstore.api import create_api

    settings = catalog.settings.model_copy(update={"api_path_roots": (tmp_path,)})
    with TestClient(create_api(settings)) as client:
        data = tmp_path / "k.jsonl"
        data.write_text('{"prompt": "a", "answer": "b"}\n')
        refused = client.post("/experiments", headers=AUTH, json=spec_doc(
            skills=[{"name": "arith"}, {"name": "k", "data": str(data)}]))
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["message"].endswith(
            "register it with your own task by `skillstore skill add --suite`.")
        outside = client.post("/experiments", headers=AUTH, json=spec_doc(
            skills=[{"name": "arith"}, {"name": "k", "data": "/etc/hostname"}]))
        assert outside.status_code == 400 and "outside the folders" in outside.text
        bad = client.post("/experiments", headers=AUTH, json=spec_doc(colour="blue"))
        assert bad.status_code == 422 and "colour: no such key" in bad.json()["error"]["message"]
        assert experiments(catalog) == 0 and broker_messages(catalog.settings) == 0

        made = client.post("/experiments", headers=AUTH, json=spec_doc())
        assert made.status_code == 201, made.text
        doc = made.json()
        assert doc["status"] == "queued" and doc["run_counts"] == {"queued": 4}
        assert broker_messages(catalog.settings) == 4  # one task per (method, seed)
        listed = client.get("/experiments", headers=AUTH).json()
        assert listed["total"] == 1 and listed["items"][0]["id"] == doc["id"]
        assert client.get(f"/experiments/{doc['id']}", headers=AUTH).json() == doc
        assert client.get("/experiments/two-skills", headers=AUTH).json()["id"] == doc["id"]
        assert client.get("/experiments/7", headers=AUTH).status_code == 404
        cancelled = client.post(f"/experiments/{doc['id']}/cancel", headers=AUTH).json()
        assert cancelled["status"] == "cancelled"
        assert {r["status"] for r in cancelled["runs"]} == {"cancelled"}
        again = client.post(f"/experiments/{doc['id']}/cancel", headers=AUTH)
        assert again.status_code == 409 and "nothing to cancel" in again.text


def test_an_experiment_runs_on_a_real_worker_and_its_packs_enter_the_catalog(
        tmp_path, tiny_zoo, monkeypatch, capsys):
    """Two skills, the second a user's JSONL given as data, one seed, a few steps, naive_ft,
    graft and multi_lora on one worker: each run's result holds the 2x2 matrix and its metrics,
    the JSONL skill scored on its held-out half, the experiment succeeds, the graft run's
    packs are catalog candidates whose `pack show` names the experiment, and multi_lora routes
    its two adapters with the general suite's prompts as the router's NONE class and records
    what its one-point sweep chose."""
    env = make_env(tmp_path, tiny_zoo)
    monkeypatch.setenv("SKILLSTORE_HOME", str(env.settings.home))
    for var in ("DATABASE_URL", "BLOB_URL", "BROKER_URL", "RESULT_BACKEND"):
        monkeypatch.delenv(f"SKILLSTORE_{var}", raising=False)
    sort_jsonl(tmp_path / "sorting.jsonl")
    path = write_spec(tmp_path, base="tiny-llama",
                      skills=[{"name": "reverse"}, {"name": "sorting", "data": "sorting.jsonl"}],
                      methods={"naive_ft": None, "graft": {"router": "tag"},
                               "multi_lora": {"ranks": [4], "lrs": [3e-3]}}, seeds=[0],
                      eval_limit=10, train=FAST_TRAIN)
    code, out, err = run_cli(capsys, "experiment", "run", str(path), "--json")
    assert code == 0, err
    exp_id = json.loads(out)["id"]
    with env.worker():
        code, out, err = run_cli(capsys, "experiment", "wait", str(exp_id), "--timeout", "300")
    logs = "".join(p.read_text()[-3000:] for p in env.logs.glob("*.log"))
    assert code == 0, f"{out}{err}\n{logs}"
    assert out.strip().splitlines()[-1] == f"experiment {exp_id} succeeded: succeeded 3"
    code, out, _ = run_cli(capsys, "experiment", "show", str(exp_id), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["status"] == "succeeded"
    graft, run, lora = doc["runs"]  # in the order methods are listed (spec.METHODS)
    result = run["result"]
    assert (run["method"], run["seed"], run["status"], run["error"]) == \
        ("naive_ft", 0, "succeeded", None)
    assert (graft["method"], graft["status"]) == ("graft", "succeeded")
    assert [p["name"] for p in graft["result"]["packs"]] == ["reverse@v1", "sorting@v1"]
    code, out, err = run_cli(capsys, "pack", "show", "sorting@v1", "--json")
    assert code == 0, err
    pack = json.loads(out)
    assert (pack["status"], pack["blob_digest"]) == \
        ("candidate", graft["result"]["packs"][1]["digest"])
    assert pack["experiment"] == {"experiment_id": exp_id, "experiment": doc["name"],
                                  "run_id": graft["id"], "method": "graft", "seed": 0}
    code, out, _ = run_cli(capsys, "experiment", "show", str(exp_id))
    assert code == 0 and re.findall(r"\b\w+@v\d+\b", out) == ["reverse@v1", "sorting@v1"]
    # The graft run ends in a state of its packs behind its router, never the head.
    assert run["state_id"] is None and lora["state_id"] is None  # no catalog packs: no state
    code, out, err = run_cli(capsys, "state", "show", str(graft["state_id"]), "--json")
    assert code == 0, err
    state = json.loads(out)
    assert state["packs"] == [f"{p['name']}x1" for p in graft["result"]["packs"]]
    assert (state["router"], state["current"]) == ("tag", False)
    assert result["skills"] == ["reverse", "sorting"]
    matrix = result["accuracy_matrix"]
    assert len(matrix) == 2 and all(len(row) == 2 for row in matrix)
    # The zoo's eight test prompts; the JSONL's 50 held-out ones at the spec's eval_limit.
    assert result["n"] == [[8, 10], [8, 10]]
    assert set(result["metrics"]) >= {"average_accuracy", "bwt", "forgetting",
                                      "forward_transfer"}
    assert all(b > 0 for b in result["bytes_per_skill"].values())
    assert result["train"]["max_steps"] == FAST_TRAIN["max_steps"]
    assert (lora["method"], lora["status"], lora["error"]) == ("multi_lora", "succeeded", None)
    chosen = lora["result"]
    assert chosen["chosen"] == {"rank": 4, "lr": 3e-3}
    assert chosen["sweep"]["points"] == []  # a grid of one point: nothing to sweep
    assert len(chosen["accuracy_matrix"]) == 2 and chosen["n"] == [[8, 10], [8, 10]]
    assert [r["router"] for r in chosen["routers"]] == ["learned", "learned"]
    assert chosen["routers"][0]["classes"] == ["reverse", NONE_CLASS]
    b = chosen["bytes_per_skill"]
    assert b["reverse"] == b["sorting"] > 0  # one rank-4 adapter each
    env.catalog.close()


def test_runs_are_sent_seed_by_seed(catalog, tmp_path, capsys):
    """Every method's first seed goes first, so a LoRA method's later seeds usually start after
    its first seed's sweep finished and reuse its choice."""
    import base64

    path = write_spec(tmp_path)  # naive_ft and joint, seeds 0 and 1
    code, out, err = run_cli(capsys, "experiment", "run", str(path), "--json")
    assert code == 0, err
    runs = {r["id"]: (r["method"], r["seed"]) for r in json.loads(out)["runs"]}
    engine = make_engine(f"sqlite:///{sqlite_path(catalog.settings.broker_url.removeprefix('sqla+'))}")
    try:
        with engine.connect() as conn:
            payloads = conn.scalars(sa.text("SELECT payload FROM kombu_message ORDER BY id")).all()
    finally:
        engine.dispose()
    sent = []
    for payload in payloads:
        message = json.loads(payload)
        sent.append(runs[json.loads(base64.b64decode(message["body"]))[0][0]])
    assert sent == [("naive_ft", 0), ("joint", 0), ("naive_ft", 1), ("joint", 1)]
