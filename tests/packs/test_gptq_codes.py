"""GPTQ in packs: the stored codes are GPTQ's own, on its grids, and they lower output error."""

import json

import pytest
import torch

from skillstore.errors import ConfigError
from skillstore.packs import (
    CompressionPolicy,
    collect_hessians,
    compress_checkpoint,
    load_policy,
    quant,
    read_pack,
)
from skillstore.packs.bitpack import unpack_bits
from skillstore.packs.calibration import (
    CALIBRATION_ROWS,
    LayerwiseHessians,
    row_batches,
    skill_calibration,
)
from skillstore.packs.codecs import GPTQ_DAMP, get_codec, gptq_factors, svd
from skillstore.packs.delta import iter_deltas

from .conftest import tiny_llama


def skewed_layer(m=48, n=40, seed=0):
    """A delta of rank ~6 plus noise, and inputs whose second moment spans 3 decades."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(n, n, generator=g) * torch.logspace(0, -1.5, n)
    x = torch.randn(256, n, generator=g) @ mix
    d = torch.randn(m, 6, generator=g) @ torch.randn(6, n, generator=g)
    return d + 0.1 * torch.randn(m, n, generator=g), x.T @ x


def out_err(e: torch.Tensor, h: torch.Tensor) -> float:
    """tr(E H E^T): the squared change of the layer's outputs on the calibration inputs."""
    return float(torch.trace(e.double() @ h.double() @ e.double().T))


def test_gptq_codes_on_its_grids_decode_to_its_output_bit_for_bit():
    h = skewed_layer()[1]  # 40 columns: two whole groups of 16 and a partial one
    w = torch.randn(6, 40, generator=torch.Generator().manual_seed(5))
    bits = torch.tensor([4, 4, 3, 2, 2, 2])
    res = quant.gptq(w, h, bits, 16)
    for i, b in enumerate(bits.tolist()):
        grid = quant.Grid(res.scale[i:i + 1], res.low[i:i + 1], b, 16)
        assert torch.equal(quant.dequantize(res.codes[i:i + 1], grid), res.values[i:i + 1])
        assert int(res.codes[i].min()) >= 0 and int(res.codes[i].max()) <= 2**b - 1
    rtn = quant.quantize(w, quant.make_grid(w, 2, 16))
    assert not torch.equal(res.codes[3:], rtn[3:])  # the error feedback moved codes


def test_mplr_stores_gptqs_codes_and_grids_without_requantising():
    d, h = skewed_layer()
    spec = {"rank": 6, "schedule": [[0.5, 4], [0.5, 2]], "group_size": 16}
    codec = get_codec("mplr", spec)
    enc = codec.encode("w", d, h)
    assert enc.info["calibrated"]
    part = codec.decode("w", tuple(d.shape), enc.info, enc.tensors)
    u, s, vh = svd(d, 6)
    sq = s[:6].sqrt()
    a, b = (u * sq).T.contiguous(), sq[:, None] * vh[:6]
    side_a, side_b = gptq_factors(a, b, h, [(3, 4), (3, 2)], 16)
    assert torch.equal(part.V, side_b.values)  # V: GPTQ's output, bit for bit
    plain = get_codec("mplr", {**spec, "calibrated": False})
    enc0 = plain.encode("w", d, h)
    assert torch.equal(part.U, plain.decode("w", tuple(d.shape), enc0.info, enc0.tensors).U)
    # and V's first block in the file is GPTQ's codes, packed, byte for byte
    at = sum(c.numel() for c, _ in side_a.blocks)
    packed = side_b.blocks[0][0]
    assert torch.equal(enc.tensors["codes"][at:at + packed.numel()], packed)
    direct = quant.gptq(b / b.abs().max(), h, torch.tensor([4, 4, 4, 2, 2, 2]), 16,
                        damp=GPTQ_DAMP)
    assert torch.equal(unpack_bits(packed, 4, 3 * d.shape[1]).reshape(3, -1), direct.codes[:3])


def test_gptq_lowers_the_calibrated_output_error_at_equal_bytes():
    d, h = skewed_layer()
    spec = {"rank": 6, "schedule": [[0.5, 3], [0.5, 2]], "group_size": 16}
    errs, sizes = {}, {}
    for cal in (False, True):
        codec = get_codec("mplr", {**spec, "calibrated": cal})
        enc = codec.encode("w", d, h)
        errs[cal] = out_err(codec.decode("w", tuple(d.shape), enc.info, enc.tensors)
                            .to_dense() - d, h)
        sizes[cal] = enc.nbytes
    assert sizes[True] == sizes[False]
    assert errs[True] < 0.8 * errs[False]
    # one matrix, GPTQ against round-to-nearest on the same grid layout
    w = d[:8]
    rtn_grid = quant.make_grid(w, 3, 16)
    rtn = quant.dequantize(quant.quantize(w, rtn_grid), rtn_grid)
    g = quant.gptq(w, h, 3, 16)
    assert out_err(g.values - w, h) < 0.8 * out_err(rtn - w, h)


