"""Hooked (unmerged) grafts: the merged model's outputs, weights never written, exact removal."""

import pytest
import torch

from skillstore.errors import ConfigError, FingerprintMismatchError
from skillstore.packs import (
    CodecSpec,
    CompressionPolicy,
    active_packs,
    apply_pack,
    compress_checkpoint,
    grafted,
    read_pack,
    unapply_pack,
)
from skillstore.packs.export import load_base

from .conftest import TINY_COMPACT, finetune_like, logits, tiny_gpt2, tiny_llama


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(model, snap):
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[k]), k


def hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("policy", [pytest.param(TINY_COMPACT, id="compact"), "balanced",
                                    "lossless"])
def test_hooked_llama_matches_merged_and_leaves_weights_alone(llama_pair, policy, tmp_path):
    pack = compress_checkpoint(*llama_pair, policy, tmp_path / "p.safetensors").path
    merged, hooked = load_base(llama_pair[0]), load_base(llama_pair[0])
    base_logits, snap = logits(hooked), snapshot(hooked)
    apply_pack(merged, pack, 0.7)
    apply_pack(hooked, pack, 0.7, mode="hooks")
    assert hook_count(hooked) > 0
    assert_same(hooked, snap)  # no weight was written
    want = logits(merged)
    assert (want - base_logits).abs().max() > 1e-3  # the pack does change the outputs
    assert torch.allclose(logits(hooked), want, atol=1e-5)
    unapply_pack(hooked, pack, 0.7)
    assert hook_count(hooked) == 0 and active_packs(hooked) == []
    assert torch.equal(logits(hooked), base_logits)


@pytest.mark.parametrize("policy", [pytest.param(TINY_COMPACT, id="compact"), "balanced"])
def test_hooked_gpt2_with_tied_head_and_conv1d_matches_merged(gpt2_pair, policy, tmp_path):
    pack = compress_checkpoint(*gpt2_pair, policy, tmp_path / "g.safetensors").path
    merged, hooked = load_base(gpt2_pair[0]), load_base(gpt2_pair[0])
    apply_pack(merged, pack)
    with grafted(hooked, pack, mode="hooks"):
        # the tied head is hooked as well as the embedding, or the logits would differ
        assert torch.allclose(logits(hooked), logits(merged), atol=1e-5)
    assert hook_count(hooked) == 0


def test_hooked_and_merged_packs_stack_and_unapply_in_any_order(llama_pair, tmp_path):
    other_dir = tmp_path / "other"
    finetune_like(tiny_llama(0), seed=7).save_pretrained(str(other_dir))
    a = compress_checkpoint(*llama_pair, TINY_COMPACT, tmp_path / "a.safetensors").path
    b = compress_checkpoint(llama_pair[0], other_dir, TINY_COMPACT,
                            tmp_path / "b.safetensors").path
    both, model = load_base(llama_pair[0]), load_base(llama_pair[0])
    snap, base_logits = snapshot(model), logits(model)
    apply_pack(both, a)
    apply_pack(both, b, 0.5)
    apply_pack(model, a, mode="hooks")
    apply_pack(model, b, 0.5)  # merged on top of a hooked pack
    assert torch.allclose(logits(model), logits(both), atol=1e-5)
    unapply_pack(model, a)  # the hooked one out first: b stays merged
    unapply_pack(both, a)
    assert hook_count(model) == 0
    assert torch.allclose(logits(model), logits(both), atol=1e-5)
    unapply_pack(model, b, 0.5)
    assert_same(model, snap)
    assert torch.equal(logits(model), base_logits)


def test_unknown_mode_and_foreign_base_are_refused_before_any_hook(llama_pair, compact_pack):
    model = load_base(llama_pair[0])
    with pytest.raises(ConfigError, match="Unknown apply mode 'hook'.*hooks"):
        apply_pack(model, compact_pack, mode="hook")
    stranger = tiny_llama(seed=5)
    with pytest.raises(FingerprintMismatchError, match="apply it to its own base"):
        apply_pack(stranger, compact_pack, mode="hooks")
    assert hook_count(model) == hook_count(stranger) == 0
    assert active_packs(model) == active_packs(stranger) == []


class _TupleLinear(torch.nn.Linear):
    """A layer that returns a tuple, as some custom modules do."""

    def forward(self, x):
        return (super().forward(x),)


