"""A skill learned by dpo in an experiment: every method that fine-tunes the whole model runs
SFT on the source's verified answers, then DPO with the answers the source got wrong as the
rejected side, and the run's result records the pairs and the DPO run."""

from __future__ import annotations

import pytest

from skillstore.blobstore import BlobStore
from skillstore.experiments import distilled as distilled_mod
from skillstore.experiments import parse_spec
from skillstore.experiments.methods import RunInputs, execute
from skillstore.training.baselines import Stage
from tests.composition.llsuites import ROWS

from .conftest import spec_doc
from .test_methods import QUICK
from .test_methods import ll_suites as suites  # noqa: F401 - a fixture

DPO = {"max_steps": 2, "batch_size": 2, "samples": 0}


def wrong(answer: str) -> str:
    return answer + "x"


@pytest.fixture
def taught_by_a_source(monkeypatch):
    """A source that answers every prompt right once and wrong once: its wrong answers are
    what DPO must push away from (the untrained test models answer nonsense)."""
    truth = {r["prompt"]: r["answer"] for rows in ROWS.values() for r in rows}

    def source_rows(source, tok, prompts, *, checker=None, progress=None, rejected=None,
                    config=None):
        if rejected is not None:
            for p in prompts:
                rejected.setdefault(p, []).append(wrong(truth[p]))
        rows = [{"prompt": p, "answer": truth[p]} for p in prompts]
        return rows, {"n_prompts": len(prompts), "n_kept": len(rows)}

    monkeypatch.setattr(distilled_mod, "source_rows", source_rows)


def dpo_inputs(method: str, base_dir, suites, store) -> RunInputs:  # noqa: F811
    spec = parse_spec(spec_doc(
        sources=["src"], seeds=[3], eval_limit=10, train=QUICK, dpo=DPO,
        methods={method: {"replay": 2} if method == "replay" else {}},
        skills=[{"name": "alpha"}, {"name": "beta", "method": "dpo", "source": "src"}]))
    stages = [Stage(n, rows, rows[:2], []) for n, rows in ROWS.items()]
    return RunInputs(1, method, 3, spec, str(base_dir), stages, suites, store=store,
                     source_dirs={"src": str(base_dir)})


@pytest.mark.parametrize("method", ["naive_ft", "replay", "graft", "joint", "ties"])
def test_every_whole_model_method_runs_dpo_on_the_sources_wrong_answers(
        method, tiny_world, suites, taught_by_a_source, tmp_path):  # noqa: F811
    run = dpo_inputs(method, tiny_world.base_dir, suites, BlobStore(tmp_path / "blobs"))
    result = execute(run, lambda stage, f: None)
    beta = ROWS["beta"]
    assert result["distilled"]["beta"]["src"]["n_rejected"] == len(beta)
    if method == "graft":
        dpo = {p["skill"]: p.get("dpo") for p in result["packs"]}
        assert dpo["alpha"] is None  # an sft stage: no DPO
        dpo = dpo["beta"]
    elif method == "joint":
        dpo = result["dpo"]  # one DPO run after the joint SFT
    else:
        assert set(result["dpo"]) == {"beta"}
        dpo = result["dpo"]["beta"]
    # Every training prompt of beta got a pair, its rejected side the source's wrong answer.
    assert dpo["pairs"] == {"beta": {"source": len(beta), "greedy": 0, "sampled": 0,
                                     "synthetic": 0, "dropped": 0}}
    assert dpo["steps"] == DPO["max_steps"] and dpo["seed"] == 3