def test_policy_switch_round_trips_and_is_recorded(tmp_path):
    policy = load_policy("compact").model_copy(update={"gptq": True, "name": "compact-gptq"})
    again = CompressionPolicy.model_validate(json.loads(policy.model_dump_json()))
    assert again == policy and again.gptq
    path = tmp_path / "p.json"
    path.write_text(policy.model_dump_json())
    assert load_policy(path).gptq
    assert not load_policy("compact").gptq  # the default; docs/skillpack.md says why


@pytest.fixture(scope="module")
def calibrated_pair(llama_pair):
    model = tiny_llama(0)
    ids = [torch.randint(0, 96, (1, 24), generator=torch.Generator().manual_seed(i))
           for i in range(8)]
    return model, ids, collect_hessians(model, ids)


def test_budget_mode_with_gptq_same_bytes_lower_output_error(llama_pair, calibrated_pair,
                                                            tmp_path):
    """Same allocation (both calibrated), same bytes; GPTQ's codes move the layers' outputs
    on the calibration inputs less than round-to-nearest ones."""
    _, _, hess = calibrated_pair
    deltas = {n: d for n, d, _ in iter_deltas(*llama_pair)}
    out = {}
    for gptq in (False, True):
        policy = load_policy("compact", budget=0.2).model_copy(update={"gptq": gptq})
        s = compress_checkpoint(*llama_pair, policy, tmp_path / f"{gptq}.safetensors",
                                calibration=hess)
        pack = read_pack(s.path)
        assert pack.manifest["policy"]["gptq"] is gptq
        assert (s.gptq_matrices > 0) is gptq
        out[gptq] = (s.payload_bytes, pack)
    assert out[True][0] == out[False][0]
    names = [n for n, e in out[True][1].manifest["tensors"].items() if e["info"].get("calibrated")]
    assert len(names) >= 10  # every attention and MLP projection, and the head

    def kept(name):  # the directions the pack keeps, unquantized: the error is the codes'
        k = sum(c for c, _ in out[True][1].manifest["tensors"][name]["info"]["blocks"])
        u, s, vh = svd(deltas[name], k)
        return (u[:, :k] * s[:k]) @ vh[:k]

    def err(pack):
        return sum(out_err(pack.decode(n).to_dense() - kept(n), hess[n]) for n in names)

    # U stays round-to-nearest and these random-token inputs are not very skewed: a modest
    # but certain gain (0.92 of RTN's on this pair)
    assert err(out[True][1]) < 0.97 * err(out[False][1])


def test_gptq_without_calibration_is_refused(llama_pair, tmp_path):
    policy = load_policy("compact").model_copy(update={"gptq": True})
    with pytest.raises(ConfigError, match="gptq"):
        compress_checkpoint(*llama_pair, policy, tmp_path / "p.safetensors")
    assert not (tmp_path / "p.safetensors").exists()


def test_layerwise_statistics_equal_the_all_at_once_ones(calibrated_pair):
    model, ids, hess = calibrated_pair
    lazy = LayerwiseHessians(model, ids)
    for name in ("model.layers.1.mlp.down_proj.weight", "model.layers.0.self_attn.q_proj.weight",
                 "lm_head.weight"):
        assert torch.allclose(lazy[name], hess[name], rtol=1e-5, atol=1e-4)
        layer = name.split(".")[2] if name.startswith("model.layers.") else None
        assert all(n.split(".")[2] == layer if layer else n == name for n in lazy._held)


def test_calibration_comes_from_the_first_training_rows_as_trained():
    from skillstore.zoo.tokenizers import char_tokenizer

    model, tok = tiny_llama(0), char_tokenizer()
    letters = "abcdefghijklmnopqrstuvwxyz"
    rows = [{"prompt": letters[i % 20:i % 20 + 5], "answer": letters[i % 7:i % 7 + 3]}
            for i in range(80)]
    stats = skill_calibration(model, tok, rows)
    assert len(stats.batches) == CALIBRATION_ROWS
    assert stats.tokens == sum(len(r["prompt"]) + len(r["answer"]) + 1 for r in rows[:64])
    whole = collect_hessians(model, row_batches(tok, rows[:CALIBRATION_ROWS]))
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(stats[name], whole[name], rtol=1e-5, atol=1e-4)
    assert not torch.allclose(stats[name], collect_hessians(model, row_batches(tok, rows[16:]))
                              [name], rtol=1e-3)