def test_hooks_refuse_buffers_and_non_tensor_outputs_with_the_fix():
    from skillstore.errors import ModelMismatchError
    from skillstore.packs.hooks import PackHooks
    from skillstore.packs.parts import DensePart

    model = torch.nn.Sequential(_TupleLinear(4, 4))
    model.register_buffer("table", torch.zeros(4))
    with pytest.raises(ModelMismatchError, match="'table' is a buffer.*mode='merge'"):
        PackHooks(model, {"table": model.table}, [DensePart("table", torch.ones(4))], 1.0)
    hooks = PackHooks(model, {"0.weight": model[0].weight},
                      [DensePart("0.weight", torch.ones(4, 4))], 1.0)
    with pytest.raises(ModelMismatchError, match="returns tuple, not a tensor.*mode='merge'"):
        model(torch.ones(1, 4))
    hooks.remove()
    assert isinstance(model(torch.ones(1, 4)), tuple)  # removed: the layer is itself again


class _Table(torch.nn.Module):
    """Returns a view of its own weight, as a learned position table may."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(8, 4))

    def forward(self, x):
        return self.weight[: x.shape[-1]]


def test_hooks_never_write_into_a_weight_that_a_module_returns():
    """Deltas are added to module outputs in place (logits are not copied), but never to an
    output that is a view of the module's own weight."""
    from skillstore.packs.hooks import PackHooks
    from skillstore.packs.parts import DensePart

    model = torch.nn.Sequential(_Table())
    before = model[0].weight.detach().clone()
    PackHooks(model, {"0.weight": model[0].weight}, [DensePart("0.weight", torch.ones(8, 4))],
              0.5)
    with torch.no_grad():
        out = model(torch.zeros(1, 5))
    assert torch.equal(model[0].weight, before)
    torch.testing.assert_close(out, before[:5] + 0.5)


def test_routing_a_batch_through_gpt2s_shared_position_embedding(gpt2_pair, tmp_path):
    """GPT-2 embeds positions once for the whole batch ((1, L) position ids). A pack with a
    `wpe` delta, routed per sample, must still give each sample its own packs: the routed
    batch equals the merged pack's logits (it raised "Routing weights cover 2 inputs but the
    batch has 1" before)."""
    from skillstore.packs.format import read_pack
    from skillstore.routing import DeltaBank, PackDeltas, RoutedModel

    pack_path = compress_checkpoint(*gpt2_pair, "lossless", tmp_path / "p.safetensors").path
    pack = read_pack(pack_path)
    parts = {p.name: p for p in pack.decoded()}
    assert any("wpe" in name for name in parts)  # the case this test is about
    merged, routed = load_base(gpt2_pair[0]), load_base(gpt2_pair[0])
    apply_pack(merged, pack_path, 1.0)
    bank = DeltaBank(routed, [PackDeltas("skill", parts, 1.0)])
    with RoutedModel(routed, bank, "tag", tag="skill"):
        got = logits(routed)
    assert got.shape[0] == 2 and torch.allclose(got, logits(merged), atol=1e-4)


# Routed states keep every pack's delta in the form it was stored in (rows, entries, factors),
# in the base's dtype. Each routed batch is checked against the pack's own decode merged into
# a copy of the base, sample by sample, at that sample's weights.

def _policy(embedding: tuple, attention: tuple, mlp: tuple) -> CompressionPolicy:
    """A policy from (codec, params) per role."""
    embedding, attention, mlp = (CodecSpec(codec=c, params=p) for c, p in (embedding, attention,
                                                                           mlp))
    return CompressionPolicy(name="test", embedding=embedding, attention=attention, mlp=mlp)


ROWS_AND_ENTRIES = _policy(("magnitude", {"keep": 0.2, "layout": "rows"}),
                           ("magnitude", {"keep": 0.1, "layout": "entries"}),
                           ("dense", {}))
ENTRIES_AND_FACTORS = _policy(("magnitude", {"keep": 0.05, "layout": "entries"}),
                              ("lowrank", {"rank": 4}), ("dare", {"drop": 0.5}))


def _decoded(path):
    return list(read_pack(path).decoded())


