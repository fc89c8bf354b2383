"""Outside files into the catalog: checkpoints, datasets and pack files, checked before storing."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from .catalog import BaseCheckpoint, add_skill, create_pack, get_base, get_skill
from .curriculum.validate import validate_dataset
from .errors import ConfigError, FingerprintMismatchError, NotFoundError
from .evaluation.suites import normalise_suite
from .fingerprint import fingerprint_checkpoint, fingerprint_tokenizer
from .heldout import plan_suite, split_dataset, write_suite
from .packs.format import read_pack

HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_PATTERNS = ["*.safetensors", "*.json", "*.txt", "*.model", "tokenizer*"]
IMPORTED_METHOD = "import"


@dataclass(frozen=True)
class CheckpointInfo:
    """What `register_base` records about a checkpoint folder."""

    uri: str
    architecture: str
    fingerprint: str
    tokenizer_fingerprint: str | None


def checkpoint_dir(path_or_id: str, *, allow_hub: bool = True) -> tuple[Path, str]:
    """A local checkpoint folder and the uri to record: a path, or a hub id fetched to the cache."""
    path = Path(path_or_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotFoundError(f"{path_or_id!r} is a file; pass the checkpoint folder.")
        return path.resolve(), str(path.resolve())
    if not allow_hub or not HUB_ID_RE.match(path_or_id) or path_or_id.startswith((".", "/", "~")):
        raise NotFoundError(f"Checkpoint folder {path_or_id!r} does not exist.")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(path_or_id, allow_patterns=HUB_PATTERNS)
    except Exception as exc:  # the hub client raises many types; all mean "not available"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NotFoundError(f"{path_or_id!r} is not a local folder and could not be fetched "
                            f"from the hub ({reason}); pass a local checkpoint folder.") from None
    return Path(local), path_or_id


def architecture_of(folder: Path) -> str:
    """The first entry of `architectures` in a Hugging Face config.json."""
    config = folder / "config.json"
    if not config.is_file():
        raise NotFoundError(f"{str(folder)!r} is not a Hugging Face model folder (no config.json).")
    try:
        doc = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{str(config)!r} is not valid JSON ({exc}).") from None
    if not isinstance(doc, dict):
        raise ConfigError(
            f"{str(config)!r} is not a JSON object; pass a Hugging Face model folder.")
    return str((doc.get("architectures") or [doc.get("model_type") or "unknown"])[0])


def checkpoint_info(path_or_id: str, *, allow_hub: bool = True) -> CheckpointInfo:
    """Hash a checkpoint's weights and tokenizer (a source without a tokenizer is allowed here;
    a job that needs it refuses it)."""
    folder, uri = checkpoint_dir(path_or_id, allow_hub=allow_hub)
    architecture = architecture_of(folder)
    fingerprint = fingerprint_checkpoint(folder)
    try:
        tok = fingerprint_tokenizer(folder)
    except NotFoundError:
        tok = None
    return CheckpointInfo(uri, architecture, fingerprint, tok)


def register_skill_dataset(session: Session, blobs, *, name: str, data: Path, suite: str = "",
                           description: str = "", data_uri: str | None = None, store: bool = True,
                           suites_dir: str | Path | None = None, seed: int | None = None,
                           test_size: int | None = None, metric: str | None = None):
    """Validate a JSONL dataset (DatasetError names the line), store it as a blob, add the skill.

    ``data_uri`` is what the catalog records as the data's location (default: the file itself).
    ``suite`` is read as skillstore.evaluation.suites reads it: task YAML paths (checked, made
    absolute) or task names. Without one, a held-out test split of the rows (``seed``,
    ``test_size``, ``metric``: skillstore.heldout) becomes the skill's suite, a task YAML under
    ``suites_dir``, recorded in ``skill.heldout``; jobs train on the other rows only.
    """
    split_options = {"seed": seed, "test_size": test_size, "metric": metric}
    given = [k for k, v in split_options.items() if v is not None]
    if suite:
        if given:
            flag = given[0].replace("_", "-")
            raise ConfigError(f"{given[0]} (--{flag}) sets the held-out split that skill "
                              f"{name!r} would get without a suite; drop it or drop the suite.")
        suite = normalise_suite(suite)  # a missing task YAML fails before anything is stored
        summary = validate_dataset(data)  # every line, before anything is stored
        digest = blobs.put_file(data) if store else summary.sha256
        return add_skill(session, name=name, suite=suite, description=description,
                         data_uri=data_uri if data_uri is not None else str(Path(data).resolve()),
                         data_sha256=digest)
    if suites_dir is None:
        raise ConfigError(f"Skill {name!r} has no suite and no folder to write a held-out one "
                          "to; pass the suite's task YAML.")
    summary = validate_dataset(data)
    split = split_dataset(data, **{k: split_options[k] for k in given})
    plan = plan_suite(suites_dir, name, split)
    row = add_skill(session, name=name, suite=str(plan.yaml_path), description=description,
                    data_uri=data_uri if data_uri is not None else str(Path(data).resolve()),
                    data_sha256=summary.sha256, heldout=plan.record())
    # Written only once the catalog took the name: a refused skill leaves no suite folder.
    if store:
        blobs.put_file(data)
    record = write_suite(blobs, plan)
    if row.heldout != record:
        row.heldout = record
        session.flush()
    return row


def import_pack_file(session: Session, blobs, path: Path, *, skill: str, base: str | None = None,
                     actor: str = "import"):
    """Verify a SkillPack file and add it as a new candidate pack of ``skill`` on its base.

    The file is read and verified in full (header, size, manifest, payload digest) and its base
    fingerprint must be the named base's (or, with no base named, a registered one's) before the
    blob is stored or a row is written: a refused file changes nothing.
    """
    pack_file = read_pack(path)  # CorruptPackError for truncated, altered or foreign files
    skill_row = get_skill(session, skill)
    fingerprint = pack_file.base_fingerprint
    if base is not None:
        base_row = get_base(session, base)
        if base_row.fingerprint != fingerprint:
            raise FingerprintMismatchError(
                f"The pack was made for base {fingerprint[:19]}..., not base {base_row.name!r} "
                f"({base_row.fingerprint[:19]}...); name the base it was made for.")
    else:
        base_row = session.scalar(sa.select(BaseCheckpoint).where(
            BaseCheckpoint.fingerprint == fingerprint))
        if base_row is None:
            raise FingerprintMismatchError(
                f"The pack was made for base {fingerprint[:19]}..., which is not registered; "
                "register that checkpoint with `skillstore base add` first.")
    size = Path(path).stat().st_size
    dense = 0
    for entry in pack_file.manifest["tensors"].values():
        numel = 1
        for d in entry["shape"]:
            numel *= int(d)
        dense += 2 * numel
    digest = blobs.put_file(path)
    return create_pack(session, skill=skill_row, base=base_row, blob_digest=digest, size_bytes=size,
                       format_version=int(pack_file.manifest["format_version"]),
                       method=IMPORTED_METHOD, dense_fp16_bytes=dense,
                       codecs=pack_file.codecs_by_role(),
                       metrics={"payload_digest": pack_file.digest}, actor=actor)
