"""compress_checkpoint: stream the delta of two checkpoints, encode it per role, write a pack."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError, ModelMismatchError
from ..fingerprint import fingerprint_checkpoint
from . import budget as budget_mode
from .codecs import Encoded, codec_params
from .delta import check_compatible, iter_deltas
from .format import SEP, header_bound, write_pack
from .parts import LowRankPart
from .policy import CompressionPolicy, load_policy
from .roles import ATTENTION, EMBEDDING, MLP, module_role
from .slabs import slabs
from .spectrum import Spectrum, measure

Progress = Callable[[int, int, str], None]
ERR_SLAB = 1 << 22  # entries per step of the float64 error sums (32 MB)


@dataclass(frozen=True)
class PackSummary:
    """What compression produced: sizes, the ratio to the dense fp16 delta, errors per tensor."""

    path: Path
    bytes: int
    payload_bytes: int
    dense_fp16_bytes: int
    codecs_by_role: dict[str, list[str]]
    rel_errors: dict[str, float] = field(repr=False)
    seconds: float = 0.0
    rel_error: float = 0.0  # overall: sqrt(sum of squared errors / sum of squared deltas)
    gptq_matrices: int = 0  # matrices whose codes GPTQ chose (info "calibrated")

    @property
    def ratio(self) -> float:
        """File bytes over the bytes of the dense fp16 delta of every tensor."""
        return self.bytes / max(1, self.dense_fp16_bytes)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run torch (and the BLAS/LAPACK under it) on ``n`` intra-op threads, then give back
    the caller's setting. How a sum or a decomposition is split across threads changes its
    float rounding, and a last-bit change can flip a quantization code."""
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def in_order(work: Callable, items: Iterable[tuple], workers: int) -> Iterator[tuple]:
    """(item, ``work(*item)``) for each item, in the items' order, with up to ``workers``
    items worked on at once on threads of their own, each running torch on one intra-op
    thread: every tensor's result is the serial one, so the pack does not depend on
    ``workers``. At most ``workers`` items are held beyond the one being read."""
    if workers <= 1:
        for item in items:
            yield item, work(*item)
        return
    # OpenMP's thread count is per calling thread: each worker sets its own to one
    with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        window: deque = deque()
        try:
            for item in items:
                window.append((item, pool.submit(work, *item)))
                if len(window) >= workers:
                    item, future = window.popleft()
                    yield item, future.result()
            while window:
                item, future = window.popleft()
                yield item, future.result()
        finally:
            for _, future in window:
                future.cancel()


# What one worker holds, in float32 copies of the largest tensor: its delta and the SVD's
# and the encoder's working copies (a generous count: float32 Gram and projections are smaller).
WORKER_COPIES = 3


