"""Unmerged grafts: a pack's delta added to module outputs by forward hooks, weights untouched."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ModelMismatchError
from .parts import DensePart, LowRankPart, Part, SparsePart


@dataclass(frozen=True)
class SparseRows:
    """A delta that is zero outside whole ``rows`` (sorted int64), which hold ``values``
    (rows, columns): a pruned embedding keeps only the tokens that training moved."""

    rows: torch.Tensor
    values: torch.Tensor


@dataclass(frozen=True)
class SparseEntries:
    """A delta's nonzero entries in CSR form (``crow``, ``col``, ``values``) with the owner's
    output features as rows: the delta as stored for a linear layer or an embedding, its
    transpose for GPT-2's Conv1D (which stores its weight (in, out))."""

    crow: torch.Tensor
    col: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int]

    def matrix(self) -> torch.Tensor:
        # The CPU kernel multiplies CSR in float32/float64 only: 16-bit values are widened
        # for the product and never kept wide.
        values = self.values if self.values.dtype in (torch.float32, torch.float64) \
            else self.values.float()
        with warnings.catch_warnings():  # torch says once that CSR is "beta"; it is what we use
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.crow, self.col, values, self.shape,
                                           check_invariants=False)  # built valid by _sparse


Ready = LowRankPart | DensePart | SparseRows | SparseEntries


def _is_conv1d(module: nn.Module) -> bool:
    # GPT-2's Conv1D computes x @ W + b with W stored (in, out); matched by name so that
    # this module does not import transformers.
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _layout(module: nn.Module, attr: str) -> str:
    """How a weight's rows meet the input: ``out`` when they are output features or looked-up
    ids (linear, embedding), ``in`` when they are input features (Conv1D), ``""`` when the
    delta is applied dense (biases, norms, any other module)."""
    if attr != "weight":
        return ""
    if isinstance(module, nn.Linear | nn.Embedding):
        return "out"
    return "in" if _is_conv1d(module) else ""


def prepare(part: Part, like: torch.Tensor, layout: str, lookup: bool = False) -> Ready:
    """``part`` ready for a hook, in ``like``'s dtype on its device: factors stay factors,
    sparse stays sparse; only parts of small or unsupported tensors become dense. ``lookup``:
    the owner is an embedding, which gathers rows of U (factors only; see ``_oriented``)."""
    dtype, device = like.dtype, like.device
    if not layout or len(part.shape) != 2:
        return DensePart(part.name, part.to_dense().to(device, dtype))
    if isinstance(part, LowRankPart):
        return _oriented(part, dtype, device, "lookup" if lookup else layout)
    if isinstance(part, SparsePart):
        return _sparse(part, like, transpose=layout == "in")
    return DensePart(part.name, part.to_dense().to(device, dtype))


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous()


def _columns(t: torch.Tensor) -> torch.Tensor:
    return t.T.contiguous().T


def _oriented(part: LowRankPart, dtype: torch.dtype, device: torch.device,
              use: str) -> LowRankPart:
    """The factors in the memory order their products read fastest: each product's right
    operand a transposed row-major matrix, as ``F.linear`` reads a weight. CPU bf16 kernels
    read the other order several times slower (measured: a (32, 606) @ (606, 4864) product,
    151 ms against 23 ms); a decoded U is column-major. The three uses:
    ``out`` (linear): (x @ V.T) @ U.T; ``in`` (Conv1D): (x @ U) @ V; ``lookup`` (embedding):
    U[ids] @ V, whose gather wants U's rows whole."""
    u, v = part.U.to(device, dtype), part.V.to(device, dtype)
    if use == "out":
        u, v = _rows(u), _rows(v)
    elif use == "in":
        u, v = _columns(u), _columns(v)
    else:
        u, v = _rows(u), _columns(v)
    return LowRankPart(part.name, u, v)


def _sparse(part: SparsePart, like: torch.Tensor, transpose: bool) -> SparseRows | SparseEntries:
    """Whole rows when the touched rows, stored dense, take no more room than their entries
    in CSR (a row-pruned embedding); CSR entries otherwise (entry-pruned or DARE)."""
    dtype, device = like.dtype, like.device
    n_rows, n_cols = part.shape
    idx = part.indices.to(device)
    r, c = idx // n_cols, idx % n_cols
    values = part.values.to(device, dtype)
    touched = torch.unique(r)
    size = like.element_size()
    if touched.numel() * n_cols * size <= idx.numel() * (size + 4):
        dense_rows = torch.zeros(touched.numel(), n_cols, dtype=dtype, device=device)
        dense_rows[torch.searchsorted(touched, r), c] = values
        return SparseRows(touched, dense_rows)
    if transpose:
        r, c, n_rows, n_cols = c, r, n_cols, n_rows
    key = r * n_cols + c
    if key.numel() > 1 and not bool((key[1:] >= key[:-1]).all()):
        order = torch.argsort(key)
        r, c, values = r[order], c[order], values[order]
    wide = max(n_rows + 1, idx.numel()) >= 2**31
    index = torch.int64 if wide else torch.int32
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=device)
    crow[1:] = torch.bincount(r, minlength=n_rows).cumsum(0)
    return SparseEntries(crow.to(index), c.to(index), values, (n_rows, n_cols))