def _merged_per_sample(model, packs, weights, ids):
    """Logits of each sample on its own, its packs' decoded deltas merged at its weights."""
    import copy

    rows = []
    for b in range(ids.shape[0]):
        merged = copy.deepcopy(model).float()
        for parts, w in zip(packs, weights[b].tolist(), strict=True):
            for part in parts:
                if w:
                    part.add_to(merged.get_parameter(part.name), w)
        with torch.no_grad():
            rows.append(merged(input_ids=ids[b:b + 1]).logits)
    return torch.cat(rows)


def _routed(model, packs, weights, ids):
    from skillstore.routing import DeltaBank, PackDeltas

    bank = DeltaBank(model, [PackDeltas(f"p{i}", {p.name: p for p in parts})
                             for i, parts in enumerate(packs)])
    with bank, torch.no_grad():
        bank.weights = weights
        return model(input_ids=ids).logits.float(), bank


def _forms(bank):
    return {type(ready).__name__ for entries in bank._entries.values() for *_, ready in entries}


@pytest.fixture(scope="module")
def llama_packs(llama_pair, tmp_path_factory):
    """Three packs of three fine-tunes: pruned rows, pruned entries (embedding, head and
    attention), dense, low-rank, DARE and the compact preset's quantised factors."""
    root = tmp_path_factory.mktemp("routed")
    spread = root / "spread"  # every embedding row moved: pruning by entries is not by rows
    finetune_like(tiny_llama(0), seed=7, rows=96).save_pretrained(str(spread))
    made = [(llama_pair[1], ROWS_AND_ENTRIES), (spread, ENTRIES_AND_FACTORS),
            (llama_pair[1], TINY_COMPACT)]
    return [_decoded(compress_checkpoint(llama_pair[0], tuned, policy,
                                         root / f"{i}.safetensors").path)
            for i, (tuned, policy) in enumerate(made)]


WEIGHTS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.6, 0.0], [0.5, 0.8, 0.3], [0.0, 0.0, 0.0],
                        [0.0, 0.0, 1.2]])


def test_routed_packs_match_each_samples_merged_packs(llama_pair, llama_packs):
    model = load_base(llama_pair[0])
    ids = torch.randint(0, 96, (len(WEIGHTS), 10), generator=torch.Generator().manual_seed(4))
    want = _merged_per_sample(model, llama_packs, WEIGHTS, ids)
    got, bank = _routed(model, llama_packs, WEIGHTS, ids)
    assert _forms(bank) >= {"SparseRows", "SparseEntries", "LowRankPart", "DensePart"}
    with torch.no_grad():
        base = model(input_ids=ids).logits
    assert (want - base).abs().amax(dim=(1, 2)).min() == 0  # the unrouted sample is the base
    assert (want - base).abs().amax(dim=(1, 2)).sort().values[1] > 1e-2  # the others move
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)


def test_routed_packs_on_a_bf16_base_stay_bf16_and_match(llama_pair, llama_packs):
    model = load_base(llama_pair[0])
    ids = torch.randint(0, 96, (len(WEIGHTS), 10), generator=torch.Generator().manual_seed(5))
    want = _merged_per_sample(model, llama_packs, WEIGHTS, ids)
    with torch.no_grad():
        base = model(input_ids=ids).logits
        rounding = (base - model.to(torch.bfloat16)(input_ids=ids).logits.float()).abs().max()
    got, bank = _routed(model, llama_packs, WEIGHTS, ids)
    held = [t for entries in bank._entries.values() for *_, ready in entries
            for t in vars(ready).values() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    assert held and all(t.dtype == torch.bfloat16 for t in held)  # no float32 copies
    # of the order of what bf16 costs the plain base, far below what the packs change
    assert (got - want).abs().max() < 4 * rounding < 0.1 * (want - base).abs().max()


def test_routed_gpt2_conv1d_tied_head_and_positions_match_per_sample(gpt2_pair, tmp_path):
    """Conv1D (weights stored (in, out)) with pruned entries and low rank, the tied head that
    shares the pruned token embedding, and the batch-shared position embedding, with each
    sample at its own weights."""
    policy = _policy(("magnitude", {"keep": 0.2, "layout": "rows"}),
                     ("magnitude", {"keep": 0.1, "layout": "entries"}), ("lowrank", {"rank": 4}))
    other = tmp_path / "other"
    finetune_like(tiny_gpt2(0), seed=9).save_pretrained(str(other))
    packs = [_decoded(compress_checkpoint(gpt2_pair[0], tuned, p, tmp_path / f"{i}.st").path)
             for i, (tuned, p) in enumerate([(gpt2_pair[1], policy), (other, "balanced")])]
    assert any("wpe" in part.name for part in packs[0])
    model = load_base(gpt2_pair[0])
    weights = torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.7, 1.0]])
    ids = torch.randint(0, 96, (3, 12), generator=torch.Generator().manual_seed(6))
    got, bank = _routed(model, packs, weights, ids)
    assert {"SparseRows", "SparseEntries", "LowRankPart"} <= _forms(bank)
    torch.testing.assert_close(got, _merged_per_sample(model, packs, weights, ids),
                               atol=2e-5, rtol=1e-4)


