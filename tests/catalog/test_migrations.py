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
            if isinstance(column.type, sa.DateTime) or getattr(column.type, "impl", None) is not None \
                    and isinstance(column.type.impl, sa.DateTime):
                assert column.type.timezone, f"{table.name}.{column.name} is not timezone-aware"


def test_migrations_folder_is_where_the_code_looks():
    assert Path(migrate.MIGRATIONS_DIR, "env.py").is_file()