def ready_for(part: Part, param: torch.Tensor,
              param_owners: list[tuple[nn.Module, str]]) -> list[tuple[nn.Module, str, Ready]]:
    """(module, attr, ready part) for each owner of ``param``; owners that use the delta the
    same way share one copy (a tied embedding and head share sparse rows, and of factors U;
    V, small, is laid out for each one's product)."""
    forms: dict[tuple[str, bool], Ready] = {}
    out = []
    for module, attr in param_owners:
        layout = _layout(module, attr)
        key = (layout, isinstance(module, nn.Embedding) and isinstance(part, LowRankPart))
        if key not in forms:
            # The other owner's factors, already laid out, keep U as it is (both read it by
            # rows) and lay out only the small V again.
            twin = forms.get((layout, not key[1]))
            forms[key] = prepare(twin if isinstance(twin, LowRankPart) else part, param, layout,
                                 lookup=key[1])
        out.append((module, attr, forms[key]))
    return out


def nbytes(readies: Iterable[Ready]) -> int:
    """Bytes held by the tensors of ``readies``, each storage counted once."""
    seen: dict[int, int] = {}
    for ready in readies:
        for t in vars(ready).values():
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _scaled(change: torch.Tensor, weight: torch.Tensor | float) -> torch.Tensor:
    """``change`` times one float, or times one weight per sample (dim 0)."""
    if isinstance(weight, float):
        return change if weight == 1.0 else change * weight
    return change * weight.to(change.dtype).view(-1, *([1] * (change.dim() - 1)))


def _add_at(out: torch.Tensor, rows: torch.Tensor | None, src: torch.Tensor) -> None:
    src = src.to(out.dtype)
    if rows is None:
        out.add_(src)
    else:
        out.index_add_(0, rows, src)


def add_change(out: torch.Tensor, rows: torch.Tensor | None, module: nn.Module, attr: str,
               part: Ready, x: torch.Tensor, weight: torch.Tensor | float) -> None:
    """Add ``weight`` times the module's output change when parameter ``attr`` moves by
    ``part`` (outputs are linear in each parameter) to samples ``rows`` of ``out`` (every
    sample when None), in place. ``x`` is the module's input for those samples and ``weight``
    one float or one weight per sample; ``out`` is contiguous (see ``writable``).

    Sparse parts touch only their rows or entries and low-rank parts only their factors: no
    delta as large as the weight is formed for a linear layer, Conv1D or embedding."""
    layout = _layout(module, attr)
    if isinstance(module, nn.Embedding) and layout:
        _add_lookup(out, rows, part, x, weight)
    elif layout:
        _add_product(out, rows, part, x, weight, transposed=layout == "in")
    elif (isinstance(module, nn.Linear) or _is_conv1d(module)) and attr == "bias":
        _add_at(out, rows, _scaled(part.tensor.expand(*x.shape[:-1], -1), weight))
    else:  # norms and other modules: evaluate the module with the delta as its only parameter
        params = {n: torch.zeros_like(p) for n, p in module.named_parameters(recurse=False)}
        params[attr] = part.tensor.to(params[attr].dtype)
        change = torch.func.functional_call(module, params, (x,))
        _add_at(out, rows, _scaled(change, weight))


def _add_product(out, rows, part: Ready, x: torch.Tensor, weight, transposed: bool) -> None:
    """A linear layer's (``transposed``: a Conv1D's) output change, x @ delta.T (x @ delta)."""
    if isinstance(part, SparseRows):
        if part.rows.numel() == 0:
            return
        values = part.values
        if transposed:  # the touched rows are input features: only they reach the output
            change = x.index_select(-1, part.rows).to(values.dtype) @ values
        else:  # the touched rows are output features: only they move
            src = _scaled(x.to(values.dtype) @ values.T, weight).to(out.dtype)
            # flat offsets of (sample, position, touched output): index_add_ along the last
            # dim of a wide output is many times slower on CPU than one flat scatter
            width, positions = out.shape[-1], out[0].numel() // out.shape[-1]
            samples = torch.arange(out.shape[0], device=out.device) if rows is None else rows
            at = (samples.view(-1, 1, 1) * positions
                  + torch.arange(positions, device=out.device).view(1, -1, 1)) * width \
                + part.rows.view(1, 1, -1)
            out.put_(at, src.reshape(at.shape), accumulate=True)
            return
    elif isinstance(part, SparseEntries):
        flat = x.reshape(-1, x.shape[-1]).float()
        change = (part.matrix() @ flat.T).T.reshape(*x.shape[:-1], part.shape[0])
    elif isinstance(part, LowRankPart):
        u, v = part.U, part.V
        h = x.to(u.dtype)
        change = (h @ u) @ v if transposed else (h @ v.T) @ u.T
    else:
        d = part.tensor
        change = x.to(d.dtype) @ d if transposed else F.linear(x.to(d.dtype), d)
    _add_at(out, rows, _scaled(change, weight))


