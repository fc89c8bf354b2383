"""The web console on a catalog of 10,000 packs: median load time of each page.

A SQLite workspace gets one base, 20 skills and 10,000 packs (bulk inserts; lineage chains of
five recompressions; a spread of statuses), 1,000 jobs and a head state of four packs. Each
page is loaded once to warm up, then REPEAT times through the HTTP client, and the median is
reported beside the 300 ms target of issue 19. Measured, not asserted.

    python -m bench ui        # writes bench/out/ui.json
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

N_PACKS, N_SKILLS, N_JOBS, CHAIN, REPEAT = 10_000, 20, 1_000, 5, 7
TARGET_MS = 300.0


def _fill(settings) -> dict:
    import sqlalchemy as sa

    from skillstore.catalog import (
        EdgeKind,
        JobStatus,
        LineageEdge,
        PackStatus,
        SkillPack,
        add_skill,
        advance_head,
        create_job,
        get_or_create_state,
        init_workspace,
        register_base,
    )

    catalog = init_workspace(settings)
    statuses = list(PackStatus)
    with catalog.session() as s:
        base = register_base(s, name="bench-base", uri="/models/bench", architecture="Llama",
                             fingerprint="sha256:" + "b" * 64,
                             tokenizer_fingerprint="sha256:" + "c" * 64)
        skills = [add_skill(s, name=f"skill{i:02d}", suite=f"skillstore_skill{i:02d}")
                  for i in range(N_SKILLS)]
        rows = [{"skill_id": skills[i % N_SKILLS].id, "version": i // N_SKILLS + 1,
                 "base_id": base.id, "status": statuses[i % len(statuses)],
                 "blob_digest": f"sha256:{i:064x}", "size_bytes": 100_000 + i,
                 "format_version": 2, "compression_ratio": 8.0, "method": "sft",
                 "codecs": {"attention": ["mplr"], "mlp": ["mplr"]}, "metrics": {}}
                for i in range(N_PACKS)]
        s.execute(sa.insert(SkillPack), rows)
        ids = s.scalars(sa.select(SkillPack.id).order_by(SkillPack.id)).all()
        # Each pack is trained on the base; within a skill, runs of CHAIN versions recompress
        # the one before (pack i's previous version is pack i - N_SKILLS).
        edges = [{"child_id": pid, "parent_base_id": base.id, "kind": EdgeKind.trained_on}
                 for pid in ids]
        edges += [{"child_id": pid, "parent_pack_id": ids[n - N_SKILLS],
                   "kind": EdgeKind.recompressed_from}
                  for n, pid in enumerate(ids) if n >= N_SKILLS and (n // N_SKILLS) % CHAIN]
        s.execute(sa.insert(LineageEdge), edges)
        for n in range(N_JOBS):
            job = create_job(s, kind="learn", request={"skill": skills[n % N_SKILLS].name},
                             base_id=base.id, skill_id=skills[n % N_SKILLS].id)
            job.status = JobStatus.succeeded if n % 3 else JobStatus.running
        held = [s.get(SkillPack, ids[n]) for n in range(4)]
        state = get_or_create_state(s, base=base, packs=[(p, 1.0) for p in held], router="none")
        advance_head(s, base.id, state.id, expected_version=None)
    catalog.close()
    return {"middle": ids[N_PACKS // 2 + 2], "state": state.id}


def run(out: Path) -> dict:
    from fastapi.testclient import TestClient

    from skillstore.server import create_app
    from skillstore.settings import Settings

    home = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    settings = Settings(home=home, api_open_reads=True)
    started = time.perf_counter()
    where = _fill(settings)
    print(f"[ui] filled {N_PACKS:,} packs, {N_JOBS:,} jobs in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    pages = {"bases": "/ui/bases", "packs": "/ui/packs",
             "packs, filtered": "/ui/packs?skill=skill07&status=promoted",
             "packs, page 100": "/ui/packs?offset=4950",
             "pack": f"/ui/packs/{where['middle']}",
             "lineage": f"/ui/packs/{where['middle']}/lineage",
             "jobs": "/ui/jobs", "jobs, live rows": "/ui/jobs/rows", "job": "/ui/jobs/500",
             "states": "/ui/states", "state": f"/ui/states/{where['state']}",
             "experiments": "/ui/experiments"}
    results = {}
    with TestClient(create_app(settings)) as client:
        for name, path in pages.items():
            t0 = time.perf_counter()
            first = client.get(path)
            first_ms = (time.perf_counter() - t0) * 1000
            assert first.status_code == 200, (path, first.status_code, first.text[:300])
            times = []
            for _ in range(REPEAT):
                t0 = time.perf_counter()
                client.get(path)
                times.append((time.perf_counter() - t0) * 1000)
            results[name] = {"path": path, "first_ms": round(first_ms, 1),
                             "median_ms": round(statistics.median(times), 1),
                             "max_ms": round(max(times), 1)}
    print(f"{'page':<18} {'first ms':>9} {'median ms':>10} {'max ms':>8}  "
          f"under {TARGET_MS:.0f} ms")
    for name, r in results.items():
        ok = "yes" if r["median_ms"] < TARGET_MS else "NO"
        print(f"{name:<18} {r['first_ms']:>9.1f} {r['median_ms']:>10.1f} {r['max_ms']:>8.1f}  {ok}")
    doc = {"packs": N_PACKS, "jobs": N_JOBS, "repeat": REPEAT, "target_ms": TARGET_MS,
           "pages": results}
    (out / "ui.json").write_text(json.dumps(doc, indent=2) + "\n")
    return doc
