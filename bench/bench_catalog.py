"""Catalog latency on SQLite and PostgreSQL: deep lineage walks and filtered pack pages."""

from __future__ import annotations

import hashlib
import json
import socket
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from skillstore.catalog import ancestors, descendants, list_packs, migrate
from skillstore.catalog.db import create_database, drop_database, make_engine, session_scope
from skillstore.catalog.models import BaseCheckpoint, LineageEdge, Skill, SkillPack
from skillstore.catalog.schema import utcnow

CHAIN = 1_000
PACKS = 100_000
SKILLS = 20
STATUSES = ("candidate", "promoted", "rejected", "retired")
REPEATS = 30
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/skillstore_bench_{}"
TARGETS = {"ancestors, depth 1,000, chain only": 20.0, "ancestors, depth 1,000": 20.0,
           "descendants, depth 1,000": None, "page of 50 / 100k, skill+status": 50.0,
           "same page + total count": None}


def _digest(i: int) -> str:
    return "sha256:" + hashlib.sha256(str(i).encode()).hexdigest()


def _median_ms(fn, repeats: int = REPEATS) -> float:
    fn()  # warm caches and the plan
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _populate_chain(engine: sa.Engine) -> None:
    now = utcnow()
    pack = dict(base_id=1, size_bytes=1000, format_version=1, method="sft", codecs={},
                metrics={}, created_at=now)
    with engine.begin() as conn:
        conn.execute(sa.insert(BaseCheckpoint), [dict(id=1, name="tiny", uri="/m", architecture="x",
                                                      fingerprint=_digest(-1), created_at=now)])
        conn.execute(sa.insert(Skill), [dict(id=i, name=f"s{i}", suite=f"s{i}", description="",
                                             created_at=now) for i in range(1, SKILLS + 2)])
        # A chain of CHAIN packs in skill 1: pack i is recompressed from pack i-1.
        conn.execute(sa.insert(SkillPack), [dict(pack, id=i, skill_id=1, version=i,
                                                 status="promoted", blob_digest=_digest(i))
                                            for i in range(1, CHAIN + 1)])
        edges = [dict(child_id=1, parent_pack_id=None, parent_base_id=1, kind="trained_on",
                      created_at=now)]
        edges += [dict(child_id=i, parent_pack_id=i - 1, parent_base_id=None,
                       kind="recompressed_from", created_at=now)
                  for i in range(2, CHAIN + 1)]
        conn.execute(sa.insert(LineageEdge), edges)
        conn.exec_driver_sql("ANALYZE")


def _populate_many(engine: sa.Engine) -> None:
    now = utcnow()
    pack = dict(base_id=1, size_bytes=1000, format_version=1, method="sft", codecs={},
                metrics={}, created_at=now)
    # PACKS more packs spread over SKILLS skills and four statuses, each trained on the base
    # (create_pack always writes at least one edge, so the edge table grows with the packs).
    versions = [0] * (SKILLS + 2)
    batch, edges = [], []
    for n in range(PACKS):
        pid = CHAIN + 1 + n
        skill = 2 + n % SKILLS
        versions[skill] += 1
        batch.append(dict(pack, id=pid, skill_id=skill, version=versions[skill],
                          status=STATUSES[(n // SKILLS) % 4], blob_digest=_digest(pid)))
        edges.append(dict(child_id=pid, parent_pack_id=None, parent_base_id=1, kind="trained_on",
                          created_at=now))
        if len(batch) == 10_000 or n == PACKS - 1:
            with engine.begin() as conn:
                conn.execute(sa.insert(SkillPack), batch)
                conn.execute(sa.insert(LineageEdge), edges)
            batch, edges = [], []
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")


def _measure(url: str) -> dict[str, float]:
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        results = {}
        _populate_chain(engine)
        with session_scope(engine) as s:
            assert len(ancestors(s, CHAIN).related()) == CHAIN, "the chain walk lost nodes"
            results["ancestors, depth 1,000, chain only"] = _median_ms(lambda: ancestors(s, CHAIN))
        started = time.perf_counter()
        _populate_many(engine)
        print(f"  populated {CHAIN + PACKS:,} packs in {time.perf_counter() - started:.1f} s",
              flush=True)
        with session_scope(engine) as s:
            up = ancestors(s, CHAIN)
            assert len(up.related()) == CHAIN, "the chain walk lost nodes"
            skill = s.get(Skill, 7)
            page = list_packs(s, skill=skill, status="promoted", limit=50)
            assert len(page.packs) == 50 and all(p.skill_id == 7 for p in page.packs)
            return results | {
                "ancestors, depth 1,000": _median_ms(lambda: ancestors(s, CHAIN)),
                "descendants, depth 1,000": _median_ms(lambda: descendants(s, 1)),
                "page of 50 / 100k, skill+status": _median_ms(lambda: list_packs(
                    s, skill=skill, status="promoted", limit=50, count=False)),
                "same page + total count": _median_ms(lambda: list_packs(
                    s, skill=skill, status="promoted", limit=50, count=True)),
            }
    finally:
        engine.dispose()


def _pg_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


def run(out: Path) -> None:
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        print("sqlite ...", flush=True)
        results["sqlite"] = _measure(f"sqlite:///{Path(tmp) / 'bench.db'}")
    if _pg_up():
        url = PG_URL.format(uuid.uuid4().hex[:8])
        create_database(url)
        try:
            print("postgresql ...", flush=True)
            results["postgresql"] = _measure(url)
        finally:
            drop_database(url)
    else:
        print("postgresql: not reachable on 127.0.0.1:5432; start it (see DEVELOPERS.md)")
    backends = list(results)
    header = f"| {'median latency (ms)':<34} | " + " | ".join(f"{b:>10}" for b in backends) \
        + " | target |"
    print("\n" + header)
    print("|" + "-" * 36 + "|" + "|".join("-" * 12 for _ in backends) + "|--------|")
    for metric, target in TARGETS.items():
        cells = " | ".join(f"{results[b][metric]:>10.2f}" for b in backends)
        print(f"| {metric:<34} | {cells} | {f'< {target:g}' if target else '-':>6} |")
    (out / "catalog.json").write_text(json.dumps({"targets_ms": TARGETS, "median_ms": results},
                                                 indent=2))
