"""The experiment spec: a good one is read whole, and each kind of bad one is one line naming
its key, before anything touches the catalog or a queue."""

from __future__ import annotations

import json

import pytest

from skillstore.errors import ConfigError, NotFoundError
from skillstore.experiments import load_spec, parse_spec
from skillstore.experiments.spec import Graft, LoRASweep
from tests.conftest import run_cli

GOOD = {
    "name": "three-skills",
    "base": "tiny",
    "sources": ["src-gpt2"],
    "skills": [{"name": "reverse"}, {"name": "sort"},
               {"name": "knowledge", "method": "distill", "source": "src-gpt2"}],
    "methods": {"graft": {"policy": "compact", "tune_steps": 200}, "naive_ft": None,
                "multi_lora": {"ranks": [4, 8]}, "ties": {"density": 0.2}},
    "seeds": [0, 1],
    "train": {"max_steps": 600},
}


def with_(**changes):
    return {**GOOD, **changes}


def test_a_good_spec_is_read_whole_with_its_defaults_and_runs():
    spec = parse_spec(GOOD)
    assert spec.skills[2].source == ("src-gpt2",)  # one source or a list
    assert spec.settings("graft") == Graft(policy="compact", tune_steps=200)
    assert spec.settings("multi_lora") == LoRASweep(ranks=(4, 8))  # lrs keep their grid
    assert spec.train.max_steps == 600 and spec.train.lr == 3e-3  # the rest are SFT defaults
    assert spec.runs() == [("graft", 0), ("graft", 1), ("naive_ft", 0), ("naive_ft", 1),
                           ("multi_lora", 0), ("multi_lora", 1), ("ties", 0), ("ties", 1)]


@pytest.mark.parametrize("doc", [
    GOOD,
    with_(skills=[{"name": "reverse"}, {"name": "k", "method": "dpo", "source": "src-gpt2"}],
          methods={"graft": None, "joint": None}, dpo={"beta": 0.3, "max_steps": 5}),
    with_(skills=[{"name": "reverse"},
                  {"name": "k", "data": "k.jsonl", "metric": "number", "test_size": 60}]),
])
def test_a_stored_spec_reads_back_as_itself(doc):
    """The catalog stores a spec as `as_json` (every default written out) and each run parses
    it again: that must give the same spec, not a refusal of keys the user never wrote."""
    spec = parse_spec(doc)
    assert parse_spec(spec.as_json()).as_json() == spec.as_json()


@pytest.mark.parametrize("doc, words", [
    (with_(colour="blue"), r"colour: no such key"),
    (with_(seeds=[]), r"seeds: .*at least 1"),
    (with_(seeds=[1, 1]), r"seeds repeat"),
    (with_(methods={}), r"methods names none; name at least one of graft, naive_ft"),
    (with_(methods={"ewc": {}}), r"methods\.ewc: unknown method 'ewc'; valid: graft, naive_ft"),
    (with_(methods={"graft": {"budget": 150}}),
     r"methods\.graft\.budget: .*less than or equal to 100"),
    (with_(methods={"graft": {"rank": 4}}), r"methods\.graft\.rank: no such key"),
    (with_(methods={"graft": {"tune_objective": "both"}}),
     r"methods\.graft\.tune_objective: .*'labels' or 'teacher'"),
    (with_(methods={"graft": {"policy": "tiny"}}), r"graft\.policy: .*tiny"),
    (with_(methods={"task_arithmetic": {"density": 0.2}}), r"task_arithmetic .*no density"),
    (with_(methods={"replay": {"replay": 0}}), r"replay needs replay > 0"),
    (with_(methods={"ties": {"scale": 0.5, "scales": [0.5, 1.0]}}),
     r"scale fixes .* scales sweeps it; give one"),
    (with_(methods={"ties": {"scales": []}}), r"ties\.scales: .*at least 1"),
    (with_(skills=[{"name": "reverse"}], methods={"ties": {}}), r"ties merges .* has one"),
    (with_(skills=[{"name": "sort"}, {"name": "sort"}]), r"skill 'sort' is listed twice"),
    (with_(skills=[{"name": "k", "method": "distill"}]), r"skills\.0: .*distill needs a source"),
    (with_(skills=[{"name": "k", "source": "src-gpt2"}]), r"sft learns .* takes no source"),
    (with_(skills=[{"name": "k", "method": "dpo", "source": "qwen"}]),
     r"names source 'qwen', which is not in sources"),
    (with_(skills=[{"name": "k", "data": "k.jsonl", "metric": "bleu"}]),
     r"unknown metric 'bleu'; valid: "),
    (with_(skills=[{"name": "k", "test_size": 60}]), r"test_size splits .* add data or drop"),
    (with_(skills=[{"name": "k", "method": "dpo", "source": "src-gpt2"}]),
     r"skill 'k' learns by dpo, which multi_lora cannot .* learn 'k' by distill"),
    (with_(dpo={"beta": 0.2}), r"dpo configures .* and no skill is; drop dpo"),
    (with_(skills=[{"name": "k", "method": "dpo", "source": "src-gpt2"}],
           methods={"graft": None}, dpo={"betta": 0.2}), r"dpo\.betta: no such key"),
    (with_(skills=[]), r"skills: .*at least 1"),
    (with_(train={"max_steps": 0}), r"train\.max_steps: .*greater than 0"),
    (with_(gate={"min_gain": 2}), r"gate\.min_gain"),
    (with_(base="Tiny Llama"), r"base: .*pattern"),
    (["not", "a", "mapping"], r"expected a mapping"),
])
def test_a_bad_spec_is_one_line_naming_its_key(doc, words):
    with pytest.raises(ConfigError, match=words) as caught:
        parse_spec(doc)
    assert "\n" not in str(caught.value)


def test_a_spec_file_that_is_not_yaml_names_the_line(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("name: x\nbase: [unclosed\n")
    with pytest.raises(ConfigError, match=r"is not YAML \(line 3\)"):
        load_spec(path)
    with pytest.raises(NotFoundError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")


def test_data_paths_are_read_beside_the_spec(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "spec.yaml"
    path.write_text(json.dumps(with_(skills=[{"name": "k", "data": "k.jsonl"}],  # JSON is YAML
                                     methods={"graft": None})))
    assert load_spec(path).skills[0].data == tmp_path / "sub" / "k.jsonl"


def test_validate_checks_the_catalog_and_prints_the_runs(workspace, tmp_path, capsys):
    assert run_cli(capsys, "init")[0] == 0
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(GOOD))
    code, out, err = run_cli(capsys, "experiment", "validate", str(path))
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "tiny" in err and "Traceback" not in out + err  # no such base yet
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps(with_(methods={"graft": {"budget": 0}})))
    code, _, err = run_cli(capsys, "experiment", "validate", str(bad))
    assert code == 1 and "methods.graft.budget" in err and err.count("\n") == 1, err


def test_every_method_has_its_settings_class_in_the_table():
    from skillstore.experiments.spec import SETTINGS, Methods

    assert list(SETTINGS) == list(Methods.model_fields)
    for name, info in Methods.model_fields.items():
        assert info.annotation == SETTINGS[name] | None, name


@pytest.mark.parametrize("name", ["demo", "hetero", "full"])
def test_every_builtin_spec_is_shipped_loads_by_name_and_runs(name):
    from skillstore.experiments.methods import check_runnable
    from skillstore.experiments.spec import builtin_specs

    assert name in builtin_specs()
    spec = load_spec(name)
    assert spec.name == name and spec.base == "tiny-llama"
    check_runnable(spec)
