"""Content-addressed blob store over fsspec: atomic writes, digest-verified reads."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .errors import BlobCorruptError, BlobNotFoundError, ConfigError, NotFoundError

if TYPE_CHECKING:
    from .settings import Settings

DIGEST_PREFIX = "sha256:"
CHUNK = 1 << 20
# Object stores publish an object only when its upload completes, so a direct write is atomic.
COMMIT_ON_CLOSE = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}
S3 = {"s3", "s3a"}
# s3fs sends a file below this size as one PutObject, which can carry the SHA-256 for the server
# to check; above it, a multipart upload (each part checksummed by botocore) that aborts on error.
S3_SINGLE_PUT_MAX = 2 * 50 * 2**20


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

    def __init__(self, url: str | os.PathLike[str], options: dict | None = None, *,
                 cache_dir: str | os.PathLike[str] | None = None):
        self.url = str(url)
        self.cache_dir = cache_dir
        options = dict(options or {})
        if fsspec.core.split_protocol(self.url)[0] in COMMIT_ON_CLOSE:
            # Other processes add and delete blobs: a cached listing would answer "exists"
            # for a blob that gc removed, and a writer would then skip uploading it.
            options.setdefault("use_listings_cache", False)
        try:
            self.fs, root = fsspec.core.url_to_fs(self.url, **options)
        except (ImportError, ValueError) as exc:
            raise ConfigError(f"Blob store URL {self.url!r} cannot be opened ({exc}); "
                              "for s3:// install the s3 extra (pip install 'skillstore[s3]').") \
                from None
        self.root = root.rstrip("/")
        self.local = isinstance(self.fs, LocalFileSystem)
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.protocol = protocol
        self.commit_on_close = protocol in COMMIT_ON_CLOSE

    def __repr__(self) -> str:
        return f"BlobStore({self.url!r})"

    # -- layout ---------------------------------------------------------------------------
    def path(self, digest: str) -> str:
        hexpart = check_digest(digest)
        return f"{self.root}/sha256/{hexpart[:2]}/{hexpart[2:]}"

    def _tmp_path(self) -> str:
        """A staging name that says who writes it (`<host>_<pid>_<uuid>`), so that a worker
        restarting on the same host can remove what a killed process of its left behind."""
        return f"{self.root}/tmp/{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex}"

    # -- writes ---------------------------------------------------------------------------
    def put_bytes(self, data: bytes) -> str:
        return self.put_stream(io.BytesIO(data))

    def put_file(self, path: str | os.PathLike[str]) -> str:
        """Store a local file; returns its digest. The file itself is left alone."""
        try:
            if self.commit_on_close:
                return self._upload(os.fspath(path))
            with open(path, "rb") as src:
                return self.put_stream(src)
        except FileNotFoundError:
            raise NotFoundError(f"File {str(path)!r} does not exist.") from None

    def _upload(self, local: str) -> str:
        """Upload a local file to an object store under its digest; whole or not at all.

        The upload is one PutObject or a multipart upload completed only at the end (and aborted
        on error), so no reader ever sees part of an object under its digest name. S3 also
        gets the SHA-256 with a single PutObject and refuses bytes that do not match it.
        """
        h, size = hashlib.sha256(), 0
        with open(local, "rb") as f:
            while block := f.read(CHUNK):
                h.update(block)
                size += len(block)
        digest = DIGEST_PREFIX + h.hexdigest()
        final = self.path(digest)
        if self._size(final) == size:
            return digest  # already there (same name, same bytes): nothing to do
        extra = {}
        if self.protocol in S3:
            extra["ContentType"] = "application/octet-stream"
            if size < S3_SINGLE_PUT_MAX:
                extra["ChecksumSHA256"] = base64.b64encode(h.digest()).decode("ascii")
        self.fs.put_file(local, final, **extra)
        stored = self._size(final)
        if stored != size:
            raise BlobCorruptError(f"Blob {digest} in {self.url!r} was stored with {stored} bytes "
                                   f"instead of {size}; check the object store and write it again.")
        return digest

    def _size(self, path: str) -> int | None:
        try:
            return int(self.fs.info(path).get("size") or 0)
        except FileNotFoundError:
            return None

    def put_stream(self, src: BinaryIO) -> str:
        """Copy a stream into the store, hashing as it goes; a blob appears whole or not at all."""
        if self.commit_on_close:
            # The name is the digest, known only at the end: spool locally, then upload once.
            spool_dir = None
            if self.cache_dir is not None:
                spool_dir = Path(self.cache_dir)
                spool_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(prefix=".spool-", dir=spool_dir) as spool:
                while block := src.read(CHUNK):
                    spool.write(block)
                spool.flush()
                return self._upload(spool.name)
        h = hashlib.sha256()
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
        `cache_dir` (or the store's own, verified, atomically) and reuses that copy next time.
        """
        if self.local:
            self.verify(digest)
            return Path(self.path(digest))
        cache_dir = cache_dir or self.cache_dir
        if cache_dir is None:
            raise ConfigError(
                f"Blob store {self.url!r} is remote; pass a cache_dir for local copies.")
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

    def sweep_staging(self, host: str, alive: Callable[[int], bool]) -> list[str]:
        """Remove the staged writes that dead processes on `host` left (a SIGKILL mid-write),
        and return their paths. A live writer's, another host's and an unnamed one's are
        kept; `skillstore gc` removes those once they are older than its age floor."""
        removed = []
        for path, _modified in self.iter_staging():
            writer_host, sep, rest = path.rsplit("/", 1)[-1].rpartition("_")[0].rpartition("_")
            if not sep or writer_host != host or not rest.isdigit() or alive(int(rest)):
                continue
            try:
                self.fs.rm(path)
            except FileNotFoundError:
                continue  # another sweeper got there first
            removed.append(path)
        return removed

    def delete(self, digest: str) -> None:
        path = self.path(digest)
        if not self.fs.exists(path):
            raise self._missing(digest)
        self.fs.rm(path)


def open_blob_store(settings: Settings) -> BlobStore:
    """The blob store these settings name, with their storage options and a local read cache."""
    return BlobStore(settings.blob_url, settings.blob_storage_options,
                     cache_dir=settings.home / "cache" / "blobs")
