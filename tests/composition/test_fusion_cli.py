"""Fusion methods on hand-computed tensors; the state, report and override commands end to end."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from skillstore.cli import app
from skillstore.errors import ConfigError
from skillstore.states.fusion import TaskArithmetic, Ties, get_fusion

from .conftest import make_base, make_pack


def test_ties_trims_elects_sign_and_averages_agreeing_entries():
    d1 = torch.tensor([1.0, -2.0, 0.5, 0.0])
    d2 = torch.tensor([-3.0, 1.0, 0.4, 2.0])
    # trim to top 50%: d1 -> [1, -2, 0, 0], d2 -> [-3, 0, 0, 2]; signs of the sum: [-, -, 0, +]
    merged = Ties(density=0.5).merge([d1, d2], [1.0, 1.0])
    assert merged.tolist() == [-3.0, -2.0, 0.0, 2.0]
    assert (TaskArithmetic(lam=0.5).merge([d1, d2], [1.0, 2.0]).tolist()
            == pytest.approx([-2.5, 0.0, 0.65, 2.0]))


def test_unknown_fusion_method_lists_the_valid_ones():
    with pytest.raises(ConfigError,
                       match="Did you mean 'ties'.*Valid names: learned, task_arithmetic, ties"):
        get_fusion("tie")


@pytest.fixture
def cli_world(catalog, tiny_world):
    from skillstore.fingerprint import fingerprint_checkpoint

    with catalog.session() as s:
        base = make_base(s, fingerprint=fingerprint_checkpoint(tiny_world.base_dir),
                         uri=str(tiny_world.base_dir))
        for skill, path in tiny_world.packs.items():
            make_pack(s, base, skill, blob_digest=catalog.blobs.put_file(path),
                      size_bytes=path.stat().st_size)
    return catalog


def run(*args):
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_state_fuse_ties_records_fused_from_lineage(cli_world):
    from skillstore.catalog import ancestors, get_state

    doc = json.loads(run("state", "fuse", "alpha@v1", "beta@v1", "--method", "ties", "--json"))
    assert doc["router"] == "none" and doc["packs"] == ["fused-alpha-beta@v1x1"]
    with cli_world.session() as s:
        fused_id = get_state(s, doc["id"]).members[0].pack_id
        edges = ancestors(s, fused_id).edges
    assert sorted(k for _, _, k in edges if k == "fused_from") == ["fused_from", "fused_from"]
    routed = json.loads(run("state", "fuse", "alpha@v1", "beta@v1", "--method", "learned",
                            "--json"))
    assert routed["router"] == "learned" and len(routed["packs"]) == 2


def test_manual_overrides_move_the_head_and_report_renders(cli_world, tmp_path):
    run("pack", "promote", "alpha@v1", "--reason", "looks good", "--actor", "ann")
    run("pack", "promote", "beta@v1", "--reason", "also good")
    shown = json.loads(run("state", "list", "--json"))
    current = [s for s in shown if s["packs"] == ["alpha@v1x1", "beta@v1x1"]]
    assert current, shown
    run("pack", "retire", "alpha@v1", "--reason", "superseded")
    with cli_world.session() as s:
        from skillstore.catalog import current_state, get_pack, promotions_of

        pack = get_pack(s, "alpha@v1")
        head = current_state(s, pack.base_id)
        assert [m.pack_id for m in head.members] == [get_pack(s, "beta@v1").id]
        trail = [(p.to_status.value, p.reason, p.actor) for p in promotions_of(s, pack.id)]
    assert (trail[1] == ("promoted", "manual: looks good", "ann")
            and trail[2][:2] == ("retired", "manual: superseded"))
    out = tmp_path / "r.html"
    run("report", "--pack", "alpha@v1", "--format", "html", "-o", str(out))
    assert "Decision: retired" in out.read_text()


def test_cli_errors_are_one_line(cli_world, monkeypatch, capsys):
    from skillstore.cli import main

    for argv, message in ((["report", "--state", "1", "--pack", "2"],
                           "Give exactly one of --state and --pack."),
                          (["state", "fuse", "alpha@v1", "beta@v1", "--method", "tie"],
                           "Unknown fusion method 'tie'."),
                          (["pack", "retire", "gamma@v1", "--reason", "x"],
                           "No skill named 'gamma'")):
        monkeypatch.setattr(sys, "argv", ["skillstore", *argv])
        with pytest.raises(SystemExit) as exit_:
            main()
        err = capsys.readouterr().err
        assert (exit_.value.code == 1 and err.startswith(f"error: {message}")
                and err.count("\n") == 1), err


def test_state_eval_command_stores_and_reuses_results(cli_world, tmp_path):
    from .test_eval_cache import LL_YAML

    data = tmp_path / "ll.jsonl"
    data.write_text(json.dumps({"prompt": "copy ab: ", "answer": "ab"}) + "\n")
    for task in ("skillstore_alpha", "skillstore_general"):
        (tmp_path / f"{task}.yaml").write_text(
            LL_YAML.format(data=data).replace("task: t_ll", f"task: {task}"))
    run("pack", "promote", "alpha@v1", "--reason", "try")
    state_id = str(json.loads(run("state", "list", "--json"))[0]["id"])
    first = json.loads(run("state", "eval", state_id, "--tasks-dir", str(tmp_path), "--json"))
    assert {(r["suite"], r["metric"]) for r in first} == {
        ("alpha", "acc"), ("alpha", "perplexity"), ("general", "acc"), ("general", "perplexity")}
    again = json.loads(run("state", "eval", state_id, "--tasks-dir", str(tmp_path), "--json"))
    assert [(r["id"], r["value"]) for r in again] == [(r["id"], r["value"]) for r in first]


def test_state_route_trains_the_learned_router_of_a_fused_state(cli_world, tmp_path):
    from skillstore.catalog import get_skill, get_state

    for skill, stem in (("alpha", "copy"), ("beta", "reverse")):
        data = tmp_path / f"{skill}.jsonl"
        data.write_text("".join(json.dumps({"prompt": f"{stem} {w}: ", "answer": w}) + "\n"
                                for w in ("ab", "cde", "xy", "mno", "pq", "rst")))
        with cli_world.session() as s:
            get_skill(s, skill).data_uri = str(data)
    general = tmp_path / "general.jsonl"
    general.write_text("".join(json.dumps({"prompt": f"next letter: {c} =", "answer": c}) + "\n"
                               for c in "abcdef"))
    fused = json.loads(run("state", "fuse", "alpha@v1", "beta@v1", "--method", "learned",
                           "--json"))
    routed = json.loads(run("state", "route", str(fused["id"]), "--general", str(general),
                            "--json"))
    assert routed["router"] == "learned" and routed["train_accuracy"] == 1.0
    hidden = json.loads(run("state", "route", str(fused["id"]), "--general", str(general),
                            "--features", "hidden", "--json"))
    with cli_world.session() as s:
        state = get_state(s, routed["id"])
        assert state.router_blob_digest and cli_world.blobs.exists(state.router_blob_digest)
        assert state.fingerprint != get_state(s, fused["id"]).fingerprint
        assert state.router_config["features"] == "ngrams"
        assert get_state(s, hidden["id"]).router_config["features"] == "hidden"
    bad = CliRunner().invoke(app, ["state", "route", str(fused["id"]), "--features", "hiden"])
    assert bad.exit_code == 1 and "Unknown router features 'hiden'. Did you mean 'hidden'?" \
        in str(bad.exception)  # main() prints a SkillstoreError as its one error line


def test_state_eval_reads_task_yaml_suites_without_a_tasks_dir(cli_world, tmp_path):
    """A skill registered the way the zoo registers it (its suite is the path of its task YAML)
    is evaluated with no --tasks-dir; the general suite is the skillstore_general.yaml beside it."""
    from skillstore.catalog import current_state, get_pack, get_skill
    from skillstore.errors import NotFoundError

    from .test_eval_cache import LL_YAML

    data = tmp_path / "ll.jsonl"
    data.write_text(json.dumps({"prompt": "copy ab: ", "answer": "ab"}) + "\n")
    tasks = tmp_path / "curriculum" / "tasks"
    tasks.mkdir(parents=True)
    for task in ("skillstore_alpha", "skillstore_general"):
        (tasks / f"{task}.yaml").write_text(
            LL_YAML.format(data=data).replace("task: t_ll", f"task: {task}"))
    with cli_world.session() as s:
        get_skill(s, "alpha").suite = str(tasks / "skillstore_alpha.yaml")
    run("pack", "promote", "alpha@v1", "--reason", "try")
    with cli_world.session() as s:
        head = current_state(s, get_pack(s, "alpha@v1").base_id)
        head_id, root_id = str(head.id), str(head.parent_id)
    rows = json.loads(run("state", "eval", head_id, "--json"))
    assert {(r["suite"], r["task"], r["metric"]) for r in rows} == {
        (suite, f"skillstore_{suite}", metric) for suite in ("alpha", "general")
        for metric in ("acc", "perplexity")}
    # the plain base: nothing to do
    assert "has no suite to evaluate" in run("state", "eval", root_id)

    # beta's suite names a task: without the folder that defines it, one clear error
    run("pack", "promote", "beta@v1", "--reason", "try")
    with cli_world.session() as s:
        both = str(current_state(s, get_pack(s, "beta@v1").base_id).id)
    with pytest.raises(NotFoundError,
                       match="'skillstore_beta' but no tasks folder was given; pass --tasks-dir"):
        CliRunner().invoke(app, ["state", "eval", both], catch_exceptions=False)
