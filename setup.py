"""Build-time package map: the top-level migrations/ ships as skillstore._migrations."""

# Everything else about the build lives in pyproject.toml. This file exists because pyproject's
# `packages.find` cannot be combined with a package whose folder lies outside the found tree:
# the schema history stays at the top level for alembic's CLI (alembic.ini, `alembic revision`),
# and an installed `skillstore init` needs it inside the package (skillstore/catalog/migrate.py).
# The versions folder is a package, so every migration file in it is built in without listing it.
from setuptools import find_namespace_packages, setup

MIGRATIONS = {"skillstore._migrations": "migrations",
              "skillstore._migrations.versions": "migrations/versions"}

setup(
    packages=[*find_namespace_packages(include=["skillstore*", "workers*"],
                                       exclude=["*.__pycache__"]), *MIGRATIONS],
    package_dir=MIGRATIONS,
)
