"""A finished graft run's packs enter the catalog: one candidate pack per skill, its bytes the
stored file's, trained on the experiment's base, and linked to its run so `pack show` and the API
name the experiment; the state they make behind the run's last router becomes the run's state,
and scores what the run scored; a run stopped meanwhile, or whose pack file is damaged, enters
none."""

from __future__ import annotations

import dataclasses
import json

import pytest
import sqlalchemy as sa

from skillstore.blobstore import BlobStore
from skillstore.catalog import (
    PackStatus,
    add_skill,
    current_head,
    get_pack,
    get_state,
    list_packs,
    migrate,
    pack_detail,
    register_base,
)
from skillstore.catalog.db import make_engine, session_scope
from skillstore.catalog.models import (
    BaseCheckpoint,
    Experiment,
    ExperimentPack,
    ExperimentRun,
    Promotion,
    Skill,
)
from skillstore.errors import SkillstoreError
from skillstore.experiments.adopt import adopt_run, graft_run
from skillstore.experiments.catalog import (
    begin_run,
    cancel_experiment,
    create_experiment,
    finish_run,
)
from skillstore.experiments.methods import execute
from skillstore.experiments.sequential import suite_scores
from skillstore.fingerprint import fingerprint_checkpoint
from skillstore.gate.policy import GatePolicy
from skillstore.models import load_causal_lm
from skillstore.settings import Settings
from skillstore.skilldata import rows_blob
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


def adoptable(session, graft_result, gate: GatePolicy) -> ExperimentRun:
    """A finished graft run of an experiment judged by ``gate``, its skills' suites the ones the
    run scored (as `skill add` registers a suite: the task YAML)."""
    result, store, run_inputs = graft_result
    for suite in run_inputs.suites:
        skill = session.scalar(sa.select(Skill).where(Skill.name == suite.name))
        skill.suite = str(suite.include_path / f"{suite.tasks[0]}.yaml")
        data = suite.include_path / "train.jsonl"  # the router's prompts, as `skill add` keeps
        data.write_text("".join(json.dumps(r) + "\n" for r in ROWS[suite.name]))
        skill.data_uri, skill.data_sha256 = str(data), rows_blob(store, ROWS[suite.name])
    experiment = create_experiment(session, run_inputs.spec.model_copy(update={"gate": gate}))
    run = experiment.runs[0]
    begin_run(session, run.id)
    assert finish_run(session, run.id, result, blobs=store)
    return run


PERMISSIVE = GatePolicy(min_gain=-1.0, max_drop=1.0, max_general_drop=1.0, min_fidelity=0.5)


def test_adopting_a_graft_run_judges_each_pack_on_the_head_it_would_join(
        session, graft_result, tmp_path):
    _, store, run_inputs = graft_result
    run = adoptable(session, graft_result, PERMISSIVE)
    base = session.get(BaseCheckpoint, session.get(Experiment, run.experiment_id).base_id)
    settings = Settings(home=tmp_path / "home")
    adopted = adopt_run(session, settings, store, run)
    packs = [get_pack(session, r["pack_id"]) for r in run.result["packs"]]
    assert [a.name for a in adopted] == [r["name"] for r in run.result["packs"]]
    assert [a.verdict for a in adopted] == ["promoted"] * len(ROWS)
    head = get_state(session, current_head(session, base.id).state_id)
    # the head is the base plus every pack, in order, behind a router retrained for them
    assert [m.pack_id for m in head.members] == [p.id for p in packs]
    assert head.router == "learned" and head.router_blob_digest
    first = get_state(session, adopted[0].state_id)
    assert [m.pack_id for m in first.members] == [packs[0].id]  # judged on base + its pack
    assert head.id == adopted[-1].state_id and head.parent_id == first.id
    for pack, outcome in zip(packs, adopted, strict=True):
        assert pack.status == PackStatus.promoted
        audit = session.scalar(sa.select(Promotion).where(Promotion.pack_id == pack.id)
                               .order_by(Promotion.id.desc()).limit(1))
        assert audit.actor == f"experiment:{run.experiment_id}/run:{run.id}/adopt"
        assert audit.reason == outcome.summary and audit.report_ref  # its HTML report
        # the fine-tune's per-sample scores came with the run: fidelity was checked
        assert pack.metrics["fidelity"]["finetune"] == pack.metrics["finetune"]["value"]
        assert "fidelity not checked" not in outcome.summary
        # the printed line says the verdict once: the audit line begins with it
        assert outcome.summary.startswith("promoted: ")
        assert outcome.line == f"{outcome.name} promoted: {outcome.summary[len('promoted: '):]}"
    # a second adopt judges nothing again, and says how each pack was decided
    again = adopt_run(session, settings, store, run)
    assert [a.verdict for a in again] == ["promoted"] * len(ROWS)
    assert all(a.summary.startswith("decided before (experiment:") for a in again)
    assert all(a.line == f"{a.name} promoted: {a.summary}" for a in again)
    assert session.scalar(sa.select(sa.func.count()).select_from(Promotion)
                          .where(Promotion.to_status == PackStatus.promoted)) == len(ROWS)


def test_a_pack_the_gate_refuses_leaves_the_head_where_it_was(session, graft_result, tmp_path):
    _, store, _ = graft_result
    # a gain of 1.0 cannot be certified on a handful of prompts: nothing is promoted
    run = adoptable(session, graft_result, PERMISSIVE.model_copy(update={"min_gain": 1.0}))
    adopted = adopt_run(session, Settings(home=tmp_path / "home"), store, run)
    assert {a.verdict for a in adopted} <= {"rejected", "inconclusive"}
    base_id = session.get(Experiment, run.experiment_id).base_id
    assert current_head(session, base_id) is None
    assert all(get_pack(session, a.pack_id).status == PackStatus.rejected for a in adopted)


def test_a_second_adopt_says_an_inconclusive_verdict_again(session, graft_result, tmp_path):
    """A pack the gate could not decide on is stored as rejected; adopting the run again must
    still call it inconclusive (it said "rejected", from the stored status)."""
    _, store, _ = graft_result
    # a gain of at least 0.5 on 3-4 prompts: the estimate 0 cannot be told from it either way
    run = adoptable(session, graft_result, PERMISSIVE.model_copy(update={"min_gain": 0.5}))
    settings = Settings(home=tmp_path / "home")
    adopted = adopt_run(session, settings, store, run)
    assert [a.verdict for a in adopted] == ["inconclusive"] * len(adopted)
    again = adopt_run(session, settings, store, run)
    assert [a.verdict for a in again] == ["inconclusive"] * len(adopted), [a.line for a in again]
    assert all(a.summary.startswith("decided before (experiment:") for a in again)


def test_only_a_succeeded_graft_run_can_be_adopted(session, graft_result):
    _, _, run_inputs = graft_result
    experiment = create_experiment(session, run_inputs.spec)
    with pytest.raises(SkillstoreError, match="is queued; only a succeeded run"):
        graft_run(session, experiment.id)
    with pytest.raises(SkillstoreError, match="has no graft run 999"):
        graft_run(session, experiment.id, 999)
