"""Content-addressed blob store over fsspec: atomic writes, digest-verified reads."""

from __future__ import annotations

import hashlib
import io
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .errors import BlobCorruptError, BlobNotFoundError, ConfigError, NotFoundError

DIGEST_PREFIX = "sha256:"
CHUNK = 1 << 20
# Object stores publish an object only when its upload completes, so a direct write is atomic.
COMMIT_ON_CLOSE = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int
    modified: datetime | None


def check_digest(digest: str) -> str:
    """Validate a `sha256:<64 hex>` digest and return its hex part."""
    hexpart = digest.removeprefix(DIGEST_PREFIX)
    if not digest.startswith(DIGEST_PREFIX) or len(hexpart) != 64 or \
            any(c not in "0123456789abcdef" for c in hexpart):
        raise ConfigError(f"{digest!r} is not a blob digest; expected 'sha256:' and 64 hex digits.")
    return hexpart


def _mtime(info: dict) -> datetime | None:
    value = info.get("mtime") or info.get("LastModified") or info.get("created")
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc)
    return None


class BlobStore:
    """Blobs live at `<root>/sha256/<2 hex>/<62 hex>`; the name is the sha256 of the bytes."""

    def __init__(self, url: str | os.PathLike[str]):
        self.url = str(url)
        try:
            self.fs, root = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"Blob store URL {self.url!r} cannot be opened ({exc}); "
                              "for s3:// install the s3 extra (pip install 'skillstore[s3]').") \
                from None
        self.root = root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.commit_on_close = protocol in COMMIT_ON_CLOSE

    def __repr__(self) -> str:
        return f"BlobStore({self.url!r})"

    # -- layout ---------------------------------------------------------------------------
    def path(self, digest: str) -> str:
        hexpart = check_digest(digest)
        return f"{self.root}/sha256/{hexpart[:2]}/{hexpart[2:]}"

    def _tmp_path(self) -> str:
        return f"{self.root}/tmp/{uuid.uuid4().hex}"

    # -- writes ---------------------------------------------------------------------------
    def put_bytes(self, data: bytes) -> str:
        return self.put_stream(io.BytesIO(data))

    def put_file(self, path: str | os.PathLike[str]) -> str:
        """Store a local file; returns its digest. The file itself is left alone."""
        try:
            with open(path, "rb") as src:
                return self.put_stream(src)
        except FileNotFoundError:
            raise NotFoundError(f"File {str(path)!r} does not exist.") from None

    def put_stream(self, src: BinaryIO) -> str:
        """Copy a stream into the store, hashing as it goes; a blob appears whole or not at all."""
        h = hashlib.sha256()
        if self.commit_on_close:
            # The name is the digest, which is known only at the end: stage, then copy once.
            staged = self._tmp_path()
            with self.fs.open(staged, "wb") as dst:
                while block := src.read(CHUNK):
                    h.update(block)
                    dst.write(block)
            final = self.path(DIGEST_PREFIX + h.hexdigest())
            if not self.fs.exists(final):
                self.fs.copy(staged, final)
            self.fs.rm(staged)
            return DIGEST_PREFIX + h.hexdigest()
        tmp = self._tmp_path()
        self.fs.makedirs(tmp.rsplit("/", 1)[0], exist_ok=True)
        try:
            with self.fs.open(tmp, "wb") as dst:
                while block := src.read(CHUNK):
                    h.update(block)
                    dst.write(block)
                if self.local:
                    dst.flush()
                    os.fsync(dst.fileno())
            digest = DIGEST_PREFIX + h.hexdigest()
            final = self.path(digest)
            if self.fs.exists(final):
                self.fs.rm(tmp)
                return digest
            self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
            if self.local:
                os.replace(tmp, final)  # atomic on one filesystem
            else:
                self.fs.mv(tmp, final)
            return digest
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
            raise

    # -- reads ----------------------------------------------------------------------------
    def exists(self, digest: str) -> bool:
        return self.fs.exists(self.path(digest))

    def _missing(self, digest: str) -> BlobNotFoundError:
        return BlobNotFoundError(f"Blob {digest} is missing from the blob store {self.url!r}; "
                                 "re-create it (rerun the job that wrote it) or restore the store.")

    def _corrupt(self, digest: str, actual: str) -> BlobCorruptError:
        return BlobCorruptError(
            f"Blob {digest} in {self.url!r} is corrupted (its bytes hash to {actual}); "
            "delete it and re-create it (rerun the job that wrote it) or restore it from a backup.")

    def iter_chunks(self, digest: str) -> Iterator[bytes]:
        """Stream a blob; the digest is checked when the last chunk has been read."""
        path = self.path(digest)
        h = hashlib.sha256()
        try:
            f = self.fs.open(path, "rb")
        except FileNotFoundError:
            raise self._missing(digest) from None
        with f:
            while block := f.read(CHUNK):
                h.update(block)
                yield block
        actual = DIGEST_PREFIX + h.hexdigest()
        if actual != digest:
            raise self._corrupt(digest, actual)

    def get_bytes(self, digest: str) -> bytes:
        """The verified bytes of a blob."""
        return b"".join(self.iter_chunks(digest))

    def verify(self, digest: str) -> None:
        for _ in self.iter_chunks(digest):
            pass

    def local_path(self, digest: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
        """A verified local file with the blob's bytes (for readers such as safetensors).

        A local store returns its own file after hashing it; a remote one downloads into
        `cache_dir` (verified, atomically) and reuses that copy on the next call.
        """
        if self.local:
            self.verify(digest)
            return Path(self.path(digest))
        if cache_dir is None:
            raise ConfigError(f"Blob store {self.url!r} is remote; pass a cache_dir for local copies.")
        target = Path(cache_dir) / check_digest(digest)
        if target.is_file():
            h = hashlib.sha256()
            with open(target, "rb") as f:
                while block := f.read(CHUNK):
                    h.update(block)
            if DIGEST_PREFIX + h.hexdigest() == digest:
                return target
            target.unlink()  # a damaged cached copy: fetch it again
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        try:
            with open(tmp, "wb") as dst:
                for block in self.iter_chunks(digest):
                    dst.write(block)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target

    # -- listing and deletion -------------------------------------------------------------
    def iter_blobs(self) -> Iterator[BlobInfo]:
        base = f"{self.root}/sha256"
        if not self.fs.exists(base):
            return
        for path, info in sorted(self.fs.find(base, detail=True).items()):
            parts = path.rstrip("/").split("/")
            digest = DIGEST_PREFIX + parts[-2] + parts[-1]
            try:
                check_digest(digest)
            except ConfigError:
                continue  # not ours: leave foreign files alone
            yield BlobInfo(digest, int(info.get("size") or 0), _mtime(info))

    def iter_staging(self) -> Iterator[tuple[str, datetime | None]]:
        """Leftovers of interrupted writes in `<root>/tmp/`: (path, modified)."""
        tmp = f"{self.root}/tmp"
        if not self.fs.exists(tmp):
            return
        for path, info in sorted(self.fs.find(tmp, detail=True).items()):
            yield path, _mtime(info)

    def delete(self, digest: str) -> None:
        path = self.path(digest)
        if not self.fs.exists(path):
            raise self._missing(digest)
        self.fs.rm(path)