def _add_lookup(out, rows, part: Ready, ids: torch.Tensor, weight) -> None:
    """An embedding's output change: the delta's rows for the looked-up ids, where it has any."""
    if isinstance(part, LowRankPart | DensePart):
        change = F.embedding(ids, part.U) @ part.V if isinstance(part, LowRankPart) \
            else F.embedding(ids, part.tensor)
        _add_at(out, rows, _scaled(change, weight))
        return
    flat_out, flat_ids = out.view(-1, out.shape[-1]), ids.reshape(-1)
    per = flat_ids.numel() // max(1, ids.shape[0]) if ids.dim() > 1 else 1  # ids per sample
    if rows is None:
        where = torch.arange(flat_ids.numel(), device=out.device)
    else:
        where = (rows.view(-1, 1) * per + torch.arange(per, device=out.device)).reshape(-1)
    per_token = weight if isinstance(weight, float) else weight.repeat_interleave(per)
    if isinstance(part, SparseRows):
        if part.rows.numel() == 0:
            return
        pos = torch.searchsorted(part.rows, flat_ids).clamp_(max=part.rows.numel() - 1)
        hit = (part.rows[pos] == flat_ids).nonzero().flatten()
        change = part.values[pos[hit]]
        scale = per_token if isinstance(per_token, float) else per_token[hit]
        flat_out.index_add_(0, where[hit], _scaled(change, scale).to(out.dtype))
        return
    start = part.crow[flat_ids].long()
    count = part.crow[flat_ids + 1].long() - start
    hit = count.nonzero().flatten()
    if hit.numel() == 0:
        return
    start, count = start[hit], count[hit]
    token = torch.repeat_interleave(hit, count)
    first = count.cumsum(0) - count  # where each token's entries begin in the gathered list
    entry = torch.arange(token.numel(), device=out.device) \
        + torch.repeat_interleave(start - first, count)
    scale = per_token if isinstance(per_token, float) else per_token[token]
    flat_out.index_put_((where[token], part.col[entry].long()),
                        _scaled(part.values[entry], scale).to(out.dtype), accumulate=True)


def owners(model: nn.Module) -> dict[int, list[tuple[nn.Module, str]]]:
    """(module, attribute) per parameter id: a tied embedding and head have two owners."""
    out: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for attr, param in module.named_parameters(recurse=False):
            out.setdefault(id(param), []).append((module, attr))
    return out


def hook_input(module: nn.Module, args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The tensor a hooked module was called with, positional or by keyword."""
    return args[0] if args else next((v for v in kwargs.values()
                                      if isinstance(v, torch.Tensor)), None)


def writable(output: torch.Tensor, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``output`` itself when deltas can be added to it in place (no autograd graph needs it,
    it is contiguous and shares no storage with the input or the module's own tensors), else
    a contiguous copy: a module output as large as a vocabulary's logits is not copied."""
    if (output.requires_grad and torch.is_grad_enabled()) or not output.is_contiguous():
        return output.clone(memory_format=torch.contiguous_format)
    storage = output.untyped_storage().data_ptr()
    own = (x, *module.parameters(recurse=False), *module.buffers(recurse=False))
    if any(t.untyped_storage().data_ptr() == storage for t in own):
        return output.clone()
    return output


class PackHooks:
    """One applied pack as forward hooks: each hooked module's output gets ``scale`` times
    the output change its parameters' deltas cause. ``remove`` leaves the model exactly as
    before, since no weight is ever written."""

    def __init__(self, model: nn.Module, targets: dict[str, torch.Tensor],
                 parts: Iterable[Part], scale: float):
        self.scale = float(scale)
        self._busy = False  # functional_call re-enters the hooked module
        by_param = owners(model)
        self._entries: dict[nn.Module, list[tuple[str, Ready]]] = {}
        for part in parts:
            weight = targets[part.name]
            if id(weight) not in by_param:
                raise ModelMismatchError(f"{part.name!r} is a buffer, not a module parameter; "
                                         "apply this pack with mode='merge'.")
            for module, attr, ready in ready_for(part, weight, by_param[id(weight)]):
                self._entries.setdefault(module, []).append((attr, ready))
        self._handles = [m.register_forward_hook(self._hook, with_kwargs=True)
                         for m in self._entries]

    @property
    def nbytes(self) -> int:
        """Bytes the hooks hold (the pack's deltas, ready to apply)."""
        return nbytes(ready for entries in self._entries.values() for _, ready in entries)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, module: nn.Module, args: tuple, kwargs: dict, output):
        if self._busy:
            return None
        if not isinstance(output, torch.Tensor):
            raise ModelMismatchError(f"{type(module).__name__} returns "
                                     f"{type(output).__name__}, not a tensor, so a hooked pack "
                                     "cannot add to it; use mode='merge'.")
        x = hook_input(module, args, kwargs)
        if x is None:
            raise ModelMismatchError(f"{type(module).__name__} was called without a tensor "
                                     "input, so a hooked pack cannot act on it; use mode='merge'.")
        out = writable(output, module, x)
        for attr, part in self._entries[module]:
            self._busy = True
            try:
                add_change(out, None, module, attr, part, x, self.scale)
            finally:
                self._busy = False
        return out
