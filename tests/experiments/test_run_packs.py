"""A finished graft run's packs enter the catalog: one candidate pack per skill, its bytes the
stored file's, trained on the experiment's base, and linked to its run so `pack show` and the API
name the experiment; the state they make behind the run's last router becomes the run's state,
and scores what the run scored; a run stopped meanwhile, or whose pack file is damaged, enters
none."""

from __future__ import annotations

import dataclasses

import pytest
import sqlalchemy as sa

from skillstore.blobstore import BlobStore
from skillstore.catalog import (
    PackStatus,
    add_skill,
    get_pack,
    get_state,
    list_packs,
    migrate,
    pack_detail,
    register_base,
)
from skillstore.catalog.db import make_engine, session_scope
from skillstore.catalog.models import ExperimentPack, ExperimentRun
from skillstore.errors import SkillstoreError
from skillstore.experiments.catalog import (
    begin_run,
    cancel_experiment,
    create_experiment,
    finish_run,
)
from skillstore.experiments.methods import execute
from skillstore.experiments.sequential import suite_scores
from skillstore.fingerprint import fingerprint_checkpoint
from skillstore.models import load_causal_lm
from skillstore.states.materialise import materialise
from skillstore.states.view import load_view
from tests.composition.llsuites import ROWS, write_ll_suites

from .test_methods import inputs


@pytest.fixture(scope="module")
def graft_result(tiny_world, tmp_path_factory) -> tuple[dict, BlobStore, object]:
    """One graft run's result on the tiny base, its packs in a blob store (made once)."""
    tmp = tmp_path_factory.mktemp("graft-run")
    run = inputs("graft", tiny_world.base_dir, write_ll_suites(tmp))
    store = BlobStore(tmp / "blobs")
    return execute(dataclasses.replace(run, store=store), lambda stage, f: None), store, run


@pytest.fixture
def session(tmp_path, tiny_world):
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    with session_scope(engine) as s:
        register_base(s, name="tiny", uri=str(tiny_world.base_dir),
                      architecture="LlamaForCausalLM",
                      fingerprint=fingerprint_checkpoint(tiny_world.base_dir))
        for name in ROWS:
            add_skill(s, name=name, suite=f"{name}_suite", description=name)
        s.flush()
        yield s
    engine.dispose()


def started_run(session, run_inputs) -> int:
    experiment = create_experiment(session, run_inputs.spec)
    run = experiment.runs[0]
    begin_run(session, run.id)
    return run.id


def test_a_finished_graft_run_enters_one_candidate_pack_per_skill_linked_to_it(
        session, graft_result):
    result, store, run_inputs = graft_result
    run_id = started_run(session, run_inputs)
    assert finish_run(session, run_id, result, blobs=store)
    page = list_packs(session)
    assert page.total == len(ROWS)
    recorded = {r["skill"]: r for r in session.get_one(ExperimentRun, run_id).result["packs"]}
    for name in ROWS:
        record = recorded[name]
        pack = get_pack(session, record["name"])  # the result names it as the catalog does
        assert pack.id == record["pack_id"] and pack.skill.name == name
        assert pack.status == PackStatus.candidate  # scored by the experiment, not the gate
        made = {p["skill"]: p for p in result["packs"]}[name]  # the run's own record
        assert pack.blob_digest == record["digest"] == made["digest"]
        assert pack.size_bytes == made["bytes"] == len(store.get_bytes(pack.blob_digest))
        assert pack.compression_ratio == pytest.approx(
            made["dense_fp16_bytes"] / pack.size_bytes)
        assert pack.codecs and pack.method == "sft"
        assert pack.metrics["run_id"] == run_id and pack.metrics["seed"] == 3
        assert pack.metrics["finetune"]["value"] == result["finetune_scores"][name]
        verdict = {v["skill"]: v for v in result["gate"]}[name]  # the spec gate's, kept
        assert pack.metrics["gate"] == {"verdict": verdict["verdict"],
                                        "summary": verdict["summary"]}
        detail = pack_detail(session, pack)
        assert detail["experiment"] == {"experiment_id": pack.metrics["experiment_id"],
                                        "experiment": run_inputs.spec.name, "run_id": run_id,
                                        "method": "graft", "seed": 3}
        assert [(p["kind"], p["name"]) for p in detail["parents"]] == [("trained_on", "tiny")]
        assert detail["history"][0]["actor"].endswith(f"/run:{run_id}")


def test_a_finished_graft_run_ends_in_the_state_of_its_packs_behind_its_router(
        session, graft_result):
    result, store, run_inputs = graft_result
    run_id = started_run(session, run_inputs)
    assert finish_run(session, run_id, result, blobs=store)
    run = session.get_one(ExperimentRun, run_id)
    state = get_state(session, run.state_id)
    assert [m.pack_id for m in state.members] == [r["pack_id"] for r in run.result["packs"]]
    last = result["routers"][-1]
    assert state.router == last["router"] == "learned"
    assert state.router_blob_digest == last["blob_digest"]
    assert state.router_config["top_k"] == run_inputs.spec.settings("graft").top_k
    assert f"run {run_id}" in state.description
    # Loaded as any state is (pack files, router file), it scores the run's last row.
    model, tokenizer = load_causal_lm(run_inputs.base_dir)
    with materialise(model, load_view(session, state), store,
                     pad_token_id=tokenizer.pad_token_id):
        row = suite_scores(model, tokenizer, run_inputs.suites,
                           limit=run_inputs.spec.eval_limit)
    assert [s.value for s in row] == result["accuracy_matrix"][-1]


def test_a_run_cancelled_before_it_finished_enters_no_pack(session, graft_result):
    result, store, run_inputs = graft_result
    run_id = started_run(session, run_inputs)
    cancel_experiment(session, run_inputs.spec.name)
    assert not finish_run(session, run_id, result, blobs=store)
    assert list_packs(session).total == 0
    assert session.get_one(ExperimentRun, run_id).state_id is None


def test_a_damaged_pack_file_is_refused_and_enters_nothing(session, graft_result, tmp_path):
    result, store, run_inputs = graft_result
    damaged = BlobStore(tmp_path / "damaged")
    for record in result["packs"]:
        data = bytearray(store.get_bytes(record["digest"]))
        digest = damaged.put_bytes(bytes(data))
        with open(damaged.path(digest), "r+b") as f:  # flip a byte behind the store's back
            f.seek(len(data) // 2)
            f.write(bytes([data[len(data) // 2] ^ 0xFF]))
    run_id = started_run(session, run_inputs)
    with pytest.raises(SkillstoreError, match="sha256"):
        with session.begin_nested():
            finish_run(session, run_id, result, blobs=damaged)
    assert list_packs(session).total == 0
    assert session.scalar(sa.select(sa.func.count()).select_from(ExperimentPack)) == 0
