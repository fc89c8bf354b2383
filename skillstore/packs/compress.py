"""compress_checkpoint: stream the delta of two checkpoints, encode it per role, write a pack."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ModelMismatchError
from ..fingerprint import fingerprint_checkpoint
from . import budget as budget_mode
from .codecs import Encoded, codec_params
from .delta import check_compatible, iter_deltas
from .format import SEP, header_nbytes, write_pack
from .policy import CompressionPolicy, load_policy
from .roles import ATTENTION, EMBEDDING, MLP, module_role

Progress = Callable[[int, int, str], None]


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


def compress_checkpoint(base_dir: str | Path, tuned_dir: str | Path,
                        policy: str | Path | CompressionPolicy, out_path: str | Path, *,
                        base_fingerprint: str | None = None,
                        tuned_fingerprint: str | None = None,
                        calibration: Mapping[str, torch.Tensor] | None = None,
                        progress: Progress | None = None) -> PackSummary:
    """Write the pack for ``tuned_dir - base_dir`` under ``policy`` to ``out_path``.

    ``calibration`` maps weight names to input second moments (quant.collect_hessians) and
    switches on GPTQ-style quantization for codecs that use it. Unchanged tensors are left out.

    The file is reproducible: the same checkpoints (by content), policy and calibration give
    the same bytes on the same platform, whatever torch's thread count or the folders'
    paths. Encoding runs on one thread for that, and the manifest names both checkpoints by
    fingerprint (pass them when known, to skip hashing the folders).
    """
    with torch_threads(1):
        return _compress(base_dir, tuned_dir, policy, out_path, base_fingerprint,
                         tuned_fingerprint, calibration, progress)


def _compress(base_dir, tuned_dir, policy, out_path, base_fingerprint, tuned_fingerprint,
              calibration, progress) -> PackSummary:
    start = time.perf_counter()
    policy = load_policy(policy)
    total = len(check_compatible(base_dir, tuned_dir))
    fingerprint = base_fingerprint or fingerprint_checkpoint(base_dir)
    source = {"tuned_fingerprint": tuned_fingerprint or fingerprint_checkpoint(tuned_dir)}
    calibration = calibration or {}
    chosen: dict[str, tuple[object, Encoded]] = {}
    meta: dict[str, dict] = {}
    options: dict[str, list[budget_mode.Candidate]] = {}
    dense_elems = fixed_bytes = 0
    for i, (name, delta, dtype) in enumerate(iter_deltas(base_dir, tuned_dir)):
        if progress:
            progress(i, total, name)
        dense_elems += delta.numel()
        norm2 = float((delta.double() ** 2).sum())
        if norm2 == 0.0:
            continue
        if not math.isfinite(norm2):  # NaN codes cannot be packed into any bit width
            bad = int((~torch.isfinite(delta)).sum())
            raise ModelMismatchError(
                f"Tensor {name!r} of tuned {str(tuned_dir)!r} has {bad} NaN or infinite values "
                "(the training diverged); retrain it, e.g. with a lower learning rate.")
        role = module_role(name, delta.shape, policy.role_table)
        meta[name] = {"shape": list(delta.shape), "dtype": dtype, "role": role, "norm2": norm2}
        if policy.budget is not None and role in (EMBEDDING, ATTENTION, MLP):
            options[name] = budget_mode.candidates(name, role, delta, calibration.get(name))
            continue
        codec = policy.spec_for(role).build()
        enc = codec.encode(name, delta, hessian=calibration.get(name))
        chosen[name] = (codec, enc)
        fixed_bytes += enc.nbytes
        meta[name]["err2"] = _err2(codec, name, delta, enc)
    if progress:
        progress(total, total, "")
    budget_total = policy.budget * 2 * dense_elems if policy.budget is not None else None
    if options:
        for name, cand in budget_mode.choose(options, budget_total - fixed_bytes).items():
            chosen[name] = (cand.codec, cand.encoded)
            meta[name]["err2"] = cand.weight_error2
    manifest, tensors, summary = _layout(chosen, meta, policy, fingerprint, source)
    overhead = header_nbytes(manifest, tensors)
    if options and fixed_bytes + summary["payload"] + overhead > budget_total:
        # the budget is for the whole file: on a small model the header is a few percent
        room = budget_total - fixed_bytes - overhead
        for name, cand in budget_mode.choose(options, room).items():
            chosen[name] = (cand.codec, cand.encoded)
            meta[name]["err2"] = cand.weight_error2
        manifest, tensors, summary = _layout(chosen, meta, policy, fingerprint, source)
    size = write_pack(out_path, manifest, tensors)
    err_num, err_den = summary["err2"]
    return PackSummary(Path(out_path), size, summary["payload"], 2 * dense_elems,
                       summary["by_role"], summary["rel"], time.perf_counter() - start,
                       (err_num / max(err_den, 1e-300)) ** 0.5)


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
    manifest = {"base_fingerprint": fingerprint, "tensors": entries,
                "policy": policy.model_dump(mode="json"), "created_from": source}
    return manifest, tensors, {"payload": sum(e["nbytes"] for e in entries.values()),
                               "by_role": {r: sorted(c) for r, c in by_role.items()},
                               "rel": rel, "err2": (err_num, err_den)}


def _err2(codec, name: str, delta: torch.Tensor, enc: Encoded) -> float:
    rec = codec.decode(name, tuple(delta.shape), enc.info, enc.tensors).to_dense()
    return float(((delta - rec.reshape(delta.shape)).double() ** 2).sum())