def test_a_pruned_tied_embedding_is_held_once_as_its_rows_in_the_base_dtype(gpt2_pair):
    """A row-pruned embedding costs its rows, not the vocabulary, and a tied head reuses them."""
    from skillstore.packs.parts import SparsePart
    from skillstore.routing import DeltaBank, PackDeltas

    model = load_base(gpt2_pair[0]).to(torch.bfloat16)
    rows, width = torch.tensor([3, 17, 40]), model.config.n_embd
    idx = (rows[:, None] * width + torch.arange(width)).reshape(-1)
    part = SparsePart("transformer.wte.weight", idx, torch.randn(idx.numel()),
                      (model.config.vocab_size, width))
    bank = DeltaBank(model, [PackDeltas("skill", {part.name: part})])
    assert bank.nbytes == 3 * width * 2 + 3 * 8  # bf16 rows and their int64 ids
    assert bank.packs[0].parts == {}  # the float32 decode is not kept alive by the bank
    ids = torch.tensor([[3, 5, 40, 40, 95]])
    with bank, torch.no_grad():
        bank.weights = torch.tensor([[2.0]])
        hidden = model.transformer.wte(ids).float()
    base = model.transformer.wte.weight.float()
    want = base[ids] + 2 * part.to_dense().to(torch.bfloat16).float()[ids]
    torch.testing.assert_close(hidden, want.to(torch.bfloat16).float())


def test_factors_are_laid_out_for_each_owners_product_and_a_tied_pair_still_matches():
    """Each product reads its right operand as a transposed row-major matrix, the order
    ``F.linear`` reads a weight in and CPU bf16 kernels read several times faster than the
    other. Factors arrive column-major, as decoded; a tied embedding and head share U, each
    gets V in the layout of its own product, and both still add the merged delta."""
    from skillstore.packs.parts import LowRankPart

    model = tiny_gpt2(0)  # Conv1D blocks, and a head tied to the token embedding
    gen = torch.Generator().manual_seed(3)

    def factors(name):
        out, inp = model.get_parameter(name).shape
        return LowRankPart(name, torch.randn(4, out, generator=gen).T,  # column-major U
                           0.1 * torch.randn(inp, 4, generator=gen).T)

    parts = [factors("transformer.wte.weight"), factors("transformer.h.0.attn.c_attn.weight")]
    ids = torch.randint(0, 96, (2, 8), generator=torch.Generator().manual_seed(8))
    weights = torch.tensor([[1.0], [0.0]])
    got, bank = _routed(model, [parts], weights, ids)
    laid = {(type(module).__name__, ready.U.is_contiguous(), ready.U.T.is_contiguous(),
             ready.V.is_contiguous(), ready.V.T.is_contiguous())
            for module, entries in bank._entries.items() for *_, ready in entries}
    assert laid == {("Embedding", True, False, False, True),  # U[ids] @ V
                    ("Linear", True, False, True, False),  # (x @ V.T) @ U.T: the tied head
                    ("Conv1D", False, True, False, True)}  # (x @ U) @ V
    tied = [ready for module, entries in bank._entries.items() for *_, ready in entries
            if ready.name == "transformer.wte.weight"]
    assert len(tied) == 2 and tied[0].U is tied[1].U  # the large factor is held once
    torch.testing.assert_close(got, _merged_per_sample(model, [parts], weights, ids),
                               atol=2e-5, rtol=1e-4)
