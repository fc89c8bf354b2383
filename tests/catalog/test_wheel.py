"""A built wheel is a working service: it carries the schema history, and `skillstore init` runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from skillstore.catalog import migrate
from skillstore.catalog.db import make_engine
from skillstore.catalog.models import Record

REPO = migrate.REPO_ROOT
# Build from a copy, so setuptools' build/ and egg-info never land in the checkout and a stale
# build/lib cannot hand the wheel a file the tree no longer has.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                    ".*_cache", ".skillstore", "bench")


def _clean_env(**settings: str) -> dict[str, str]:
    """This environment without PYTHONPATH or skillstore settings, plus `settings`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SKILLSTORE_") and k != "PYTHONPATH"}
    return {**env, **settings}


def _run(cmd: list[str], env: dict[str, str] | None = None,
         **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                          env=env or _clean_env(), **kwargs)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src") / "skillstore"
    shutil.copytree(REPO, src, ignore=NOT_SOURCE)
    return src


@pytest.fixture(scope="module")
def wheel(source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # No build isolation: .venv already has the setuptools that pyproject asks for, and the
    # test then needs no package index.
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "-w", str(out), str(source)])
    (built,) = out.glob("skillstore-*.whl")
    return built


def _fresh_venv(root: Path, *install: str) -> Path:
    """A virtualenv with skillstore installed by pip, and .venv's dependencies on its path."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)])
    python = root / "bin" / "python"
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(_run([str(python), "-c", purelib]).stdout.strip())
    # A path line, not a site dir: .venv's own .pth files (its editable finder) stay unread.
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_skillstore_test_deps.pth").write_text("\n".join(sorted(deps)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
          "--no-compile", "--no-build-isolation", *install])
    return root


@pytest.fixture(scope="module")
def wheel_venv(wheel, tmp_path_factory) -> Path:
    return _fresh_venv(tmp_path_factory.mktemp("wheel") / "venv", str(wheel))


def _init(venv: Path, home: Path, database_url: str | None = None) -> dict:
    env = _clean_env(SKILLSTORE_HOME=str(home))
    if database_url:
        env["SKILLSTORE_DATABASE_URL"] = database_url
    home.mkdir(parents=True, exist_ok=True)
    # Run outside the checkout, so nothing can be found through the working directory.
    done = _run([str(venv / "bin" / "skillstore"), "init", "--json"], env=env, cwd=home)
    return json.loads(done.stdout)


def _migrations_dir(venv: Path) -> Path:
    done = _run([str(venv / "bin" / "python"), "-c",
                 "from skillstore.catalog import migrate; print(migrate.MIGRATIONS_DIR)"], cwd=venv)
    return Path(done.stdout.strip())


def _assert_migrated(url: str) -> None:
    engine = make_engine(url)
    try:
        assert set(sa.inspect(engine).get_table_names()) == set(Record.metadata.tables) | {
            "alembic_version"}
        with engine.connect() as conn:
            assert migrate.current_revision(conn) == migrate.head_revision()
    finally:
        engine.dispose()


def test_wheel_carries_every_migration(wheel, source):
    names = set(zipfile.ZipFile(wheel).namelist())
    history = source / "migrations"
    files = [p for p in history.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert history / "env.py" in files and list((history / "versions").glob("*.py"))
    missing = [p for p in files
               if f"skillstore/_migrations/{p.relative_to(history).as_posix()}" not in names]
    assert not missing, f"the wheel lacks {missing}"


@pytest.mark.parametrize("backend",
                         ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_init_from_installed_wheel(backend, wheel_venv, tmp_path, request):
    found = _migrations_dir(wheel_venv)
    assert found.is_relative_to(wheel_venv) and found.name == "_migrations", found
    if backend == "sqlite":  # the embedded default a new user gets
        doc = _init(wheel_venv, tmp_path / "home")
        url = f"sqlite:///{tmp_path / 'home' / 'catalog.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
        doc = _init(wheel_venv, tmp_path / "home", url)
    assert doc["schema_revision"] == migrate.head_revision()
    _assert_migrated(url)


def test_editable_install_uses_the_checkout_migrations(source, tmp_path):
    """`make setup` installs in editable mode: migrations come from the checkout's folder."""
    venv = _fresh_venv(tmp_path / "venv", "-e", str(source))
    assert _migrations_dir(venv) == source / "migrations"
    _init(venv, tmp_path / "home")
    _assert_migrated(f"sqlite:///{tmp_path / 'home' / 'catalog.db'}")
