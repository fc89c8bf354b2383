"""The behaviour suite: a base agrees with itself; a changed state does not; how it is found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from skillstore.behaviour import behaviour_suite_for, read_probes
from skillstore.errors import DatasetError
from skillstore.evaluation.runner import run_tasks
from tests.composition.tinymodel import perturbed_copy, save, tiny_llama, tiny_tokenizer

FINGERPRINT = "sha256:" + "0" * 64
SIZES = dict(n_prompts=40, n_texts=40)


@pytest.fixture(scope="module")
def tiny():
    tok = tiny_tokenizer()
    return tiny_llama(tok), tok


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    model, tok = tiny
    return behaviour_suite_for(model, tok, tmp_path_factory.mktemp("suites"), base="tiny",
                               fingerprint=FINGERPRINT, **SIZES)


def _scores(model, tok, record) -> dict[str, float]:
    paths = [Path(p) for p in record["suite"].split(",")]
    rows = run_tasks(model, tok, [p.stem for p in paths], include_path=paths[0].parent)
    return {r.metric: r.value for r in rows}


def test_the_base_keeps_its_own_behaviour_and_a_changed_state_does_not(tiny, built):
    model, tok = tiny
    assert built["source"] == "self-sampled" and built["n_prompts"] == 40
    assert _scores(model, tok, built) == pytest.approx({"exact_match": 1.0, "kl": 0.0},
                                                       abs=1e-6)
    changed = perturbed_copy(model, 3, ("lm_head.weight", "model.layers.1.mlp.down_proj.weight"),
                             scale=0.3)
    scores = _scores(changed, tok, built)
    assert scores["exact_match"] < 0.9
    assert scores["kl"] > 0.1


def test_the_same_base_and_probes_reuse_the_folder(tiny, built):
    model, tok = tiny
    suites = Path(built["suite"].split(",")[0]).parents[2]
    again = behaviour_suite_for(model, tok, suites, base="tiny",
                                fingerprint=FINGERPRINT, **SIZES)
    assert again == built


def test_general_data_rows_are_the_probe_prompts(tiny, tmp_path):
    model, tok = tiny
    data = tmp_path / "general.jsonl"
    rows = [{"prompt": f"{i} plus {i} is"} for i in range(6)] + [{"text": "The sky is"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    record = behaviour_suite_for(model, tok, tmp_path / "suites", base="tiny",
                                 fingerprint=FINGERPRINT, data=data, n_prompts=5, n_texts=2)
    folder = Path(record["suite"].split(",")[0]).parent
    agreement = [json.loads(line)["prompt"]
                 for line in (folder / "agreement.jsonl").read_text().splitlines()]
    kl = [json.loads(line)["prompt"] for line in (folder / "kl.jsonl").read_text().splitlines()]
    router = [json.loads(line)["prompt"]
              for line in (folder / "router.jsonl").read_text().splitlines()]
    assert record["source"] == "general-data"
    # nothing is left after the agreement prompts and the KL contexts, so the router's probes
    # are the last quarter of the agreement prompts, which are then not scored
    assert agreement == [f"{i} plus {i} is" for i in range(4)] and router == ["4 plus 4 is"]
    assert kl == ["5 plus 5 is", "The sky is"]  # the rows after the agreement prompts
    assert record["n_prompts"] == 4 and record["n_router"] == 1


def test_the_router_trains_on_probes_the_gate_never_scores(tiny, tmp_path):
    from skillstore.evaluation.suites import general_suite, suite_prompts

    model, tok = tiny
    data = tmp_path / "general.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i} and {i} make"}) + "\n"
                            for i in range(20)))
    record = behaviour_suite_for(model, tok, tmp_path / "suites", base="tiny",
                                 fingerprint=FINGERPRINT, data=data, n_prompts=10, n_texts=4,
                                 n_router=6)
    suite = general_suite(record["suite"])
    scored = suite_prompts(suite, 100, split="test")
    fitted = suite_prompts(suite, 100)  # what the gate hands the router as the no-pack class
    assert scored == [f"{i} and {i} make" for i in range(10)]
    assert fitted == [f"{i} and {i} make" for i in range(14, 20)]
    assert record["n_router"] == 6 and not set(scored) & set(fitted)


def test_a_text_file_gives_one_prompt_a_line(tmp_path):
    data = tmp_path / "general.txt"
    data.write_text("first line\n\nsecond line\nfirst line\n")
    assert read_probes(data) == ["first line", "second line"]


def test_an_undecodable_tokenizer_asks_for_general_data(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    monkeypatch.setattr(type(tok), "decode", lambda self, ids, **kw: "\ufffd" * len(ids))
    with pytest.raises(DatasetError) as err:
        behaviour_suite_for(model, tok, tmp_path, base="tiny", fingerprint=FINGERPRINT,
                            n_prompts=4, n_texts=2)
    message = str(err.value)
    assert "\n" not in message and "'tiny'" in message and "--general-data" in message


def test_the_general_suite_falls_back_to_the_bases_behaviour_suite(built, tmp_path):
    from skillstore.catalog.models import BaseCheckpoint
    from skillstore.evaluation.cache import Suite
    from skillstore.evaluation.suites import GENERAL_YAML, general_suite

    base = BaseCheckpoint(name="tiny", behaviour=built)
    skill = Suite("arith", tmp_path, ("skillstore_arith",), 1)
    found = general_suite(None, beside=[skill], base=base)
    assert found.name == "general"
    assert found.tasks == tuple(Path(p).stem for p in built["suite"].split(","))
    assert found.version == built["suite_version"]
    assert general_suite(None, beside=[skill], base=BaseCheckpoint(name="bare")) is None
    # The zoo's general suite beside the skill's wins over the base's.
    (tmp_path / GENERAL_YAML).write_text("task: skillstore_general\n")
    assert general_suite(None, beside=[skill], base=base).tasks == ("skillstore_general",)


def test_base_add_builds_and_records_the_behaviour_suite(tiny, workspace, tmp_path):
    from typer.testing import CliRunner

    from skillstore.cli import app

    model, tok = tiny
    folder = save(model, tok, tmp_path / "base")
    data = tmp_path / "general.txt"
    data.write_text("".join(f"probe {i}\n" for i in range(12)))
    runner = CliRunner()
    assert runner.invoke(app, ["init"]).exit_code == 0
    out = runner.invoke(app, ["base", "add", "tiny", str(folder), "--general-data", str(data),
                              "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout[out.stdout.index("{"):])
    assert doc["behaviour"]["source"] == "general-data"
    # 12 probes, all scored before; now a quarter of them train the router and are not scored
    assert doc["behaviour"]["n_prompts"] == 9 and doc["behaviour"]["n_router"] == 3
    assert Path(doc["behaviour"]["suite"].split(",")[0]).is_file()
    bare = runner.invoke(app, ["base", "add", "other", str(save(perturbed_copy(
        model, 1, ("lm_head.weight",)), tok, tmp_path / "other")), "--no-general-suite",
        "--json"])
    assert bare.exit_code == 0, bare.output
    assert json.loads(bare.stdout[bare.stdout.index("{"):])["behaviour"] is None


def test_a_base_that_repeats_itself_is_sampled_until_the_probes_are_distinct(tiny, monkeypatch):
    """A small model samples the same text often; duplicates are dropped and sampling goes on
    in rounds, each with its own seed, until the probe set has its size."""
    import skillstore.behaviour as behaviour

    model, tok = tiny
    seeds = []

    def repetitive(model, tokenizer, contexts, new_tokens, seed):
        seeds.append(seed)  # round one: every other sample the same text; later rounds: new
        first = len(seeds) == 1
        return [[0, 0] if first and i % 2 == 0 else [len(seeds), i] for i in range(len(contexts))]

    monkeypatch.setattr(behaviour, "_sample", repetitive)
    monkeypatch.setattr(type(tok), "decode", lambda self, ids, **kw: f"probe {ids}")
    probes = behaviour.sample_probes(model, tok, 40, seed=5, base="tiny")
    assert len(probes) == len(set(probes)) == 40  # one round alone gives 21
    assert seeds == [5, 5 + behaviour.ROUND_SEED]
