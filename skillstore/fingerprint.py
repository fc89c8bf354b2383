"""Content fingerprints of checkpoints and tokenizers, identical on disk and in memory."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from .errors import NotFoundError

FINGERPRINT_PREFIX = "sha256:"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "tokenizer.model")


def safetensors_files(model_dir: str | Path) -> list[Path]:
    """The safetensors shards of a Hugging Face checkpoint directory, in a stable order."""
    root = Path(model_dir)
    if not root.is_dir():
        raise NotFoundError(f"Model directory {str(root)!r} does not exist; "
                            "pass a Hugging Face checkpoint folder.")
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise NotFoundError(
            f"Model directory {str(root)!r} has no .safetensors files; "
            "re-save it with save_pretrained(safe_serialization=True)."
        )
    return files


def iter_checkpoint_tensors(model_dir: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from every shard, one tensor in memory at a time, sorted by name."""
    index: dict[str, Path] = {}
    for shard in safetensors_files(model_dir):
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                index[key] = shard
    for name in sorted(index):
        with safe_open(str(index[name]), framework="pt") as f:
            yield name, f.get_tensor(name)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def fingerprint_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 over (name, dtype, shape, bytes) of tensors given in canonical (sorted) order."""
    h = hashlib.sha256()
    for name, t in named:
        header = json.dumps([name, str(t.dtype).removeprefix("torch."), list(t.shape)])
        h.update(header.encode())
        h.update(_tensor_bytes(t))
    return FINGERPRINT_PREFIX + h.hexdigest()


def fingerprint_checkpoint(model_dir: str | Path) -> str:
    """Fingerprint of the weights in a checkpoint folder, streamed tensor by tensor."""
    return fingerprint_tensors(iter_checkpoint_tensors(model_dir))


def fingerprint_module(model: torch.nn.Module) -> str:
    """Fingerprint of a loaded model, equal to that of the folder save_pretrained writes.

    Tied weights appear once on disk, under the name that comes first in state_dict order,
    so aliases of an already-seen storage are skipped the same way here.
    """
    seen: set[tuple[int, int]] = set()
    unique: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        unique[name] = t
    return fingerprint_tensors((n, unique[n]) for n in sorted(unique))


def fingerprint_tokenizer(model_dir: str | Path) -> str:
    """sha256 over the tokenizer files present in a checkpoint folder."""
    root = Path(model_dir)
    h = hashlib.sha256()
    found = False
    for name in TOKENIZER_FILES:
        path = root / name
        if path.is_file():
            found = True
            h.update(name.encode())
            h.update(path.read_bytes())
    if not found:
        raise NotFoundError(
            f"Model directory {str(root)!r} has no tokenizer files "
            f"({', '.join(TOKENIZER_FILES[:2])}); save the tokenizer beside the weights."
        )
    return FINGERPRINT_PREFIX + h.hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return FINGERPRINT_PREFIX + h.hexdigest()
