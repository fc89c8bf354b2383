"""SkillPack on-disk format: one safetensors file with a JSON manifest in its metadata.

Version 2 (written now) stores the payload as one flat tensor per dtype and the per-tensor
part of the manifest (entries, payload layout, policy) as zlib-compressed JSON: on a small
model the version-1 header (a JSON entry per payload tensor, plus the manifest escaped inside
the safetensors header) was 1.6% of a compact pack. Version 1 files are still read.
"""

from __future__ import annotations

import base64
import hashlib
import json
import warnings
import zlib
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
FORMAT_VERSION = 2
MANIFEST_KEY = "skillstore.manifest"
SEP = "::"  # payload key = "<base tensor name>::<codec's local key>"
REQUIRED = ("format", "format_version", "producer", "producer_version", "base_fingerprint",
            "tensors", "payload_digest")
KNOWN = (*REQUIRED, "policy", "created_from", "tuned")
# Version 2: these manifest keys travel compressed under PACKED_KEY, beside the payload layout.
PACKED = ("tensors", "policy", "created_from", "tuned")
PACKED_KEY = "packed"  # base64(zlib(JSON of the PACKED keys present, plus "layout"))
FLAT_PREFIX = "payload."  # one flat tensor per dtype: payload.uint8, payload.float16, ...
TENSOR_REQUIRED = ("codec", "params", "shape", "dtype", "role", "info")
# What a pack was made from, by content, so that the same inputs give the same file on any
# host: compress_checkpoint's fine-tune (its base is base_fingerprint), or a fusion's packs.
# Earlier packs recorded local folders ("base", "tuned"), so identical packs made in two
# places differed; they still load.
CREATED_FROM = (("tuned_fingerprint",), ("fused_from", "method"), ("base", "tuned"))
READ_WHOLE_BYTES = 64 << 20  # packs up to this size are read into memory in one call


def payload_digest(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the manifest (less the digest itself) and every payload tensor."""
    body = {k: v for k, v in manifest.items() if k != "payload_digest"}
    h = hashlib.sha256(json.dumps(body, sort_keys=True).encode())
    h.update(fingerprint_tensors((k, tensors[k]) for k in sorted(tensors)).encode())
    return "sha256:" + h.hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _packed_meta(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]
                 ) -> tuple[dict[str, str], dict[str, int]]:
    """The version-2 metadata for a full manifest and its payload, and the element count of
    each dtype's flat tensor (payload keys in sorted order, each dtype's run back to back)."""
    layout: dict[str, list] = {}
    sizes: dict[str, int] = {}
    for key in sorted(tensors):
        t = tensors[key]
        dt = _dtype_name(t.dtype)
        layout[key] = [dt, sizes.get(dt, 0), list(t.shape)]
        sizes[dt] = sizes.get(dt, 0) + t.numel()
    packed = {k: manifest[k] for k in PACKED if k in manifest}
    packed["layout"] = layout
    blob = zlib.compress(json.dumps(packed, sort_keys=True, separators=(",", ":")).encode(), 9)
    plain = {k: v for k, v in manifest.items() if k not in PACKED}
    plain[PACKED_KEY] = base64.b64encode(blob).decode()
    return {MANIFEST_KEY: json.dumps(plain, sort_keys=True, separators=(",", ":"))}, sizes


def _fold(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]
          ) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The version-2 metadata and flat tensors (one per dtype) for a manifest and its payload."""
    meta, _ = _packed_meta(manifest, tensors)
    chunks: dict[str, list[torch.Tensor]] = {}
    for key in sorted(tensors):
        chunks.setdefault(_dtype_name(tensors[key].dtype), []).append(tensors[key].reshape(-1))
    return meta, {FLAT_PREFIX + dt: torch.cat(parts).contiguous() for dt, parts in chunks.items()}


