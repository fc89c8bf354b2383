"""Blob store: content addressing, atomic writes, corruption detection, and gc."""

from __future__ import annotations

import hashlib
import io
from datetime import timedelta

import pytest
from factories import base, pack, skill

from skillstore.blobstore import BlobStore
from skillstore.catalog import collect_garbage
from skillstore.errors import BlobCorruptError, BlobNotFoundError, ConfigError


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    if request.param == "local":
        yield BlobStore(tmp_path / "blobs")
        return
    s = BlobStore(f"memory://blobs-{tmp_path.name}")
    yield s
    if s.fs.exists(s.root):
        s.fs.rm(s.root, recursive=True)


def test_content_addressed_and_deduplicated(store):
    data = b"pack bytes" * 1000
    d = store.put_bytes(data)
    assert d == "sha256:" + hashlib.sha256(data).hexdigest()
    assert store.put_stream(io.BytesIO(data)) == d
    assert store.get_bytes(d) == data
    assert [b.digest for b in store.iter_blobs()] == [d]
    assert [b.size for b in store.iter_blobs()] == [len(data)]


@pytest.mark.parametrize("damage", ["flip", "truncate", "append"])
def test_corruption_is_detected_and_named(store, damage):
    d = store.put_bytes(b"0123456789" * 100)
    raw = bytearray(store.fs.cat_file(store.path(d)))
    if damage == "flip":
        raw[500] ^= 0x01
    elif damage == "truncate":
        raw = raw[:-1]
    else:
        raw += b"x"
    store.fs.pipe_file(store.path(d), bytes(raw))
    with pytest.raises(BlobCorruptError, match=d):
        store.get_bytes(d)
    with pytest.raises(BlobCorruptError, match=d):
        store.verify(d)


def test_missing_blob_is_named(store):
    d = "sha256:" + "ab" * 32
    with pytest.raises(BlobNotFoundError, match=d):
        store.get_bytes(d)
    with pytest.raises(ConfigError, match="not a blob digest"):
        store.get_bytes("sha256:xyz")


def test_failed_write_leaves_nothing(store):
    class Exploding(io.RawIOBase):
        def __init__(self):
            self.calls = 0

        def read(self, n=-1):
            self.calls += 1
            if self.calls > 2:
                raise OSError("disk on fire")
            return b"x" * 1024

    with pytest.raises(OSError, match="disk on fire"):
        store.put_stream(Exploding())
    assert list(store.iter_blobs()) == []
    tmp = f"{store.root}/tmp"
    assert not store.fs.exists(tmp) or store.fs.ls(tmp) == []


def test_local_path_verifies(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    d = store.put_bytes(b"weights")
    assert store.local_path(d).read_bytes() == b"weights"
    store.local_path(d).write_bytes(b"weightz")
    with pytest.raises(BlobCorruptError):
        store.local_path(d)


def test_remote_local_path_caches_verified_copy(tmp_path):
    store = BlobStore(f"memory://cache-{tmp_path.name}")
    d = store.put_bytes(b"weights")
    path = store.local_path(d, cache_dir=tmp_path / "cache")
    assert path.read_bytes() == b"weights"
    path.write_bytes(b"damaged")  # a damaged cached copy is fetched again
    assert store.local_path(d, cache_dir=tmp_path / "cache").read_bytes() == b"weights"
    store.fs.rm(store.root, recursive=True)


def test_gc_deletes_only_unreferenced(session, tmp_path):
    store = BlobStore(tmp_path / "blobs")
    kept = store.put_bytes(b"referenced pack")
    orphan = store.put_bytes(b"orphan")
    p = pack(session, skill(session), base(session), tag="x")
    p.blob_digest = kept
    session.flush()

    young = collect_garbage(session, store, dry_run=False)  # default age floor: 1 hour
    assert young.deleted == [] and [b.digest for b in young.too_young] == [orphan]

    dry = collect_garbage(session, store, dry_run=True, min_age=timedelta(0))
    assert [b.digest for b in dry.unreferenced] == [orphan] and dry.deleted == []
    assert store.exists(orphan)

    store.fs.makedirs(f"{store.root}/tmp", exist_ok=True)
    store.fs.pipe_file(f"{store.root}/tmp/interrupted", b"half a pack")
    done = collect_garbage(session, store, dry_run=False, min_age=timedelta(0))
    assert done.deleted == [orphan] and done.kept == 1
    assert done.stale_staging and not store.fs.exists(f"{store.root}/tmp/interrupted")
    assert not store.exists(orphan) and store.get_bytes(kept) == b"referenced pack"


_SLOW_WRITER = """
import sys, time
from skillstore.blobstore import BlobStore

class Stalls:
    sent = False
    def read(self, n):
        if self.sent:
            time.sleep(3600)
        self.sent = True
        return b"half a pack"

BlobStore(sys.argv[1]).put_stream(Stalls())
"""


def test_a_writer_killed_mid_write_leaves_a_staged_file_that_its_host_sweeps(tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    store = BlobStore(tmp_path / "blobs")
    writer = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(tmp_path / "blobs")])
    deadline = time.monotonic() + 60
    while not list(store.iter_staging()) and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    [(killed, _)] = store.iter_staging()
    host = socket.gethostname()
    kept = [f"{store.root}/tmp/{name}" for name in
            (f"{host}_{os.getpid()}_live", f"other-host_{writer.pid}_x", "unnamed")]
    for path in kept:
        store.fs.pipe_file(path, b"in flight")

    alive = {os.getpid()}.__contains__
    assert store.sweep_staging("another-host", alive) == []
    assert store.sweep_staging(host, alive) == [killed]
    assert sorted(p for p, _ in store.iter_staging()) == sorted(kept)
