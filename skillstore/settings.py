"""Service settings: one pydantic-settings object read from SKILLSTORE_* variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


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

    # S3 blob storage: options for an s3:// blob_url. Left empty, each one falls back to the
    # standard AWS_* variables that botocore reads (AWS_ENDPOINT_URL_S3, AWS_ACCESS_KEY_ID, ...).
    s3_endpoint_url: str = Field(default="", description="S3 endpoint (MinIO, Ceph); empty: AWS.")
    s3_region: str = Field(default="", description="S3 region, e.g. us-east-1.")
    s3_access_key_id: str = Field(default="", description="S3 access key id.")
    s3_secret_access_key: str = Field(default="", repr=False, description="S3 secret key.")
    blob_options: dict[str, object] = Field(
        default_factory=dict, description="Extra fsspec storage options for blob_url (JSON).")

    @property
    def blob_storage_options(self) -> dict[str, object]:
        """fsspec storage options for blob_url: blob_options, with the s3_* fields that are set."""
        opts = dict(self.blob_options)
        if not self.blob_url.startswith(("s3://", "s3a://")):
            return opts
        for key, value in (("endpoint_url", self.s3_endpoint_url), ("key", self.s3_access_key_id),
                           ("secret", self.s3_secret_access_key)):
            if value:
                opts[key] = value
        if self.s3_region:
            opts["client_kwargs"] = {**dict(opts.get("client_kwargs") or {}),
                                     "region_name": self.s3_region}
        return opts

    def s3_env(self) -> dict[str, str]:
        """The SKILLSTORE_S3_* / SKILLSTORE_BLOB_OPTIONS variables that hand these on to a child."""
        import json

        env = {f"SKILLSTORE_{name.upper()}": getattr(self, name)
               for name in ("s3_endpoint_url", "s3_region", "s3_access_key_id",
                            "s3_secret_access_key") if getattr(self, name)}
        if self.blob_options:
            env["SKILLSTORE_BLOB_OPTIONS"] = json.dumps(self.blob_options)
        return env

    # Multi-GPU workers (docs/deploy.md): the train step runs `accelerate launch` with this
    # config (training.launch) instead of training in the worker's own process.
    accelerate_config: Path | None = Field(
        default=None, description="accelerate config file for the train step (DDP across this "
                                  "host's GPUs); unset: train in the worker's process.")

    @field_validator("accelerate_config", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    # A worker killed between taking a queued job's message and claiming the job leaves a job
    # no one owns and no queue holds; workers put such a message back (workers/unclaimed.py).
    stranded_after_s: float = Field(
        default=60.0, gt=0, description="Seconds a queued job may sit unclaimed with its message "
                                        "taken before a worker puts the message back.")

    # HTTP API (`skillstore serve`, docs/api.md). Tokens are stored as sha256 hex digests only;
    # `skillstore api-token new` prints a fresh token and the digest to put here.
    api_token_hashes: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="sha256 hex digests of the bearer tokens the API accepts "
                                "(comma-separated or a JSON list).")
    api_open_reads: bool = Field(default=False, description="Serve GET requests without a token.")
    api_max_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1,
                                      description="Largest request body the API accepts (bytes).")
    api_path_roots: Annotated[tuple[Path, ...], NoDecode] = Field(
        default=(), description="Server folders the API may read checkpoints and datasets from "
                                "(comma-separated); empty: any folder the server can read.")

    @field_validator("api_token_hashes", "api_path_roots", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return tuple(json.loads(text))
            return tuple(v.strip() for v in text.split(",") if v.strip())
        return value

    @field_validator("api_token_hashes")
    @classmethod
    def _check_hashes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for digest in value:
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError("api_token_hashes holds sha256 hex digests (64 lowercase hex "
                                 "digits), not tokens; hash a token with "
                                 "`skillstore api-token hash`.")
        return value

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


def get_settings(**overrides: object) -> Settings:
    """Read settings from the environment, with explicit overrides on top."""
    return Settings(**overrides)  # type: ignore[arg-type]