def _unfold(plain: dict[str, Any], flat: dict[str, torch.Tensor]
            ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The full manifest and payload tensors of a version-2 file (views into the flat ones)."""
    packed = json.loads(zlib.decompress(base64.b64decode(plain[PACKED_KEY], validate=True)))
    layout = packed.pop("layout")
    manifest = {k: v for k, v in plain.items() if k != PACKED_KEY} | packed
    tensors = {}
    for key, (dt, start, shape) in layout.items():
        buf = flat[FLAT_PREFIX + dt]
        n = 1
        for d in shape:
            n *= d
        if start < 0 or start + n > buf.numel():
            raise ValueError(f"payload tensor {key!r} lies outside the {dt} payload")
        tensors[key] = buf[start:start + n].view(shape)
    return manifest, tensors


def _full_manifest(manifest: dict[str, Any], digest: str) -> dict[str, Any]:
    """``manifest`` with this writer's format, producer and ``digest`` stamped over whatever it
    had (a manifest read from another pack carries that pack's)."""
    return {**manifest, "format": FORMAT, "format_version": FORMAT_VERSION,
            "producer": "skillstore", "producer_version": __version__, "payload_digest": digest}


def write_pack(path: str | Path, manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> int:
    """Write the pack atomically (temp file, then rename); returns its size in bytes."""
    path = Path(path)
    manifest = _full_manifest(manifest, "")
    manifest["payload_digest"] = payload_digest(manifest, tensors)
    meta, flat = _fold(manifest, tensors)
    tmp = path.with_name(path.name + ".tmp")
    save_file(flat, str(tmp), metadata=meta)
    tmp.replace(path)
    return path.stat().st_size


def header_nbytes(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> int:
    """At least the bytes the file holds besides the payload: the safetensors header with the
    (partly compressed) manifest, the fields write_pack adds and the digest. ``tensors`` may
    be on the meta device: only their dtypes and shapes are read."""
    meta, sizes = _packed_meta(_full_manifest(manifest, "sha256:" + "0" * 64), tensors)
    header = {FLAT_PREFIX + dt: {"dtype": "BF16", "shape": [n], "data_offsets": [8 * n, 8 * n]}
              for dt, n in sizes.items()}  # the longest dtype name; at most 8 bytes an element
    header["__metadata__"] = meta
    return 8 + len(json.dumps(header, separators=(",", ":"))) + 8  # length, JSON, padding


def tuned_manifest(manifest: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """A tuned pack's manifest: ``record`` under ``tuned``, each entry less its weight error
    (tuning moved the weights, so the error measured at compression no longer holds)."""
    entries = {n: {k: v for k, v in e.items() if k != "rel_error"}
               for n, e in manifest["tensors"].items()}
    return {**manifest, "tensors": entries, "tuned": record}


# The longest ``tuned`` record tune_pack writes, for a bound on a tuned pack's header: every
# digest as random hex, every float with 17 digits and an exponent.
_LONGEST_TUNED = {
    "from": "sha256:" + hashlib.sha256(b"from").hexdigest(), "objective": "teacher",
    "steps": 10 ** 9, "lr": 1.2345678901234567e-05, "batch_size": 10 ** 6, "rows": 10 ** 9,
    "rows_digest": "sha256:" + hashlib.sha256(b"rows").hexdigest(),
    "loss_before": 1.2345678901234567e-05, "loss_after": 7.6543210987654321e-06}


def header_bound(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> int:
    """At least the header of this pack and of any tune of it (``tune_pack`` keeps the
    payload's bytes and changes only the manifest), so a budget that counts this holds for
    both."""
    return max(header_nbytes(manifest, tensors),
               header_nbytes(tuned_manifest(manifest, _LONGEST_TUNED), tensors))


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

    def codecs_by_role(self) -> dict[str, list[str]]:
        """role -> the codecs its tensors use, as the catalog records a pack's."""
        out: dict[str, set[str]] = {}
        for entry in self.manifest["tensors"].values():
            out.setdefault(str(entry["role"]), set()).add(str(entry["codec"]))
        return {role: sorted(codecs) for role, codecs in sorted(out.items())}

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
        meta, tensors, declared = _read_tensors(path)
    except Exception as exc:  # safetensors raises several types for damaged headers
        raise _corrupt(path, "the safetensors file cannot be read "
                             f"({type(exc).__name__}: {exc})") from None
    if path.stat().st_size != declared:
        raise _corrupt(path, "the file size does not match its header (truncated or padded)")
    if MANIFEST_KEY not in meta:
        raise _corrupt(path, "it is a safetensors file without a SkillPack manifest")
    try:
        manifest = json.loads(meta[MANIFEST_KEY])
    except json.JSONDecodeError:
        raise _corrupt(path, "the manifest is not valid JSON") from None
    if isinstance(manifest, dict) and PACKED_KEY in manifest:
        try:
            manifest, tensors = _unfold(manifest, tensors)
        except Exception as exc:  # zlib, base64, JSON or layout damage
            raise _corrupt(path, "its packed manifest cannot be read "
                                 f"({type(exc).__name__}: {exc})") from None
    if not isinstance(manifest, dict):
        raise _corrupt(path, "the manifest is not a JSON object")
    missing = [k for k in REQUIRED if k not in manifest]
    if missing or manifest.get("format") != FORMAT:
        lacks = ", ".join(missing) or "the SkillPack format tag"
        raise _corrupt(path, f"the manifest lacks {lacks}")
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
    if "created_from" in manifest:
        _check_created_from(path, manifest["created_from"])
    return PackFile(path, manifest, tensors)


def _check_created_from(path: Path, source: Any) -> None:
    """``created_from`` has one of the CREATED_FROM shapes: missing keys of the shape its
    keys name fail, keys of no shape are warned about."""
    if not isinstance(source, dict):
        raise _corrupt(path, "its created_from is not a JSON object")
    shape = next((s for s in CREATED_FROM if set(s) & set(source)), ())
    if lacking := [k for k in shape if k not in source]:
        raise _corrupt(path, f"its created_from lacks {', '.join(lacking)}")
    if unknown := sorted(set(source) - set(shape)):
        warnings.warn(f"Pack {str(path)!r} has unknown created_from keys {unknown}; "
                      "ignoring them.", stacklevel=3)


def _read_tensors(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor], int]:
    """The metadata, every tensor, and the file size the header declares (8-byte length +
    header + the end of the last tensor's data). A small file is read in one call and parsed
    from memory; a large one is mapped, tensor by tensor."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        data = f.read() if size <= READ_WHOLE_BYTES else None
        head = data[:8] if data is not None else f.read(8)
        n = int.from_bytes(head, "little")
        if n > size:
            raise ValueError(f"header length {n} exceeds the file size {size}")
        header = json.loads(data[8:8 + n] if data is not None else f.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    meta = header.get("__metadata__") or {}
    if data is not None:
        return meta, load_safetensors(data), 8 + n + end
    with safe_open(str(path), framework="pt") as f:
        return meta, {k: f.get_tensor(k) for k in f.keys()}, 8 + n + end
