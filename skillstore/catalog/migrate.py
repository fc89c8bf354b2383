"""Schema migrations driven from code: `skillstore init`, tests and the open-time version check."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from ..errors import WorkspaceError
from .db import make_engine, normalize_url, redact

REPO_ROOT = Path(__file__).resolve().parents[2]
# An installed wheel carries the top-level migrations/ as skillstore/_migrations (setup.py maps
# it); a checkout (editable install) has only the top-level folder, beside alembic.ini.
PACKAGED_MIGRATIONS = Path(__file__).resolve().parents[1] / "_migrations"
MIGRATIONS_DIR = (PACKAGED_MIGRATIONS if (PACKAGED_MIGRATIONS / "env.py").is_file()
                  else REPO_ROOT / "migrations")


def alembic_config(url: str | None = None) -> Config:
    """The alembic Config of the catalog, pointed at `url` when given."""
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise WorkspaceError(f"This skillstore install has no schema migrations at "
                             f"{MIGRATIONS_DIR}; reinstall it from a wheel or a full checkout.")
    # The ini only exists in a checkout; its options matter to `alembic revision`, not upgrades.
    ini = MIGRATIONS_DIR.parent / "alembic.ini"
    cfg = Config(str(ini)) if ini.is_file() else Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        cfg.attributes["url"] = normalize_url(url)
    return cfg


def _run(url: str, fn, *args) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            fn(cfg, *args)
    except CommandError as exc:
        if fn is command.check:
            raise  # a model/migration mismatch is a developer error, reported as alembic words it
        raise WorkspaceError(f"Cannot migrate the catalog at {redact(url)!r}: {exc}; "
                             "is this skillstore older than the database?") from None
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at `url` up to `revision`."""
    _run(url, command.upgrade, revision)


def downgrade(url: str, revision: str = "base") -> None:
    """Migrate the database at `url` down to `revision`."""
    _run(url, command.downgrade, revision)


def check(url: str) -> None:
    """`alembic check`: raise if the models and the migrated schema differ."""
    _run(url, command.check)


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the migrations folder has no revisions"
    return head


def current_revision(connection: sa.Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def ensure_current(connection: sa.Connection, where: str) -> None:
    """Fail with the migrating command when the schema is missing or older than the code."""
    current = current_revision(connection)
    head = head_revision()
    if current == head:
        return
    if current is None:
        raise WorkspaceError(
            f"The catalog at {where} was never initialised; run `skillstore init`.")
    script = ScriptDirectory.from_config(alembic_config())
    known = {rev.revision for rev in script.walk_revisions()}
    if current not in known:
        raise WorkspaceError(
            f"The catalog at {where} has schema revision {current}, newer than this skillstore "
            f"(head {head}); upgrade skillstore.")
    raise WorkspaceError(
        f"The catalog at {where} has schema revision {current}, older than the code ({head}); "
        "migrate it with `skillstore init` (or `alembic upgrade head`).")
