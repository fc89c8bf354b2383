"""Migrations: upgrade, `alembic check`, downgrade and upgrade again, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from skillstore.catalog import migrate
from skillstore.catalog.db import make_engine
from skillstore.catalog.models import Record

VERSIONS = migrate.MIGRATIONS_DIR / "versions"


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_round_trip_and_check(db_url):
    migrate.upgrade(db_url)
    assert _tables(db_url) == set(Record.metadata.tables) | {"alembic_version"}
    migrate.check(db_url)  # models and migrations agree: autogenerate finds nothing
    migrate.downgrade(db_url, "base")
    assert _tables(db_url) == {"alembic_version"}
    migrate.upgrade(db_url)
    migrate.check(db_url)
    engine = make_engine(db_url)
    with engine.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()
    engine.dispose()


def test_alembic_cli_runs_with_url_override(db_url, tmp_path):
    """The plain alembic command line works too (`-x url=...`)."""
    root = migrate.REPO_ROOT
    for args in (["upgrade", "head"], ["check"], ["downgrade", "base"]):
        done = subprocess.run([sys.executable, "-m", "alembic", "-c", str(root / "alembic.ini"),
                               "-x", f"url={db_url}", *args], cwd=tmp_path,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert _tables(db_url) == {"alembic_version"}


def test_migration_files_are_dated_and_reversible():
    files = sorted(p for p in VERSIONS.glob("*.py") if p.name != "__init__.py")
    assert files
    for path in files:
        assert re.match(r"^\d{8}_\d{4}_\w+\.py$", path.name), path.name
        body = path.read_text()
        downgrade = body.split("def downgrade()", 1)[1]
        assert "op." in downgrade, f"{path.name} has an empty downgrade()"


def test_every_constraint_is_named_by_convention():
    for table in Record.metadata.sorted_tables:
        for constraint in table.constraints:
            name = constraint.name
            assert name and not str(name).startswith("_unnamed"), (table.name, constraint)
            assert str(name).split("_")[0] in {"pk", "fk", "uq", "ck"}, name
        for column in table.columns:
            impl = getattr(column.type, "impl", None)
            if isinstance(column.type, sa.DateTime) or isinstance(impl, sa.DateTime):
                assert column.type.timezone, f"{table.name}.{column.name} is not timezone-aware"


def test_migrations_folder_is_where_the_code_looks():
    assert Path(migrate.MIGRATIONS_DIR, "env.py").is_file()


def test_0002_splits_a_jobs_params_into_request_steps_and_owner_and_back(db_url):
    """A job queued before 0002 keeps what it asked for and what its steps produced."""
    import json

    migrate.upgrade(db_url, "0001")
    params = {"skill": "sort", "base": "tiny", "method": "dpo", "policy": "balanced",
              "budget": None, "tune_steps": 0, "start_from": "base", "source": "src",
              "source_id": 2, "train": {"max_steps": 7},
              "options": {"eval_limit": 5, "dpo": {"beta": 0.2}, "distill_rows": 40},
              "out": {"prepare": {"n_train": 40}, "train": {"tuned_dir": "/x"}},
              "timings": {"prepare": 1.5}, "owner": {"host": "h1", "pid": 42}}
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO jobs (id, kind, status, params, progress, attempts, created_at, "
            "updated_at) VALUES (1, 'learn', 'running', :p, 0.4, 1, :t, :t)"),
            {"p": json.dumps(params), "t": "2026-12-01 00:00:00+00:00"})
    migrate.upgrade(db_url)
    with engine.connect() as conn:
        request, host, pid = conn.execute(sa.text(
            "SELECT request, owner_host, owner_pid FROM jobs WHERE id = 1")).one()
        steps = dict(conn.execute(sa.text(
            "SELECT stage, seconds FROM job_steps WHERE job_id = 1")).all())
    request = json.loads(request) if isinstance(request, str) else request
    assert request["sft"] == {"max_steps": 7} and request["dpo"] == {"beta": 0.2}
    assert request["eval_limit"] == 5 and request["distill"] == {"max_prompts": 40}
    assert "out" not in request and "owner" not in request and "source_id" not in request
    assert (host, pid) == ("h1", 42) and steps == {"prepare": 1.5, "train": None}
    migrate.downgrade(db_url, "0001")
    with engine.connect() as conn:
        back = conn.execute(sa.text("SELECT params FROM jobs WHERE id = 1")).scalar_one()
    engine.dispose()
    back = json.loads(back) if isinstance(back, str) else back
    assert back["out"] == params["out"] and back["owner"] == params["owner"]
    assert back["train"] == params["train"] and back["options"]["dpo"] == {"beta": 0.2}
