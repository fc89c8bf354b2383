"""Reproducible packs: the same base, fine-tune and policy give the same file, byte for byte,
whatever torch's thread count, the working folder or where the checkpoints lie."""

import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from skillstore.errors import CorruptPackError
from skillstore.fingerprint import fingerprint_checkpoint, iter_checkpoint_tensors, sha256_file
from skillstore.packs import (
    CODECS,
    CodecSpec,
    CompressionPolicy,
    compress_checkpoint,
    load_policy,
    read_pack,
)
from skillstore.packs.format import write_pack

from .conftest import save_pair


def wide_llama(seed: int = 0):
    """A one-layer Llama with 256-wide matrices: wide enough that torch and MKL split its
    decompositions and sums across threads (the conftest models are too small for that)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def wide_pair(tmp_path_factory):
    return save_pair(tmp_path_factory.mktemp("wide"), wide_llama)


def compress_on_threads(threads: int, pair, policy, out, **kw) -> str:
    """sha256 of the pack written with torch on ``threads`` threads, which it leaves so."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        compress_checkpoint(*pair, policy, out, **kw)
        assert torch.get_num_threads() == threads  # the caller's setting is given back
    finally:
        torch.set_num_threads(before)
    return sha256_file(out)


@pytest.mark.parametrize("policy", ["compact", "balanced", load_policy("compact", budget=0.05)],
                         ids=["compact", "balanced", "budget"])
def test_thread_count_does_not_change_the_file(wide_pair, policy, tmp_path):
    one = compress_on_threads(1, wide_pair, policy, tmp_path / "one.safetensors")
    two = compress_on_threads(2, wide_pair, policy, tmp_path / "two.safetensors")
    assert one == two


@pytest.mark.parametrize("policy", ["compact", load_policy("compact", budget=0.05)],
                         ids=["compact", "budget"])
def test_tensors_encoded_at_once_give_the_file_of_one_at_a_time(wide_pair, policy, tmp_path):
    """The randomised range finder seeds torch's one global generator per tensor: tensors
    encoded on several threads at once must still each draw their own seed's numbers."""
    torch.manual_seed(123)
    compress_checkpoint(*wide_pair, policy, tmp_path / "one.safetensors", workers=1)
    after_one = torch.rand(3)
    torch.manual_seed(123)
    compress_checkpoint(*wide_pair, policy, tmp_path / "four.safetensors", workers=4)
    assert torch.equal(torch.rand(3), after_one)  # the caller's random state is left alone
    assert sha256_file(tmp_path / "one.safetensors") == sha256_file(tmp_path / "four.safetensors")


def test_in_order_keeps_the_order_bounds_the_window_and_raises():
    import threading
    import time

    from skillstore.packs.compress import in_order

    lock, busy, most, seen_threads = threading.Lock(), [0], [0], set()

    def work(i):
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
        seen_threads.add(torch.get_num_threads())
        time.sleep(0.02 * (5 - i % 5))  # later items finish first
        with lock:
            busy[0] -= 1
        if i == 7:
            raise ValueError("item 7")
        return i * i

    got = []
    with pytest.raises(ValueError, match="item 7"):
        for item, out in in_order(work, ((i,) for i in range(10)), 3):
            got.append((item[0], out))
    assert got == [(i, i * i) for i in range(7)]
    assert most[0] == 3 and seen_threads == {1}
    assert [out for _, out in in_order(work, ((i,) for i in range(3)), 1)] == [0, 1, 4]


def test_the_default_workers_fit_the_free_memory(wide_pair, tmp_path, monkeypatch):
    """By default as many tensors as torch has threads, fewer when their copies would take
    more than half of the free memory; at least one."""
    from skillstore.packs import compress
    from skillstore.packs.compress import WORKER_COPIES, default_workers

    shapes = [(4096, 1024), (1024,), (8, 8)]
    one = WORKER_COPIES * 4 * 4096 * 1024  # bytes a worker on the largest tensor holds
    assert default_workers(shapes, 16, available=64 * one) == 16
    assert default_workers(shapes, 16, available=10 * one) == 5
    assert default_workers(shapes, 16, available=one) == 1  # never none
    assert default_workers([], 4, available=1) == 4  # nothing to hold

    # compress_checkpoint asks for it when the caller names no number, from the pair's shapes
    used = []
    real = compress.in_order
    monkeypatch.setattr(compress, "in_order",
                        lambda work, items, workers: used.append(workers) or real(work, items,
                                                                                    workers))
    largest = 256 * 512  # wide_llama's MLP matrices and lm head
    free = type("vm", (), {"available": 2 * 2 * WORKER_COPIES * 4 * largest})()
    monkeypatch.setattr("psutil.virtual_memory", lambda: free)
    compress_on_threads(4, wide_pair, "compact", tmp_path / "low.safetensors")
    assert used and set(used) == {2}  # each pass over the tensors
    used.clear()
    compress_on_threads(4, wide_pair, "compact", tmp_path / "named.safetensors", workers=3)
    assert used and set(used) == {3}


