"""Lineage: ancestors and descendants on a DAG with shared parents and diamonds, both backends."""

from __future__ import annotations

import random
from collections import deque

import pytest
from factories import base, pack, skill

from skillstore.catalog import EdgeKind, add_edge, ancestors, descendants, describe_nodes
from skillstore.errors import ConfigError


def _reference(edges: dict[int, list[int]], start: int) -> set[int]:
    """Plain BFS over an adjacency map: the answer the SQL must give."""
    seen, queue = set(), deque([start])
    while queue:
        for nxt in edges.get(queue.popleft(), []):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return seen


def _pack_ids(keys: set[str]) -> set[int]:
    return {int(k[5:]) for k in keys if k.startswith("pack:")}


def test_diamond_by_hand(session):
    b = base(session)
    s = skill(session)
    #      a
    #     / \
    #    l   r      d has parents l and r; both come from a; e comes from d and from a directly
    #     \ /
    #      d - e
    a = pack(session, s, b, tag="a")
    left = pack(session, s, b, parents=[(a, EdgeKind.recompressed_from)], tag="l")
    right = pack(session, s, b, parents=[(a, EdgeKind.distilled_from)], tag="r")
    d = pack(session, s, b, parents=[(left, "fused_from"), (right, "fused_from")], tag="d")
    e = pack(session, s, b, parents=[(d, "trained_on"), (a, "trained_on")], tag="e")

    up = ancestors(session, e.id)
    assert _pack_ids(up.related()) == {a.id, left.id, right.id, d.id}
    assert f"base:{b.id}" in up.related()  # a was trained on the base
    assert up.depths()[f"pack:{a.id}"] == 1  # the shortest path wins
    # Each edge appears once, even though a is reached along three paths.
    assert len(up.edges) == len(set(up.edges)) == 7

    down = descendants(session, a.id)
    assert _pack_ids(down.related()) == {left.id, right.id, d.id, e.id}
    assert descendants(session, e.id).related() == set()
    assert _pack_ids(ancestors(session, a.id).related()) == set()

    doc = describe_nodes(session, up).to_json()
    names = {n["id"]: n.get("name") for n in doc["nodes"]}
    assert names[f"pack:{d.id}"] == "arith@v4"
    assert names[f"base:{b.id}"] == "tiny"
    kinds = {(x["child"], x["parent"]): x["kind"] for x in doc["edges"]}
    assert kinds[(f"pack:{d.id}", f"pack:{left.id}")] == "fused_from"


def test_random_dag_matches_reference(session):
    rng = random.Random(7)
    b = base(session)
    skills = [skill(session, f"s{i}") for i in range(3)]
    ids: list[int] = []
    parents_of: dict[int, list[int]] = {}
    rows = {}
    for i in range(60):
        k = rng.choice([0, 1, 1, 2, 3]) if ids else 0
        chosen = rng.sample(ids, min(k, len(ids)))
        p = pack(session, skills[i % 3], b, parents=[(rows[c], "fused_from") for c in chosen]
                 or [(b, "trained_on")], tag=f"p{i}")
        rows[p.id] = p
        ids.append(p.id)
        parents_of[p.id] = chosen
    children_of: dict[int, list[int]] = {}
    for child, ps in parents_of.items():
        for par in ps:
            children_of.setdefault(par, []).append(child)
    for pid in ids:
        assert _pack_ids(ancestors(session, pid).related()) == _reference(parents_of, pid)
        assert _pack_ids(descendants(session, pid).related()) == _reference(children_of, pid)


def test_deep_chain(session):
    b = base(session)
    s = skill(session)
    prev = pack(session, s, b, tag="c0")
    first = prev
    for i in range(1, 200):
        prev = pack(session, s, b, parents=[(prev, "trained_on")], tag=f"c{i}")
    assert len(_pack_ids(ancestors(session, prev.id).related())) == 199
    assert ancestors(session, prev.id).depths()[f"pack:{first.id}"] == 199
    assert len(descendants(session, first.id).related()) == 199


def test_cycles_and_duplicates_are_refused(session):
    b = base(session)
    s = skill(session)
    a = pack(session, s, b, tag="a")
    c = pack(session, s, b, parents=[(a, "trained_on")], tag="c")
    with pytest.raises(ConfigError, match="cycle"):
        add_edge(session, a, c, "fused_from")
    with pytest.raises(ConfigError, match="cycle"):
        add_edge(session, c, c, "fused_from")
    again = add_edge(session, c, a, "trained_on")
    assert len([e for e in ancestors(session, c.id).edges if e[1] == f"pack:{a.id}"]) == 1
    assert again.child_id == c.id
