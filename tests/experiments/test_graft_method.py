"""The graft method as an experiment run on a tiny base: one pack per skill fine-tuned from the
base, compressed by the spec's policy or budget, stored as a blob and routed; its result records
the packs' digests, sizes and errors, and the same seed makes the same packs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from skillstore.blobstore import BlobStore
from skillstore.errors import ConfigError
from skillstore.evaluation.cache import Suite
from skillstore.evaluation.scores import Score
from skillstore.experiments import parse_spec
from skillstore.experiments.catalog import RunCancelled
from skillstore.experiments.graft import StagePack, stage_verdicts
from skillstore.experiments.methods import check_runnable, execute
from skillstore.fingerprint import fingerprint_checkpoint
from skillstore.gate.policy import GatePolicy
from skillstore.models import load_causal_lm
from skillstore.packs import read_pack
from skillstore.routing import NONE_CLASS, PackDeltas
from skillstore.routing.routers import traced_routes

from .conftest import spec_doc
from .test_methods import ROWS, inputs
from .test_methods import ll_suites as suites  # noqa: F401 - a fixture

NAMES = list(ROWS)


def graft_run(base_dir, suites, store, seed: int = 3, **settings) -> dict:  # noqa: F811
    run = inputs("graft", base_dir, suites, **settings)
    spec = run.spec.model_copy(update={"seeds": (seed,)})
    return execute(dataclasses.replace(run, seed=seed, spec=spec, store=store),
                   lambda stage, f: None)


@pytest.fixture
def store(tmp_path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def test_a_graft_run_stores_one_pack_per_skill_and_routes_them(tiny_world, suites, store):  # noqa: F811
    result = graft_run(tiny_world.base_dir, suites, store)
    assert result["method"] == "graft" and result["skills"] == NAMES
    matrix = result["accuracy_matrix"]
    assert len(matrix) == 2 and all(len(r) == 2 for r in matrix)
    assert result["n"] == [[len(ROWS[n]) for n in NAMES]] * 2
    assert (result["policy"], result["budget"], result["tune_steps"]) == ("compact", None, 0)
    assert [p["skill"] for p in result["packs"]] == NAMES
    base_fp = fingerprint_checkpoint(tiny_world.base_dir)
    model, _ = load_causal_lm(tiny_world.base_dir, fingerprint=False)
    params = dict(model.named_parameters())
    for record in result["packs"]:
        name, digest = record["skill"], record["digest"]
        stored = store.get_bytes(digest)  # present, and verified against its digest
        assert result["bytes_per_skill"][name] == record["bytes"] == len(stored)
        pack = read_pack(store.local_path(digest))
        assert pack.base_fingerprint == base_fp
        parts = list(pack.decoded())
        assert parts and all(tuple(p.shape) == tuple(params[p.name].shape) for p in parts)
        # compact is lossy: some error, well short of losing the delta
        assert 0.0 < record["rel_error"] < 1.0
        assert 0.0 <= result["finetune_scores"][name] <= 1.0
        assert result["finetune_n"][name] == len(ROWS[name])
    assert result["packs"][0]["digest"] != result["packs"][1]["digest"]
    # The learned router by default: one pack and no general prompts route as none; two learned.
    assert result["router"] == "learned"
    first, second = result["routers"]
    assert first == {"router": "none"}
    assert second["router"] == "learned" and second["classes"] == NAMES
    assert result["router_accuracy"][0] is None
    assert result["router_accuracy"][1] == second["test_accuracy"]
    assert 0.0 <= second["test_accuracy"] <= 1.0
    assert second["test_n"] == sum(len(rows) for rows in ROWS.values())  # every test prompt
    # the spec's gate judged each stage's pack on the run's own rows
    assert [(v["skill"], v["new_skill"]) for v in result["gate"]] == \
        [(n, s.name) for n, s in zip(NAMES, suites, strict=True)]
    assert all(v["verdict"] in ("promoted", "rejected", "inconclusive") for v in result["gate"])
    assert [c["kind"] for c in result["gate"][1]["checks"]][-1] == "drop"


def test_the_general_prompts_are_the_learned_routers_none_class(tiny_world, suites, store):  # noqa: F811
    run = inputs("graft", tiny_world.base_dir, suites)
    general = ("hello there", "what is the weather", "tell me a story")
    result = execute(dataclasses.replace(run, store=store, general=general), lambda s, f: None)
    assert [r["router"] for r in result["routers"]] == ["learned", "learned"]
    assert result["routers"][0]["classes"] == ["alpha", NONE_CLASS]
    assert result["routers"][1]["classes"] == [*NAMES, NONE_CLASS]


def test_a_budget_run_keeps_each_pack_within_its_share_of_the_dense_delta(tiny_world, suites,  # noqa: F811
                                                                          store):
    result = graft_run(tiny_world.base_dir, suites, store, budget=40)
    assert (result["policy"], result["budget"]) == ("compact @ 40%", 40)
    model, _ = load_causal_lm(tiny_world.base_dir, fingerprint=False)
    dense = 2 * sum(p.numel() for p in model.parameters())  # every tensor at fp16
    for name, record in zip(NAMES, result["packs"], strict=True):
        assert record["dense_fp16_bytes"] == dense
        pack = read_pack(store.local_path(record["digest"]))
        assert pack.manifest["policy"]["budget"] == pytest.approx(0.40)
        # The budget bounds the payload; the header (a few KB whatever the model) is not
        # counted, so on this tiny model the file is a little over it.
        payload = sum(e["nbytes"] for e in pack.manifest["tensors"].values())
        header = result["bytes_per_skill"][name] - payload
        assert 0 < payload <= 0.40 * dense and 0 < header < 8192, (payload, header)


def test_the_tag_router_sends_each_suite_to_its_own_pack(tiny_world, suites, store):  # noqa: F811
    _, tok = load_causal_lm(tiny_world.base_dir, fingerprint=False)
    with traced_routes() as trace:
        result = graft_run(tiny_world.base_dir, suites, store, router="tag")
    assert result["routers"] == [{"router": "tag"}] * 2 and result["router_accuracy"] == [None] * 2
    skill_of = {"copy": "alpha", "flip": "beta"}
    got: dict[str, set] = {"alpha": set(), "beta": set()}
    for entry in trace:
        text = tok.decode(list(entry.tokens), skip_special_tokens=True)
        (word,) = [w for w in skill_of if w in text]
        got[skill_of[word]].add(entry.weights)
    assert got["alpha"] == {(("alpha", 1.0),)}
    # beta's suite ran on the plain base before its pack existed, then on its own pack only
    assert got["beta"] == {(), (("beta", 1.0),)}
    matrix = result["accuracy_matrix"]
    assert matrix[0][1] == result["base_scores"][1]
    assert matrix[1][0] == matrix[0][0]  # the same pack on the same inputs: nothing forgotten


def test_a_graft_run_is_deterministic_for_its_seed(tiny_world, suites, tmp_path):  # noqa: F811
    def run(seed: int, where: str) -> dict:
        return graft_run(tiny_world.base_dir, suites, BlobStore(tmp_path / where), seed=seed,
                         tune_steps=2, tune_objective="teacher")

    first, again, other = run(3, "a"), run(3, "b"), run(4, "c")
    assert first["packs"][0]["tune"]["steps"] == 2
    assert first["packs"][0]["tune"]["objective"] == first["tune_objective"] == "teacher"
    for key in ("accuracy_matrix", "routers", "finetune_scores"):
        assert first[key] == again[key], key
    made = lambda result: [(p["digest"], p["bytes"], p["rel_error"]) for p in result["packs"]]  # noqa: E731
    assert made(first) == made(again)  # the tuning's wall time aside
    assert other["packs"][0]["digest"] != first["packs"][0]["digest"]  # the seed counts


def test_a_graft_run_stops_when_cancelled_and_needs_a_store(tiny_world, suites, store):  # noqa: F811
    def cancelled(stage, fraction):
        raise RunCancelled(f"cancelled during {stage}")

    run = inputs("graft", tiny_world.base_dir, suites)
    with pytest.raises(RunCancelled, match="cancelled during alpha"):
        execute(dataclasses.replace(run, store=store), cancelled)
    assert not list(store.iter_blobs())  # stopped before any pack was made
    with pytest.raises(ConfigError, match="graft stores its packs but was given no blob store"):
        execute(run, lambda s, f: None)


@pytest.mark.parametrize("settings", [{}, {"policy": "compact", "budget": 5, "tune_steps": 100},
                                      {"router": "tag"}, {"router": "none", "top_k": 2}])
def test_graft_is_runnable(settings):
    check_runnable(parse_spec(spec_doc(methods={"graft": settings, "naive_ft": None})))


def _score(hits: list[int]) -> Score:
    samples = {str(i): float(h) for i, h in enumerate(hits)}
    return Score(sum(hits) / len(hits), 0.0, len(hits), samples)


def _stage_pack(skill: str, finetune: Score) -> StagePack:
    return StagePack(skill, "sha256:x", 1, 1, 0.0, 1, finetune, None, PackDeltas(skill, {}))


def test_the_specs_gate_judges_each_stage_against_the_state_before_it():
    """Stage i's routed row against row i-1 (the base's for the first), on the same prompts:
    a learned skill that keeps the earlier one is promoted, one that costs it is rejected as
    forgetting, and the policy is the one given (a stricter gain rejects the same scores;
    the default 1-point drop tolerance leaves 60 unchanged prompts inconclusive)."""
    two = [Suite(name, Path("tasks"), (name,)) for name in ("alpha", "beta")]
    n, none, every = 60, [0] * 60, [1] * 60
    base = [_score(none), _score(none)]
    learned_alpha = [_score(every), _score(none)]
    packs = [_stage_pack("alpha", _score(every)), _stage_pack("beta", _score(every))]

    policy = GatePolicy(max_drop=0.05)  # the demo's: what ~100 prompts can certify
    kept = stage_verdicts(policy, two, base,
                          [learned_alpha, [_score(every), _score(every)]], packs)
    assert [v["skill"] for v in kept] == ["alpha", "beta"]
    assert [v["verdict"] for v in kept] == ["promoted", "promoted"], [v["summary"] for v in kept]
    assert {c["kind"] for c in kept[1]["checks"]} == {"gain", "fidelity", "drop"}
    assert [c["n"] for c in kept[1]["checks"]] == [n] * 3
    default = stage_verdicts(GatePolicy(), two, base,
                             [learned_alpha, [_score(every), _score(every)]], packs)
    assert default[1]["verdict"] == "inconclusive" and default[1]["needed_n"] > n

    forgot = stage_verdicts(policy, two, base,
                            [learned_alpha, [_score(none), _score(every)]], packs)
    assert [v["verdict"] for v in forgot] == ["promoted", "rejected"]
    assert "forgot alpha" in forgot[1]["summary"]

    half = [1, 0] * (n // 2)
    rows, alpha = [[_score(half), _score(none)]], [_stage_pack("alpha", _score(half))]
    assert stage_verdicts(policy, two, base, rows, alpha)[0]["verdict"] == "promoted"
    strict = stage_verdicts(GatePolicy(min_gain=0.9, max_drop=0.05), two, base, rows, alpha)
    assert strict[0]["verdict"] == "rejected"
