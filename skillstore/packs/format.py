"""SkillPack on-disk format: one safetensors file with a JSON manifest in its metadata."""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from .. import __version__
from ..errors import CorruptPackError
from ..fingerprint import fingerprint_tensors
from .codecs import get_codec
from .parts import Part

FORMAT = "skillstore.pack"
FORMAT_VERSION = 1
MANIFEST_KEY = "skillstore.manifest"
SEP = "::"  # payload key = "<base tensor name>::<codec's local key>"
REQUIRED = ("format", "format_version", "producer", "producer_version", "base_fingerprint",
            "tensors", "payload_digest")
KNOWN = (*REQUIRED, "policy", "created_from")
TENSOR_REQUIRED = ("codec", "params", "shape", "dtype", "role", "info")
READ_WHOLE_BYTES = 64 << 20  # packs up to this size are read into memory in one call


def payload_digest(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the manifest (less the digest itself) and every payload tensor."""
    body = {k: v for k, v in manifest.items() if k != "payload_digest"}
    h = hashlib.sha256(json.dumps(body, sort_keys=True).encode())
    h.update(fingerprint_tensors((k, tensors[k]) for k in sorted(tensors)).encode())
    return "sha256:" + h.hexdigest()


def write_pack(path: str | Path, manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> int:
    """Write the pack atomically (temp file, then rename); returns its size in bytes."""
    path = Path(path)
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "producer": "skillstore",
                "producer_version": __version__, **manifest}
    manifest["payload_digest"] = payload_digest(manifest, tensors)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={MANIFEST_KEY: json.dumps(manifest, sort_keys=True)})
    tmp.replace(path)
    return path.stat().st_size


def header_nbytes(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> int:
    """About how many bytes the file holds besides the payload: the safetensors header
    (one JSON entry per tensor) with the manifest, the fields write_pack adds and the digest."""
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, "producer": "skillstore",
            "producer_version": __version__, "payload_digest": "sha256:" + "0" * 64, **manifest}
    header = {k: {"dtype": str(t.dtype), "shape": list(t.shape), "data_offsets": [2**31, 2**31]}
              for k, t in tensors.items()}
    header["__metadata__"] = {MANIFEST_KEY: json.dumps(full, sort_keys=True)}
    return 8 + len(json.dumps(header, separators=(",", ":"))) + 8


@dataclass
class PackFile:
    """A verified pack in memory: its manifest and payload (packs are small)."""

    path: Path
    manifest: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(repr=False)

    @property
    def base_fingerprint(self) -> str:
        return self.manifest["base_fingerprint"]

    @property
    def digest(self) -> str:
        return self.manifest["payload_digest"]

    @property
    def names(self) -> list[str]:
        return sorted(self.manifest["tensors"])

    def payload_of(self, name: str) -> dict[str, torch.Tensor]:
        keys = self.manifest["tensors"][name]["payload"]
        return {k: self.tensors[f"{name}{SEP}{k}"] for k in keys}

    def nbytes_of(self, name: str) -> int:
        return sum(t.numel() * t.element_size() for t in self.payload_of(name).values())

    def decode(self, name: str) -> Part:
        entry = self.manifest["tensors"][name]
        codec = get_codec(entry["codec"], entry["params"])
        return codec.decode(name, tuple(entry["shape"]), entry["info"], self.payload_of(name))

    def decoded(self) -> Iterator[Part]:
        """Each tensor's delta as LowRankPart, SparsePart or DensePart, sorted by name.

        Tensors whose codec can decode several at once (``decode_many``: the small factors of
        mplr) are decoded up front in groups of the same codec, shape and blocks; the others,
        which may be as large as the weights, one at a time as they are asked for."""
        groups: dict[str, list[str]] = {}
        for name in self.names:
            entry = self.manifest["tensors"][name]
            if hasattr(get_codec(entry["codec"]), "decode_many"):
                key = json.dumps([entry[k] for k in ("codec", "params", "shape", "info")],
                                 sort_keys=True)
                groups.setdefault(key, []).append(name)
        ready: dict[str, Part] = {}
        for names in groups.values():
            entry = self.manifest["tensors"][names[0]]
            codec = get_codec(entry["codec"], entry["params"])
            parts = codec.decode_many(names, tuple(entry["shape"]), entry["info"],
                                      [self.payload_of(n) for n in names])
            ready.update(zip(names, parts, strict=True))
        for name in self.names:
            yield ready.pop(name) if name in ready else self.decode(name)

    def dense_deltas(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, dense float32 delta) per tensor, one at a time."""
        for part in self.decoded():
            yield part.name, part.to_dense()


def _corrupt(path: Path, why: str) -> CorruptPackError:
    return CorruptPackError(f"{str(path)!r} is not a valid SkillPack: {why}; "
                            "re-create it with `skillstore pack compress`.")


def read_pack(path: str | Path) -> PackFile:
    """Open and verify a pack: header, manifest and payload digest, before anything is used."""
    path = Path(path)
    if not path.is_file():
        raise _corrupt(path, "the file does not exist")
    try:
        meta, tensors = _read_tensors(path)
    except Exception as exc:  # safetensors raises several types for damaged headers
        raise _corrupt(path, f"the safetensors file cannot be read ({type(exc).__name__}: {exc})") from None
    if path.stat().st_size != _expected_size(path):
        raise _corrupt(path, "the file size does not match its header (truncated or padded)")
    if MANIFEST_KEY not in meta:
        raise _corrupt(path, "it is a safetensors file without a SkillPack manifest")
    try:
        manifest = json.loads(meta[MANIFEST_KEY])
    except json.JSONDecodeError:
        raise _corrupt(path, "the manifest is not valid JSON") from None
    missing = [k for k in REQUIRED if k not in manifest]
    if missing or manifest.get("format") != FORMAT:
        raise _corrupt(path, f"the manifest lacks {', '.join(missing) or 'the SkillPack format tag'}")
    if manifest["format_version"] > FORMAT_VERSION:
        raise CorruptPackError(f"{str(path)!r} has pack format {manifest['format_version']}, newer "
                               f"than {FORMAT_VERSION}; upgrade skillstore to read it.")
    if unknown := sorted(set(manifest) - set(KNOWN)):
        warnings.warn(f"Pack {str(path)!r} has unknown manifest keys {unknown}; ignoring them.",
                      stacklevel=2)
    if payload_digest(manifest, tensors) != manifest["payload_digest"]:
        raise _corrupt(path, "its payload digest does not match (the file was altered)")
    for name, entry in manifest["tensors"].items():
        if lacking := [k for k in TENSOR_REQUIRED if k not in entry]:
            raise _corrupt(path, f"tensor {name!r} lacks {', '.join(lacking)} in the manifest")
    return PackFile(path, manifest, tensors)


def _read_tensors(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The metadata and every tensor. A small file is read in one call and parsed from
    memory (a compact pack holds hundreds of tiny tensors, and one lookup per tensor in an
    open file cost several times as much); a large one is mapped, tensor by tensor."""
    if path.stat().st_size <= READ_WHOLE_BYTES:
        data = path.read_bytes()
        n = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
        return meta, load_safetensors(data)
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}, {k: f.get_tensor(k) for k in f.keys()}


def _expected_size(path: Path) -> int:
    """8-byte header length + header + the end of the last tensor's data."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return 8 + n + end
