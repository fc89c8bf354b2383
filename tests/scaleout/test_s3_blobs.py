"""The blob store on a real S3 server (moto, loopback): set by settings alone, atomic, verified."""

from __future__ import annotations

import hashlib
import io
from datetime import timedelta

import pytest

from skillstore.blobstore import open_blob_store
from skillstore.catalog import add_skill, collect_garbage, init_workspace
from skillstore.errors import BlobCorruptError, BlobNotFoundError
from skillstore.settings import get_settings

from .conftest import S3_KEY, S3_REGION, S3_SECRET, s3_objects, s3_settings


@pytest.fixture
def s3_store(tmp_path, s3_bucket):
    endpoint, bucket, client = s3_bucket
    return open_blob_store(s3_settings(tmp_path / "ws", endpoint, bucket)), bucket, client


def test_round_trip_lands_in_the_bucket_under_its_digest(s3_store, tmp_path):
    store, bucket, client = s3_store
    data = b"pack bytes " * 50_000  # several read chunks
    digest = store.put_bytes(data)
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    hexpart = digest.removeprefix("sha256:")
    # What S3 itself holds: one object, named by the digest, with every byte; no staging object.
    assert s3_objects(client, bucket) == {f"blobs/sha256/{hexpart[:2]}/{hexpart[2:]}": len(data)}
    on_disk = tmp_path / "pack.bin"
    on_disk.write_bytes(data)
    assert store.put_file(on_disk) == digest
    assert store.put_stream(io.BytesIO(data)) == digest
    assert len(s3_objects(client, bucket)) == 1
    assert store.get_bytes(digest) == data
    assert [(b.digest, b.size) for b in store.iter_blobs()] == [(digest, len(data))]
    assert next(store.iter_blobs()).modified is not None
    local = store.local_path(digest)  # the store's own cache under SKILLSTORE_HOME
    assert local.read_bytes() == data and local.is_relative_to(tmp_path / "ws")


def test_settings_from_environment_and_aws_variables(tmp_path, s3_bucket, monkeypatch):
    endpoint, bucket, client = s3_bucket
    monkeypatch.setenv("SKILLSTORE_HOME", str(tmp_path / "ws"))
    monkeypatch.setenv("SKILLSTORE_BLOB_URL", f"s3://{bucket}/env")
    for var in ("SKILLSTORE_S3_ENDPOINT_URL", "SKILLSTORE_S3_ACCESS_KEY_ID",
                "SKILLSTORE_S3_SECRET_ACCESS_KEY", "SKILLSTORE_S3_REGION"):
        monkeypatch.delenv(var, raising=False)
    # Only the standard AWS variables: botocore reads them.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", S3_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", S3_REGION)
    d = open_blob_store(get_settings()).put_bytes(b"via AWS_*")
    assert any(k.startswith("env/sha256/") for k in s3_objects(client, bucket))
    # SKILLSTORE_* wins over AWS_*: a wrong AWS endpoint is ignored when ours is set.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.setenv("SKILLSTORE_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("SKILLSTORE_BLOB_OPTIONS", '{"config_kwargs": {"connect_timeout": 5}}')
    settings = get_settings()
    assert settings.blob_storage_options["config_kwargs"] == {"connect_timeout": 5}
    assert open_blob_store(settings).get_bytes(d) == b"via AWS_*"
    assert S3_SECRET not in repr(s3_settings(tmp_path, endpoint, bucket))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corruption_in_s3_is_detected_and_never_cached(s3_store, damage):
    store, bucket, client = s3_store
    data = bytes(range(256)) * 400
    digest = store.put_bytes(data)
    key = store.path(digest).split("/", 1)[1]
    raw = bytearray(data)
    if damage == "flip":
        raw[1000] ^= 0x01
    else:
        raw = raw[:-7]
    client.put_object(Bucket=bucket, Key=key, Body=bytes(raw))  # someone else damages it
    with pytest.raises(BlobCorruptError, match=digest):
        store.verify(digest)
    with pytest.raises(BlobCorruptError, match=digest):
        store.local_path(digest)
    assert not any(store.cache_dir.glob("*")), "a corrupt download must not stay in the cache"
    # A damaged local cached copy is fetched again once the object is repaired.
    client.put_object(Bucket=bucket, Key=key, Body=data)
    cached = store.local_path(digest)
    cached.write_bytes(b"rot")
    assert store.local_path(digest).read_bytes() == data


def test_a_failed_upload_leaves_nothing_under_the_digest(s3_store, monkeypatch):
    store, bucket, client = s3_store

    class Broken(io.RawIOBase):
        def __init__(self):
            self.sent = 0

        def readable(self):
            return True

        def readinto(self, buf):
            if self.sent > 3 << 20:
                raise ConnectionResetError("the client went away mid-upload")
            buf[:len(buf)] = b"x" * len(buf)
            self.sent += len(buf)
            return len(buf)

    with pytest.raises(ConnectionResetError):
        store.put_stream(io.BufferedReader(Broken()))

    def refuse(*args, **kwargs):
        raise OSError("S3 refused the upload")

    monkeypatch.setattr(store.fs, "put_file", refuse)
    with pytest.raises(OSError, match="refused"):
        store.put_bytes(b"never stored")
    assert s3_objects(client, bucket) == {}
    assert list(store.iter_blobs()) == []
    assert not any(store.cache_dir.glob("*")), "the local spool file is removed"


def test_a_blob_deleted_by_another_process_is_written_again(s3_store):
    """No stale listing: once another client deletes a blob, `exists` says so; a put restores it."""
    store, bucket, client = s3_store
    digest = store.put_bytes(b"kept by a pack")
    assert [b.digest for b in store.iter_blobs()] == [digest]  # a listing that s3fs could cache
    client.delete_object(Bucket=bucket, Key=store.path(digest).split("/", 1)[1])
    assert not store.exists(digest)
    with pytest.raises(BlobNotFoundError, match=digest):
        store.get_bytes(digest)
    assert store.put_bytes(b"kept by a pack") == digest
    assert store.get_bytes(digest) == b"kept by a pack"


def test_gc_on_s3_deletes_only_unreferenced_blobs(tmp_path, s3_bucket):
    endpoint, bucket, client = s3_bucket
    catalog = init_workspace(s3_settings(tmp_path / "ws", endpoint, bucket))
    store = catalog.blobs
    kept = store.put_bytes(b'{"prompt": "a", "answer": "b"}\n')
    orphan = store.put_bytes(b"left behind by a crashed job")
    with catalog.session() as s:
        add_skill(s, name="arith", suite="arith", data_sha256=kept)
        young = collect_garbage(s, store, dry_run=False)  # default age floor: an hour
        assert [b.digest for b in young.too_young] == [orphan] and young.deleted == []
        report = collect_garbage(s, store, dry_run=False, min_age=timedelta(0))
    assert report.deleted == [orphan] and report.kept == 1
    assert [b.digest for b in store.iter_blobs()] == [kept]
    assert len(s3_objects(client, bucket)) == 1
    catalog.close()
