"""Budget mode in two passes: spectra first (a few floats per direction), then one encoding
per matrix that costs and loses what the allocation predicted."""

import pytest
import torch

from skillstore.errors import ConfigError
from skillstore.fingerprint import sha256_file
from skillstore.packs import CompressionPolicy, compress_checkpoint, load_policy
from skillstore.packs import compress as compress_module
from skillstore.packs.budget import allocate, encode, planned
from skillstore.packs.spectrum import PROBE_RANK, factors, measure

from .test_presets import llama, save


def delta(m=300, n=200, rank=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    decay = torch.logspace(0, -2, rank)  # a falling spectrum, plus noise under it
    low = (torch.randn(m, rank, generator=g) * decay) @ torch.randn(rank, n, generator=g)
    return 0.01 * low + 1e-4 * torch.randn(m, n, generator=g)


@pytest.mark.parametrize("sensitivity", ["none", "inputs", "tokens"])
def test_the_encoding_costs_and_loses_what_the_allocation_predicted(sensitivity):
    d = delta()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, d.shape[1], generator=g) * torch.linspace(0.05, 3.0, d.shape[1])
    counts = torch.randint(0, 5, (d.shape[0],), generator=g).float()
    h = {"none": None, "inputs": x.T @ x, "tokens": counts}[sensitivity]
    sp = measure("w", "embedding" if sensitivity == "tokens" else "mlp", d, budget=0.1,
                 sensitivity=h)
    for room in (800, 3000, 12000):
        pick = allocate({"w": sp}, room)["w"]
        enc = encode(pick, sp, d)
        assert enc.nbytes == pick.nbytes <= room * 1.01
        _, plan = planned(pick)  # what the header was sized on, before any encoding
        assert plan.info == enc.info
        assert {k: (t.dtype, t.shape) for k, t in plan.tensors.items()} == \
            {k: (t.dtype, t.shape) for k, t in enc.tensors.items()}
        err = d - pick.codec().decode("w", tuple(d.shape), enc.info, enc.tensors).to_dense()
        actual = {"none": lambda e: e.pow(2).sum(), "inputs": lambda e: (x @ e.T).pow(2).sum(),
                  "tokens": lambda e: (e.pow(2).sum(1) * counts).sum()}[sensitivity](err)
        assert float(actual) == pytest.approx(pick.err2, rel=0.05)


def test_more_bytes_go_to_the_larger_directions():
    sp = measure("w", "mlp", delta(), budget=0.1)
    blocks = allocate({"w": sp}, 3000)["w"].blocks
    widths = [b for _, b in blocks]
    assert widths == sorted(widths, reverse=True) and len(set(widths)) > 1


def test_low_rank_deltas_skip_the_full_decomposition():
    g = torch.Generator().manual_seed(0)
    low = 0.01 * torch.randn(512, 4, generator=g) @ torch.randn(4, 384, generator=g)
    sp = measure("w", "attention", low, budget=0.05, energy=0.999)
    assert (sp.method, sp.rank) == ("randomized", PROBE_RANK)
    noisy = low + 0.01 * torch.randn(512, 384, generator=g)
    assert measure("w", "attention", noisy, budget=0.05, energy=0.999).method == "full"
    # seeded by the tensor's name, so the second pass gets the same directions, and the
    # caller's random stream is left where it was
    torch.manual_seed(5)
    first = factors("w", low, PROBE_RANK, "randomized")
    after = torch.rand(1)
    torch.manual_seed(5)
    again = factors("w", low, PROBE_RANK, "randomized")
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert torch.equal(torch.rand(1), after)


def test_the_first_pass_keeps_spectra_not_matrices(tmp_path, monkeypatch):
    pair = save(tmp_path, llama(256, 512), None)
    kept = []
    real = compress_module.measure

    def spy(*args, **kw):
        sp = real(*args, **kw)
        kept.append(sp)
        return sp
    monkeypatch.setattr(compress_module, "measure", spy)
    s = compress_checkpoint(*pair, "compact", tmp_path / "c.safetensors")
    held = sum(v.numel() for sp in kept for v in vars(sp).values() if torch.is_tensor(v))
    assert held < 0.02 * s.dense_fp16_bytes / 2  # a few floats a direction, not a copy


def test_randomised_factors_give_the_same_file_on_any_thread_count(tmp_path):
    pair = save(tmp_path, llama(256, 512), 4)
    digests = []
    for threads in (1, 2):
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out = tmp_path / f"{threads}.safetensors"
            compress_checkpoint(*pair, "compact", out)
        finally:
            torch.set_num_threads(before)
        digests.append(sha256_file(out))
    assert digests[0] == digests[1]


@pytest.mark.parametrize("budget", [0.0001, 0.03])
def test_a_budget_below_the_uncompressed_tensors_and_manifest_is_one_clear_error(
        llama_pair, tmp_path, budget):
    """0.01% is below the norms alone; 3% holds the norms (about 0.2%) but not the header."""
    with pytest.raises(ConfigError, match=rf"budget of {100 * budget:g}%.*uncompressed tensors "
                                          r"and the manifest alone need.*raise the budget"):
        compress_checkpoint(*llama_pair, load_policy("compact", budget=budget),
                            tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("budget", [0.05, 0.1, 0.3])
def test_the_whole_file_fits_the_budget_and_spends_it(llama_pair, tmp_path, budget):
    """A policy with no energy target spends the budget on the file, header included (the
    header is about 3% of this tiny pair's delta, so a payload-only budget overshot)."""
    s = compress_checkpoint(*llama_pair, CompressionPolicy(budget=budget),
                            tmp_path / "y.safetensors")
    assert s.bytes == s.path.stat().st_size
    assert 0.85 * budget * s.dense_fp16_bytes < s.bytes <= budget * s.dense_fp16_bytes
    assert s.payload_bytes < s.bytes - 1000  # the header was counted, not only the payload


def test_a_header_larger_than_planned_is_allocated_again(llama_pair, tmp_path, monkeypatch):
    """Where the written header outgrows the planned one (the planned one holds predicted
    errors), the allocation shrinks by the overshoot and only the changed matrices are
    encoded again; the file still fits."""
    real = compress_module.header_bound

    def optimistic(manifest, tensors):  # plans 600 bytes too few
        planned = any(t.is_meta for t in tensors.values())
        return real(manifest, tensors) - (600 if planned else 0)

    encoded = []
    original = compress_module.budget_mode.encode
    monkeypatch.setattr(compress_module, "header_bound", optimistic)
    monkeypatch.setattr(compress_module.budget_mode, "encode",
                        lambda pick, *a, **k: encoded.append(pick.name) or original(pick, *a, **k))
    policy = CompressionPolicy(budget=0.2)
    s = compress_checkpoint(*llama_pair, policy, tmp_path / "z.safetensors")
    assert s.bytes <= 0.2 * s.dense_fp16_bytes
    assert len(encoded) > len(set(encoded))  # a second round re-encoded some matrices
    monkeypatch.undo()
    fresh = compress_checkpoint(*llama_pair, policy, tmp_path / "fresh.safetensors")
    assert fresh.bytes > s.bytes  # the plan was right without the patch: more was kept
