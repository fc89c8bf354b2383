"""The codec contract, run on every registered codec: a codec added to CODECS is checked here."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load, save

from skillstore.errors import ConfigError
from skillstore.packs.codec_protocol import Codec
from skillstore.packs.codecs import CODECS, codec_params, get_codec

# The relative error each codec promises at its defaults on DELTA (rank 6 plus small noise),
# as a function of the codec's parameters. A new codec states its promise here.
PROMISED_REL_ERROR = {
    "dense": lambda c: 1e-3,  # fp16 rounding only
    "lowrank": lambda c: 1e-2,  # rank 16 covers the delta's rank 6: the noise and fp16 are left
    "mplr": lambda c: 0.1,  # the same directions in 8/4/2 bits
    "bitdelta": lambda c: 0.8,  # one sign per entry and one scale: ~0.66 on these entries
    "dare": lambda c: 1.1 * math.sqrt(c.drop / (1 - c.drop)),  # unbiased, std sqrt(p / (1 - p))
    "magnitude": lambda c: 0.99,  # the largest entries exactly: better than dropping the delta
}

codecs = pytest.mark.parametrize("codec", list(CODECS.values()), ids=list(CODECS))


def low_rank_delta(m: int = 64, n: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(m, 6, generator=g) @ torch.randn(6, n, generator=g)
    return 0.01 * low + 1e-4 * torch.randn(m, n, generator=g)


DELTA = low_rank_delta()
_X = torch.randn(256, 128, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.1, 2, 128)
HESSIAN = _X.T @ _X / _X.shape[0]  # calibration inputs with unequal feature scales


def stored(codec: Codec, name: str, delta: torch.Tensor, hessian=None) -> torch.Tensor:
    """Encode, store the payload as safetensors and the info as JSON, read both back, decode."""
    enc = codec.encode(name, delta, hessian=hessian)
    payload = load(save(enc.tensors)) if enc.tensors else {}
    info = json.loads(json.dumps(enc.info))
    part = codec.decode(name, tuple(delta.shape), info, payload)
    assert tuple(part.shape) == tuple(delta.shape)
    return part.to_dense()


def output_error(e: torch.Tensor) -> float:
    return float(torch.trace(e @ HESSIAN @ e.T).sqrt())


@codecs
def test_codec_round_trips_within_its_promise(codec):
    assert isinstance(codec, Codec)
    assert codec.name in PROMISED_REL_ERROR, \
        f"codec {codec.name!r}: state its promise in PROMISED_REL_ERROR"
    rec = stored(codec, "model.layers.0.mlp.down_proj.weight", DELTA)
    assert torch.isfinite(rec).all()
    rel = float((rec - DELTA).norm() / DELTA.norm())
    assert rel <= PROMISED_REL_ERROR[codec.name](codec), (codec.name, rel)


@codecs
def test_codec_reports_bytes_no_larger_than_dense_fp16(codec):
    enc = codec.encode("w", DELTA)
    assert 0 < enc.nbytes == len(save(enc.tensors)) - _header_len(save(enc.tensors))
    assert enc.nbytes <= 2 * DELTA.numel()
    if codec.name != "dense":
        assert enc.nbytes < 2 * DELTA.numel(), f"{codec.name} at its defaults compresses nothing"


def _header_len(blob: bytes) -> int:
    return 8 + int.from_bytes(blob[:8], "little")


@codecs
def test_codec_is_deterministic(codec):
    """Packs are content-addressed: the same delta must encode to the same bytes."""
    a, b = codec.encode("w", DELTA.clone()), codec.encode("w", DELTA.clone())
    assert a.info == b.info and save(a.tensors) == save(b.tensors)


@codecs
def test_codec_rebuilds_from_its_manifest_params(codec):
    params = json.loads(json.dumps(codec_params(codec)))
    rebuilt = get_codec(codec.name, params)
    assert rebuilt == codec
    enc = codec.encode("w", DELTA)
    assert torch.equal(rebuilt.decode("w", tuple(DELTA.shape), enc.info, enc.tensors).to_dense(),
                       codec.decode("w", tuple(DELTA.shape), enc.info, enc.tensors).to_dense())


@codecs
def test_calibration_does_not_worsen_the_layer_output(codec):
    """Callers pass a Hessian for every tensor; using it may only help the layer's output."""
    plain = output_error(stored(codec, "w", DELTA) - DELTA)
    calibrated = output_error(stored(codec, "w", DELTA, HESSIAN) - DELTA)
    assert calibrated <= 1.05 * plain + 1e-9


@codecs
def test_codec_takes_a_vector_or_refuses_it_clearly(codec):
    vec = 0.01 * torch.randn(32, generator=torch.Generator().manual_seed(2))
    try:
        rec = stored(codec, "model.norm.weight", vec)
    except ConfigError as exc:
        assert "2-D" in str(exc)
        return
    assert rec.shape == vec.shape and torch.isfinite(rec).all()


@pytest.mark.parametrize("codec", [c for c in CODECS.values() if hasattr(c, "decode_many")],
                         ids=lambda c: c.name)
def test_batched_decode_equals_one_by_one(codec):
    deltas = [low_rank_delta(seed=s) for s in range(3)]
    encs = [codec.encode(f"w{i}", d) for i, d in enumerate(deltas)]
    shape, names = tuple(DELTA.shape), [f"w{i}" for i in range(3)]
    many = codec.decode_many(names, shape, encs[0].info, [e.tensors for e in encs])
    for name, enc, part in zip(names, encs, many, strict=True):
        assert part.name == name
        alone = codec.decode(name, shape, enc.info, enc.tensors)
        assert torch.equal(part.to_dense(), alone.to_dense())