@pytest.mark.parametrize("codec", list(CODECS), ids=list(CODECS))
def test_every_codec_gives_the_same_file_on_any_thread_count(wide_pair, codec, tmp_path):
    spec = CodecSpec(codec=codec)
    policy = CompressionPolicy(embedding=spec, attention=spec, mlp=spec)
    one = compress_on_threads(1, wide_pair, policy, tmp_path / "one.safetensors")
    two = compress_on_threads(2, wide_pair, policy, tmp_path / "two.safetensors")
    assert one == two


def test_calibrated_packs_do_not_depend_on_the_thread_count(wide_pair, tmp_path):
    """GPTQ's products, and the budget's output errors, on fixed calibration statistics."""
    gen = torch.Generator().manual_seed(0)
    calibration = {}
    for name, t in iter_checkpoint_tensors(wide_pair[0]):
        if t.dim() == 2 and "embed" not in name:
            x = torch.randn(64, t.shape[1], generator=gen)
            calibration[name] = x.T @ x
    # mplr quantizes with GPTQ; the budget weighs its directions by output error instead
    gptq_policy = CompressionPolicy(attention=CodecSpec(codec="mplr", params={"rank": 16}))
    for policy, gptq in ((gptq_policy, True), (load_policy("compact", budget=0.05), False)):
        one = compress_on_threads(1, wide_pair, policy, tmp_path / "one.safetensors",
                                  calibration=calibration)
        two = compress_on_threads(2, wide_pair, policy, tmp_path / "two.safetensors",
                                  calibration=calibration)
        assert one == two
        entries = read_pack(tmp_path / "one.safetensors").manifest["tensors"].values()
        assert any(e["info"].get("calibrated") for e in entries) == gptq


def copy_pair(pair, root):
    root.mkdir(parents=True)
    return shutil.copytree(pair[0], root / "base"), shutil.copytree(pair[1], root / "tuned")


def test_checkpoint_folders_do_not_change_the_file(llama_pair, tmp_path):
    here = copy_pair(llama_pair, tmp_path / "host-a" / "models")
    there = copy_pair(llama_pair, tmp_path / "elsewhere")
    a = compress_checkpoint(*here, "compact", tmp_path / "a.safetensors").path
    b = compress_checkpoint(*there, "compact", tmp_path / "b.safetensors").path
    assert sha256_file(a) == sha256_file(b)
    m = read_pack(a).manifest
    assert m["created_from"] == {"tuned_fingerprint": fingerprint_checkpoint(llama_pair[1])}
    assert m["base_fingerprint"] == fingerprint_checkpoint(llama_pair[0])
    assert str(tmp_path) not in str(m)


def test_a_fresh_process_elsewhere_writes_the_same_file(wide_pair, tmp_path):
    """`skillstore pack compress` as a user runs it, with OMP_NUM_THREADS=2, from another
    working folder on a copy of the checkpoints given by relative paths, against this
    process on one thread and the original folders."""
    cwd = tmp_path / "elsewhere" / "nested"
    copy_pair(wide_pair, cwd)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    env.pop("MKL_NUM_THREADS", None)
    run = subprocess.run(
        [sys.executable, "-m", "skillstore.cli", "pack", "compress", "--base", "base",
         "--tuned", "tuned", "--policy", "compact", "-o", "pack.safetensors"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    here = compress_on_threads(1, wide_pair, "compact", tmp_path / "here.safetensors")
    assert sha256_file(cwd / "pack.safetensors") == here


def test_the_fine_tune_is_named_where_the_payload_cannot_tell(llama_pair, tmp_path):
    """Two fine-tunes one float32 step apart give the same fp16 payload; the fine-tune's
    fingerprint in the manifest still tells their packs apart."""
    other = shutil.copytree(llama_pair[1], tmp_path / "other")
    shard = other / "model.safetensors"
    weights = load_file(shard)
    w = weights["model.norm.weight"]
    w[0] = torch.nextafter(w[0], torch.tensor(2.0))
    save_file(weights, shard, metadata={"format": "pt"})
    a = read_pack(compress_checkpoint(*llama_pair, "lossless", tmp_path / "a.safetensors").path)
    b = read_pack(compress_checkpoint(llama_pair[0], other, "lossless",
                                      tmp_path / "b.safetensors").path)
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
    assert a.manifest["created_from"] != b.manifest["created_from"] and a.digest != b.digest


def rewrite(pack_path, out, created_from):
    pack = read_pack(pack_path)
    write_pack(out, {**pack.manifest, "created_from": created_from}, pack.tensors)
    return out


def test_packs_that_recorded_folders_still_load(compact_pack, tmp_path):
    old = rewrite(compact_pack, tmp_path / "old.safetensors",
                  {"base": "/home/someone/base", "tuned": "/home/someone/tuned"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pack = read_pack(old)
    assert pack.manifest["created_from"]["base"] == "/home/someone/base"


def test_created_from_unknown_keys_warn_and_missing_ones_fail(compact_pack, tmp_path):
    odd = rewrite(compact_pack, tmp_path / "odd.safetensors",
                  {"tuned_fingerprint": "sha256:" + "0" * 64, "host": "build-7"})
    with pytest.warns(UserWarning, match=r"unknown created_from keys \['host'\]"):
        read_pack(odd)
    half = rewrite(compact_pack, tmp_path / "half.safetensors", {"base": "/models/base"})
    with pytest.raises(CorruptPackError, match="created_from lacks tuned"):
        read_pack(half)
