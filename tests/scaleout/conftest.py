"""Scale-out fixtures: a real S3 server (moto) on loopback, a private Redis and RabbitMQ vhost."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from skillstore.catalog import init_workspace
from skillstore.settings import Settings
from skillstore.zoo.register import register_checkpoint, register_zoo
from tests.conftest import IN_CI, require_service
from tests.workerenv import Env

S3_KEY = "testing"
S3_SECRET = "moto-secret-key"
S3_REGION = "us-east-1"


def missing(what: str) -> None:
    if IN_CI:
        pytest.fail(f"{what}; .ci/run should provide it")
    pytest.skip(what)


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server in this process, on a free loopback port; yields its endpoint URL."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        missing("moto[server] is not installed")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket on the moto server; yields (endpoint, bucket name, boto3 client)."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server, aws_access_key_id=S3_KEY,
                          aws_secret_access_key=S3_SECRET, region_name=S3_REGION)
    name = f"skillstore-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    yield s3_server, name, client


def s3_settings(home: Path, endpoint: str, bucket: str, **urls: str) -> Settings:
    """Settings that put the blobs in s3://bucket/blobs, configured only through settings fields."""
    return Settings(home=home, blob_url=f"s3://{bucket}/blobs", s3_endpoint_url=endpoint,
                    s3_region=S3_REGION, s3_access_key_id=S3_KEY, s3_secret_access_key=S3_SECRET,
                    **urls)


def s3_objects(client, bucket: str, prefix: str = "") -> dict[str, int]:
    """Every object key in a bucket under prefix, with its size, as S3 itself lists them."""
    out: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_redis(tmp_path):
    """A Redis server of this test's own: a shared one would mix its queues with other runs'."""
    binary = shutil.which("redis-server")
    if binary is None:
        require_service("redis")
        missing("redis-server is not on PATH")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"redis-server did not start on port {port}") from None
            time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def rabbitmq_vhost():
    """A RabbitMQ vhost of this test's own (queues `gpu`/`cpu` on `/` are shared by other runs)."""
    require_service("rabbitmq")
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        missing("rabbitmqctl is not on PATH (needed to make a private vhost)")
    vhost = f"skillstore-{uuid.uuid4().hex[:10]}"

    def run(*args: str) -> None:
        subprocess.run([ctl, *args], check=True, capture_output=True, timeout=60)

    run("add_vhost", vhost)
    try:
        run("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        run("delete_vhost", vhost)


def make_bases(zoo, folder: Path, count: int) -> list[tuple[str, Path]]:
    """`count` distinct tiny bases: the zoo's target, then copies with one weight nudged, so each
    has its own fingerprint (the catalog refuses one checkpoint under two names)."""
    import torch
    from safetensors.torch import load_file, save_file

    bases = [("tiny-a", zoo.target)]
    for i in range(1, count):
        out = folder / f"base-{i}"
        shutil.copytree(zoo.target, out)
        for weights in sorted(out.glob("*.safetensors")):
            tensors = load_file(weights)
            name = sorted(tensors)[0]
            tensors[name] = tensors[name] + torch.full_like(tensors[name], 1e-3 * i)
            save_file(tensors, weights, metadata={"format": "pt"})
        bases.append((f"tiny-{'abcdefgh'[i]}", out))
    return bases


def make_scaleout_env(tmp_path: Path, zoo, settings: Settings, *, bases: int = 1,
                      skills=("reverse", "sort")) -> tuple[Env, list[str]]:
    """Like tests.workerenv.make_env, for any settings (S3 blobs), with `bases` registered bases."""
    catalog = init_workspace(settings)
    names = []
    with catalog.session() as s:
        for name, folder in make_bases(zoo, tmp_path / "bases", bases):
            if not names:
                register_zoo(s, catalog.blobs, zoo, base=name, skills=list(skills))
            else:
                register_checkpoint(s, name, folder)
            names.append(name)
    logs = tmp_path / "logs"
    logs.mkdir()
    return Env(settings, catalog, logs), names
