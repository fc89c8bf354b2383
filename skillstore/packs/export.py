"""Export: a merged Hugging Face model directory, or the pack as a PEFT LoRA adapter."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch

from .. import __version__
from ..errors import ConfigError
from ..fingerprint import TOKENIZER_FILES
from ..models import FINGERPRINT_ATTR, load_model
from .format import PackFile, read_pack
from .graft import apply_pack, check_base
from .parts import LowRankPart
from .roles import module_name

PROVENANCE_FILE = "skillstore_export.json"


def load_base(base_dir: str | Path, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The base model on the CPU (no tokenizer needed), with its fingerprint attached."""
    return load_model(base_dir, dtype=dtype, device="cpu")


def _copy_tokenizer(base_dir: Path, out_dir: Path) -> None:
    for name in TOKENIZER_FILES:
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, out_dir / name)


def export_merged(base_dir: str | Path,
                  packs_with_scales: Iterable[tuple[PackFile | str | Path, float]],
                  out_dir: str | Path) -> Path:
    """Write base + sum of scale * pack delta as a folder AutoModelForCausalLM loads.

    The packs are merged for good (``apply_pack(..., removable=False)``): decoded and added
    into the loaded base in place, with no copy of the base weights."""
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    # A damaged pack is refused before the base is even loaded.
    packs = [(p if isinstance(p, PackFile) else read_pack(p), float(s))
             for p, s in packs_with_scales]
    model = load_base(base_dir)
    for pack, _ in packs:
        check_base(model, pack)  # all checks before any weight changes
    for pack, scale in packs:
        apply_pack(model, pack, scale, removable=False)  # in place, nothing kept
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    _copy_tokenizer(base_dir, out_dir)
    (out_dir / PROVENANCE_FILE).write_text(json.dumps({
        "producer": "skillstore", "producer_version": __version__,
        "base_fingerprint": getattr(model, FINGERPRINT_ATTR),
        "packs": [{"digest": p.digest, "scale": s} for p, s in packs]}, indent=2))
    return out_dir


def export_peft(pack: PackFile | str | Path, base_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the pack as a PEFT LoRA adapter that ``PeftModel.from_pretrained`` loads.

    Low-rank parts become LoRA A/B (alpha = rank, so the scaling is 1; ``rank_pattern``
    where ranks differ). Other changed modules (norms, embeddings) go to ``modules_to_save``;
    biases of LoRA modules are saved with ``bias="lora_only"``.
    """
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    pack = pack if isinstance(pack, PackFile) else read_pack(pack)
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    model = load_base(base_dir, dtype=torch.float32)
    check_base(model, pack)
    modules = dict(model.named_modules())
    lora: dict[str, LowRankPart] = {}
    other = []
    for part in pack.decoded():
        mod = module_name(part.name)
        if isinstance(part, LowRankPart) and part.name.endswith(".weight") and \
                isinstance(modules.get(mod), torch.nn.Linear | Conv1D):
            if part.rank:
                lora[mod] = part
        else:
            other.append(part)
    if not lora:
        raise ConfigError(f"Pack {str(pack.path)!r} has no low-rank parts to export as LoRA; "
                          "use --format merged.")
    fan_in_fan_out = any(isinstance(modules[m], Conv1D) for m in lora)
    bias = "none"
    to_save: set[str] = set()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for part in other:
            mod = module_name(part.name)
            if mod in lora:
                if not part.name.endswith(".bias"):
                    raise ConfigError(f"{part.name!r} is not low-rank but its module has LoRA "
                                      "factors; PEFT cannot hold both, use --format merged.")
                bias = "lora_only"
            else:
                to_save.add(mod)
            part.add_to(params[part.name], 1.0)
    _keep_tied_head(model, modules, to_save)
    ranks = {m: p.rank for m, p in lora.items()}
    r = max(set(ranks.values()), key=list(ranks.values()).count)
    pattern = {m: k for m, k in ranks.items() if k != r}
    config = LoraConfig(r=r, lora_alpha=r, target_modules=sorted(lora), rank_pattern=pattern,
                        alpha_pattern=dict(pattern), lora_dropout=0.0, bias=bias,
                        fan_in_fan_out=fan_in_fan_out, modules_to_save=sorted(to_save) or None)
    peft_model = get_peft_model(model, config)
    peft_modules = dict(peft_model.base_model.model.named_modules())
    with torch.no_grad():
        for mod, part in lora.items():
            layer = peft_modules[mod]
            a, b = (part.U.T, part.V.T) if fan_in_fan_out else (part.V, part.U)
            layer.lora_A["default"].weight.copy_(a)
            layer.lora_B["default"].weight.copy_(b)
    out_dir.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(out_dir))
    return out_dir


def _keep_tied_head(model, modules, to_save: set[str]) -> None:
    """A tied output head shares the embedding's weight: when the embedding is saved as a
    full module, save the head too, or PEFT's copy would leave the head on the base values."""
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    if out is None or out.weight is not inp.weight:
        return
    names = {id(m): n for n, m in modules.items()}
    if names.get(id(inp)) in to_save:
        to_save.add(names[id(out)])