def default_workers(shapes: Iterable[Sequence[int]], threads: int,
                    available: int | None = None) -> int:
    """How many tensors to encode at once when the caller does not say: torch's thread
    count, fewer where ``WORKER_COPIES`` float32 copies of the largest tensor per worker would
    take more than half of the memory available now (``available`` bytes; psutil's figure
    when None). At least one."""
    largest = max((math.prod(shape) for shape in shapes), default=0)
    if largest == 0:
        return max(1, threads)
    if available is None:
        import psutil

        available = psutil.virtual_memory().available
    per_worker = WORKER_COPIES * 4 * largest
    return max(1, min(threads, available // 2 // per_worker))


def compress_checkpoint(base_dir: str | Path, tuned_dir: str | Path,
                        policy: str | Path | CompressionPolicy, out_path: str | Path, *,
                        base_fingerprint: str | None = None,
                        tuned_fingerprint: str | None = None,
                        calibration: Mapping[str, torch.Tensor] | None = None,
                        progress: Progress | None = None,
                        workers: int | None = None) -> PackSummary:
    """Write the pack for ``tuned_dir - base_dir`` under ``policy`` to ``out_path``.

    ``calibration`` maps weight names to input second moments (quant.collect_hessians): the
    budget mode then allocates by output error, fixed-role codecs that are ``calibrated``
    quantize with GPTQ, and with ``policy.gptq`` so do the allocated matrices (a policy with
    ``gptq`` and no calibration is refused). Unchanged tensors are left out.

    The file is reproducible: the same checkpoints (by content), policy and calibration give
    the same bytes on the same platform, whatever torch's thread count, ``workers`` or the
    folders' paths. Each tensor is encoded on one torch thread for that, and the manifest names
    both checkpoints by fingerprint (pass them when known, to skip hashing the folders).
    ``workers`` tensors are encoded at once; by default the caller's torch thread count, fewer
    where that many copies of the largest tensor would not fit the free memory
    (``default_workers``).
    """
    threads = torch.get_num_threads()
    with torch_threads(1):
        return _compress(base_dir, tuned_dir, policy, out_path, base_fingerprint,
                         tuned_fingerprint, calibration, progress, workers, threads)


def _compress(base_dir, tuned_dir, policy, out_path, base_fingerprint, tuned_fingerprint,
              calibration, progress, workers, threads) -> PackSummary:
    start = time.perf_counter()
    policy = load_policy(policy)
    index = check_compatible(base_dir, tuned_dir)
    if workers is None:
        workers = default_workers((info.shape for info in index.values()), threads)
    workers = max(1, workers)
    total = len(index)
    dense_elems = sum(math.prod(info.shape) for info in index.values())
    fingerprint = base_fingerprint or fingerprint_checkpoint(base_dir)
    source = {"tuned_fingerprint": tuned_fingerprint or fingerprint_checkpoint(tuned_dir)}
    if policy.gptq and not calibration:
        raise ConfigError(f"Policy {policy.name!r} quantizes with GPTQ (gptq=true) but no "
                          "calibration statistics were given; pass calibration="
                          "collect_hessians(base model, batches) or set gptq to false.")
    calibration = calibration or {}
    chosen: dict[str, tuple[object, Encoded]] = {}
    meta: dict[str, dict] = {}
    spectra: dict[str, Spectrum] = {}
    allocating = policy.budget is not None
    steps = 2 * total if allocating else total

    def changed():
        """(name, delta, role) of each changed tensor, in the checkpoint's order."""
        for i, (name, delta, dtype) in enumerate(iter_deltas(base_dir, tuned_dir)):
            if progress:
                progress(i, steps, name)
            norm2 = _sum_sq(delta)
            if norm2 == 0.0:
                continue
            if not math.isfinite(norm2):  # NaN codes cannot be packed into any bit width
                bad = int((~torch.isfinite(delta)).sum())
                raise ModelMismatchError(
                    f"Tensor {name!r} of tuned {str(tuned_dir)!r} has {bad} NaN or infinite "
                    "values (the training diverged); retrain it, e.g. with a lower learning "
                    "rate.")
            role = module_role(name, delta.shape, policy.role_table)
            meta[name] = {"shape": list(delta.shape), "dtype": dtype, "role": role,
                          "norm2": norm2}
            yield name, delta, role

    def first(name, delta, role):
        """Pass one: a fixed role is encoded at once; an allocated one keeps its spectrum."""
        if allocating and role in (EMBEDDING, ATTENTION, MLP) and delta.dim() == 2:
            return measure(name, role, delta, budget=policy.budget,
                           energy=policy.energy.get(role), sensitivity=calibration.get(name))
        codec = policy.spec_for(role).build()
        enc = codec.encode(name, delta, hessian=calibration.get(name))
        return codec, enc, _err2(codec, name, delta, enc)

    fixed_bytes = 0
    for (name, _, _), out in in_order(first, changed(), workers):
        if isinstance(out, Spectrum):
            spectra[name] = out
            continue
        chosen[name] = out[:2]
        fixed_bytes += out[1].nbytes
        meta[name]["err2"] = out[2]
    if spectra:
        def planned(picks):
            """The fixed encodings with the picks' planned ones, and meta with their errors."""
            both = dict(chosen)
            with_err = {n: {"err2": m["norm2"], **m} for n, m in meta.items()}
            for name, pick in picks.items():
                plan = budget_mode.planned(pick, _gptq_hessian(policy, calibration, name,
                                                               pick.shape) is not None)
                if plan is not None:
                    both[name] = plan
                    with_err[name] = {**meta[name], "err2": pick.err2}
            return both, with_err

        def header(picks):
            manifest, tensors, _ = _layout(*planned(picks), policy, fingerprint, source)
            return header_bound(manifest, tensors)

        budget_bytes = policy.budget * 2 * dense_elems
        picks = _allocate(spectra, policy, budget_bytes, fixed_bytes, header)
        made: dict[str, budget_mode.Choice] = {}  # what each allocated matrix is encoded as now

        def allocated():
            for i, (name, delta, _) in enumerate(iter_deltas(base_dir, tuned_dir)):
                if progress and not rounds:  # a later round is brief: few matrices change
                    progress(total + i, steps, name)
                if name in picks and made.get(name) != picks[name]:
                    yield name, delta

        def second(name, delta):
            """Pass two: an allocated matrix encoded as chosen."""
            pick = picks[name]
            hessian = _gptq_hessian(policy, calibration, name, delta.shape)
            codec = pick.codec(calibrated=hessian is not None)
            if codec is None:  # nothing left of it: out of the pack, its error counted
                return None
            enc = budget_mode.encode(pick, spectra[name], delta, hessian=hessian)
            return codec, enc, _err2(codec, name, delta, enc)

        reserve, rounds = 0.0, 0
        while True:
            changed_any = False
            for (name, _), out in in_order(second, allocated(), workers):
                changed_any = True
                made[name] = picks[name]
                if out is None:
                    chosen.pop(name, None)
                    meta[name]["err2"] = meta[name]["norm2"]
                    continue
                chosen[name] = out[:2]
                meta[name]["err2"] = out[2]
            # the planned header held the predicted errors; where the measured ones take more
            # room, allocate again within what is left and encode the matrices that changed
            laid = _layout(chosen, meta, policy, fingerprint, source)
            over = laid[2]["payload"] + header_bound(*laid[:2]) - budget_bytes
            if over <= 0 or not changed_any:
                break
            reserve, rounds = reserve + over, rounds + 1
            picks = _allocate(spectra, policy, budget_bytes, fixed_bytes, header, reserve)
    else:
        laid = _layout(chosen, meta, policy, fingerprint, source)
    if progress:
        progress(steps, steps, "")
    manifest, tensors, summary = laid
    size = write_pack(out_path, manifest, tensors)
    err_num, err_den = summary["err2"]
    return PackSummary(Path(out_path), size, summary["payload"], 2 * dense_elems,
                       summary["by_role"], summary["rel"], time.perf_counter() - start,
                       (err_num / max(err_den, 1e-300)) ** 0.5,
                       sum(bool(enc.info.get("calibrated")) for _, enc in chosen.values()))


def _gptq_hessian(policy, calibration, name, shape):
    """The input second moment GPTQ uses for an allocated matrix of ``shape``, where the
    policy asks for GPTQ and the statistics fit the matrix (an embedding's token counts do
    not)."""
    h = calibration.get(name) if policy.gptq else None
    if h is None or h.dim() != 2 or tuple(h.shape) != (shape[1],) * 2:
        return None
    return h


def _allocate(spectra, policy, budget_bytes, fixed_bytes, header, reserve=0.0):
    """The allocation within ``budget_bytes`` (the policy's share of the dense fp16 delta),
    less ``reserve``, for the whole file: the tensors of the fixed roles (norms, biases), the
    allocated matrices and the header. ``header(picks)`` bounds the header of the pack, and
    of any tune of it, with those picks. The first round prices no manifest entry; the next
    prices each kept matrix at the entry the first one measured; any later one shrinks the
    room by what the last overshot. With no room left every allocated matrix is left out,
    which fits."""
    bare = header({})
    least = fixed_bytes + bare
    if least > budget_bytes:
        dense_bytes = budget_bytes / policy.budget
        raise ConfigError(
            f"A budget of {100 * policy.budget:g}% ({budget_bytes:.0f} bytes) is below what "
            f"the uncompressed tensors and the manifest alone need ({least} bytes, "
            f"{100 * least / dense_bytes:.2f}%); raise the budget.")
    target = budget_bytes - reserve
    room, entry = target - least, 0.0
    while True:
        picks = budget_mode.allocate(spectra, max(room, 0.0), policy.energy, entry)
        head = header(picks)
        over = fixed_bytes + sum(p.nbytes for p in picks.values()) + head - target
        if over <= 0 or room <= 0:
            return picks
        kept = sum(bool(p.blocks or p.rows) for p in picks.values())
        if entry == 0.0 and kept:
            entry = (head - bare) / kept
        else:
            room -= over


def _layout(chosen, meta, policy, fingerprint, source):
    """The manifest, the payload tensors and a summary for one selection of encodings."""
    tensors: dict[str, torch.Tensor] = {}
    entries: dict[str, dict] = {}
    rel: dict[str, float] = {}
    by_role: dict[str, set[str]] = {}
    err_num = err_den = 0.0
    for name in sorted(chosen):
        codec, enc = chosen[name]
        m = meta[name]
        rel[name] = (m["err2"] / m["norm2"]) ** 0.5
        err_num, err_den = err_num + m["err2"], err_den + m["norm2"]
        by_role.setdefault(m["role"], set()).add(codec.name)
        entries[name] = {"codec": codec.name, "params": codec_params(codec), "info": enc.info,
                         "shape": m["shape"], "dtype": m["dtype"], "role": m["role"],
                         "payload": sorted(enc.tensors), "nbytes": enc.nbytes,
                         "rel_error": float(f"{rel[name]:.4g}")}
        for key, t in enc.tensors.items():
            tensors[f"{name}{SEP}{key}"] = t
    for name in sorted(set(meta) - set(chosen)):  # left out by the allocation: all lost
        err_num, err_den = err_num + meta[name]["err2"], err_den + meta[name]["norm2"]
        rel[name] = 1.0
    manifest = {"base_fingerprint": fingerprint, "tensors": entries,
                "policy": policy.model_dump(mode="json"), "created_from": source}
    return manifest, tensors, {"payload": sum(e["nbytes"] for e in entries.values()),
                               "by_role": {r: sorted(c) for r, c in by_role.items()},
                               "rel": rel, "err2": (err_num, err_den)}


def _err2(codec, name: str, delta: torch.Tensor, enc: Encoded) -> float:
    """||delta - decoded||^2 with scratch of the factors' size or a slab at a time, not
    float64 copies of the matrix (an embedding of a 0.5B model is 545 MB in float32)."""
    part = codec.decode(name, tuple(delta.shape), enc.info, enc.tensors)
    d = delta.reshape(delta.shape[0], -1) if delta.dim() else delta.reshape(1, 1)
    rows = list(slabs(*d.shape, ERR_SLAB))
    if isinstance(part, LowRankPart):  # ||d||^2 - 2 tr(U^T d V^T) + tr(U^T U V V^T)
        u, v = part.U.double(), part.V.double()
        cross = sum(float(((d[sl].double() @ v.T) * u[sl]).sum()) for sl in rows)
        own = float(((u.T @ u) * (v @ v.T)).sum())
        norm2 = sum(_sum_sq(d[sl]) for sl in rows)
        return max(0.0, norm2 - 2 * cross + own)
    rec = part.to_dense().reshape(d.shape)
    return sum(_sum_sq(d[sl] - rec[sl]) for sl in rows)


def _sum_sq(x: torch.Tensor) -> float:
    """The sum of squares of ``x``'s entries, summed in float64 (float32 squares of float32
    entries are exact to 6e-8 each, with random signs) without a float64 copy of ``x``."""
    x = x.float()
    return float((x * x).sum(dtype=torch.float64))
