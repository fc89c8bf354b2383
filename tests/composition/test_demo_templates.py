"""The demo's view by kind of template: which test prompts are of which kind, and the tag
oracle that the learned router is measured against."""

from __future__ import annotations

from skillstore.catalog import get_base
from skillstore.cli.demo_templates import held_out_keys, kind_keys, oracle_state
from skillstore.curriculum.build import write_curriculum
from skillstore.curriculum.skills import KINDS, NEW_OPENER, NEW_PHRASING, SKILLS, TRAINED
from skillstore.curriculum.validate import load_rows
from skillstore.states import base_state, extend_state

from .conftest import make_base, make_pack


def test_each_test_prompt_is_counted_under_its_templates_kind(tmp_path):
    cur = write_curriculum(tmp_path / "cur", n_train=60, n_eval=40)
    keys = kind_keys(cur, ["sort", "knowledge", "not-a-curriculum-skill"])
    assert set(keys) == {"sort", "knowledge"}
    for name, kinds in keys.items():
        rows = load_rows(cur.skills[name].split("test"))
        assert set(kinds) == set(KINDS) and all(kinds.values()), name
        assert sorted(int(i) for ids in kinds.values() for i in ids) == list(range(len(rows)))
        for kind, ids in kinds.items():
            assert {SKILLS[name].template(rows[int(i)]["template"]).kind for i in ids} == {kind}
    held = held_out_keys(keys)
    assert held["sort"] == keys["sort"][NEW_OPENER] | keys["sort"][NEW_PHRASING]
    assert not held["sort"] & keys["sort"][TRAINED]


def test_the_oracle_holds_the_states_packs_at_their_scales_under_tag_routing(catalog):
    with catalog.session() as s:
        base = make_base(s)
        a, b = make_pack(s, base, "alpha"), make_pack(s, base, "beta")
        state = extend_state(s, base, extend_state(s, base, base_state(s, base), a), b)
        oracle = oracle_state(s, get_base(s, base.name), state)
        again = oracle_state(s, get_base(s, base.name), state)
        assert oracle.id == again.id != state.id and state.router != "tag"
        assert oracle.router == "tag"
        assert [(m.pack_id, m.scale) for m in oracle.members] == [
            (m.pack_id, m.scale) for m in state.members]
