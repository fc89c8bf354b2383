"""Heterogeneous fusion in a graft run: a skill distilled from a Llama and a Qwen2 source gets
one pack per source, and each pack and each fused variant (routed, TIES, task arithmetic) is
scored on that skill's suite, on the same prompts; a spec naming an unregistered source is
refused before anything is queued."""

from __future__ import annotations

import dataclasses

import pytest

from skillstore.blobstore import BlobStore
from skillstore.errors import NotFoundError
from skillstore.experiments import distilled as distilled_mod
from skillstore.experiments import parse_spec
from skillstore.experiments.hetero import VARIANTS
from skillstore.experiments.methods import RunInputs, check_runnable, execute
from skillstore.experiments.spec import check_spec, load_spec
from skillstore.packs import read_pack
from skillstore.training.baselines import Stage
from skillstore.zoo.models import ModelSpec, qwen2_model
from tests.composition.llsuites import ROWS
from tests.composition.tinymodel import save, tiny_tokenizer

from .conftest import spec_doc
from .test_methods import QUICK
from .test_methods import ll_suites as suites  # noqa: F401 - a fixture

SOURCES = ["src-llama", "src-qwen2"]


@pytest.fixture
def qwen2_dir(tmp_path):
    import torch

    torch.manual_seed(0)
    tok = tiny_tokenizer()
    spec = ModelSpec(hidden=32, layers=1, heads=2, intermediate=64, max_positions=64)
    return save(qwen2_model(spec, tok), tok, tmp_path / "qwen2")


def hetero_inputs(base_dir, qwen2_dir, suites) -> RunInputs:  # noqa: F811
    spec = parse_spec(spec_doc(
        sources=SOURCES, seeds=[3], eval_limit=10, train=QUICK, methods={"graft": {}},
        skills=[{"name": "alpha"},
                {"name": "beta", "method": "distill", "source": SOURCES}]))
    check_runnable(spec)  # distill stages run now
    stages = [Stage(n, rows, rows[:2], []) for n, rows in ROWS.items()]
    return RunInputs(1, "graft", 3, spec, str(base_dir), stages, suites,
                     source_dirs={"src-llama": str(base_dir), "src-qwen2": str(qwen2_dir)})


def test_a_skill_from_two_sources_makes_two_packs_scored_with_their_fusions(
        tiny_world, qwen2_dir, suites, tmp_path, monkeypatch):  # noqa: F811
    # Untrained sources answer nonsense; let the checker keep whatever they say.
    monkeypatch.setattr(distilled_mod, "stage_checker", lambda stage: lambda p, a: True)
    store = BlobStore(tmp_path / "blobs")
    run = dataclasses.replace(hetero_inputs(tiny_world.base_dir, qwen2_dir, suites), store=store)
    result = execute(run, lambda stage, f: None)
    assert set(result["distilled"]["beta"]) == set(SOURCES)
    assert all(s["n_kept"] > 0 for s in result["distilled"]["beta"].values())
    [fusion] = result["fusion"]
    assert fusion["skill"] == "beta" and fusion["sources"] == SOURCES
    variants = fusion["variants"]
    assert list(variants) == [*SOURCES, *VARIANTS]
    prompts = None
    for name, v in variants.items():
        assert v["n"] == len(ROWS["beta"]) and 0.0 <= v["score"] <= 1.0 and v["bytes"] > 0
        assert v["samples"] is not None and len(v["samples"]) == v["n"]
        # paired: every variant was scored on the same prompts
        prompts = prompts or list(v["samples"])
        assert list(v["samples"]) == prompts, name
    one, two = (variants[s] for s in SOURCES)
    assert one["digest"] != two["digest"]  # one pack per source, from different rows
    assert variants["routed"]["bytes"] == one["bytes"] + two["bytes"]
    assert variants["routed"]["router"]["classes"] == [f"beta@{s}" for s in SOURCES]
    for name in ("ties", "task_arithmetic"):  # the fused pack is stored, made from both
        fused = read_pack(store.local_path(variants[name]["digest"]))
        made_from = [read_pack(store.local_path(v["digest"])).digest for v in (one, two)]
        assert fused.manifest["created_from"]["fused_from"] == made_from
    assert variants["task_arithmetic"]["scales"] == [0.5, 0.5]
    # the continual matrix routes the first source's pack for the two-source skill
    assert {p["skill"]: p["digest"] for p in result["packs"]}["beta"] == one["digest"]


def test_a_skill_naming_a_source_the_catalog_lacks_is_refused(session):
    from skillstore.catalog import register_base

    register_base(session, name="src-gpt2", uri="/models/gpt2", architecture="GPT2LMHeadModel",
                  fingerprint="sha256:" + "1" * 64)
    spec = parse_spec(spec_doc(
        sources=["src-gpt2", "src-qwen2"], methods={"graft": {}},
        skills=[{"name": "arith"},
                {"name": "sort", "method": "distill", "source": ["src-gpt2", "src-qwen2"]}]))
    with pytest.raises(NotFoundError, match="src-qwen2"):
        check_spec(session, spec)


def test_the_builtin_hetero_spec_loads_by_name():
    spec = load_spec("hetero")
    multi = [s for s in spec.skills if len(s.source) > 1]
    assert len(multi) == 1 and set(multi[0].source) == {"src-gpt2", "src-qwen2"}
    single = {s.source for s in spec.skills if len(s.source) == 1}
    assert single == {("src-gpt2",), ("src-qwen2",)}
    check_runnable(spec)
