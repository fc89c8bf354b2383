"""Streamed weight deltas (fine-tuned minus base), read lazily from safetensors shards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..errors import ModelMismatchError
from ..fingerprint import safetensors_files


@dataclass(frozen=True)
class TensorInfo:
    shard: Path
    shape: tuple[int, ...]
    dtype: str


def checkpoint_index(model_dir: str | Path) -> dict[str, TensorInfo]:
    """Name -> (shard, shape, dtype) for every tensor, from the headers only."""
    index: dict[str, TensorInfo] = {}
    for shard in safetensors_files(model_dir):
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                sl = f.get_slice(key)
                index[key] = TensorInfo(shard, tuple(sl.get_shape()), str(sl.get_dtype()))
    return index


def _architecture(model_dir: Path) -> tuple[str | None, tuple[str, ...]]:
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        return None, ()
    cfg = json.loads(cfg_path.read_text())
    return cfg.get("model_type"), tuple(cfg.get("architectures") or ())


def check_compatible(base_dir: str | Path, tuned_dir: str | Path) -> dict[str, TensorInfo]:
    """The base index, after checking that both checkpoints have the same architecture,
    tensor names and shapes; otherwise a ModelMismatchError naming the first mismatch."""
    base_dir, tuned_dir = Path(base_dir), Path(tuned_dir)
    base_arch, tuned_arch = _architecture(base_dir), _architecture(tuned_dir)
    if base_arch[0] and tuned_arch[0] and base_arch != tuned_arch:
        raise ModelMismatchError(
            f"Architectures differ: base {str(base_dir)!r} is {base_arch[0]} {list(base_arch[1])}, "
            f"tuned {str(tuned_dir)!r} is {tuned_arch[0]} {list(tuned_arch[1])}; "
            "a pack needs a checkpoint fine-tuned from this base.")
    base, tuned = checkpoint_index(base_dir), checkpoint_index(tuned_dir)
    for name in sorted(set(base) | set(tuned)):
        if name not in tuned:
            raise ModelMismatchError(f"Tensor {name!r} is in base {str(base_dir)!r} but not in "
                                     f"tuned {str(tuned_dir)!r}; the checkpoints do not match.")
        if name not in base:
            raise ModelMismatchError(f"Tensor {name!r} is in tuned {str(tuned_dir)!r} but not in "
                                     f"base {str(base_dir)!r}; the checkpoints do not match.")
        if base[name].shape != tuned[name].shape:
            raise ModelMismatchError(f"Tensor {name!r} has shape {list(base[name].shape)} "
                                     f"in the base but {list(tuned[name].shape)} in the tuned "
                                     "checkpoint; the checkpoints do not match.")
    return base


def iter_deltas(base_dir: str | Path, tuned_dir: str | Path
                ) -> Iterator[tuple[str, torch.Tensor, str]]:
    """Yield (name, tuned - base in float32, base dtype) one tensor at a time, sorted by name.

    Only one base tensor, one tuned tensor and their delta are in memory at any moment.
    """
    base = check_compatible(base_dir, tuned_dir)
    tuned = checkpoint_index(tuned_dir)
    for name in sorted(base):
        with safe_open(str(base[name].shard), framework="pt") as fb, \
                safe_open(str(tuned[name].shard), framework="pt") as ft:
            b = fb.get_tensor(name)
            delta = ft.get_tensor(name).float()
            delta -= b.float()
        yield name, delta, str(b.dtype).removeprefix("torch.")
        del b, delta
