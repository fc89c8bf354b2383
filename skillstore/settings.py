"""Service settings: one pydantic-settings object read from SKILLSTORE_* variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where the catalog, the blobs and the job queue live.

    Every field can be set by an environment variable named ``SKILLSTORE_<FIELD>``.
    Unset URLs default to the embedded setup inside ``home``: SQLite, a blob folder,
    and Celery on kombu's SQLAlchemy transport.
    """

    model_config = SettingsConfigDict(env_prefix="SKILLSTORE_", frozen=True, extra="ignore")

    home: Path = Field(default=Path(".skillstore"), description="Workspace folder.")
    database_url: str = Field(default="", description="SQLAlchemy URL of the catalog.")
    blob_url: str = Field(default="", description="fsspec URL of the blob store.")
    broker_url: str = Field(default="", description="Celery broker URL.")
    result_backend: str = Field(default="", description="Celery result backend URL.")

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        home = self.home.expanduser().absolute()
        object.__setattr__(self, "home", home)
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{home / 'catalog.db'}")
        if not self.blob_url:
            object.__setattr__(self, "blob_url", str(home / "blobs"))
        if not self.broker_url:
            object.__setattr__(self, "broker_url", f"sqla+sqlite:///{home / 'broker.db'}")
        if not self.result_backend:
            object.__setattr__(self, "result_backend", f"db+sqlite:///{home / 'results.db'}")
        return self

    @property
    def is_embedded_database(self) -> bool:
        return self.database_url.startswith("sqlite")


def get_settings(**overrides: object) -> Settings:
    """Read settings from the environment, with explicit overrides on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
