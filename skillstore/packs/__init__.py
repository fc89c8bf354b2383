"""SkillPacks: delta extraction, module-aware compression, the pack format, grafting, export."""

from .codecs import CODECS, get_codec
from .compress import PackSummary, compress_checkpoint
from .delta import check_compatible, iter_deltas
from .export import export_merged, export_peft, load_base
from .format import FORMAT_VERSION, PackFile, read_pack
from .graft import active_packs, apply_pack, grafted, release_buffers, unapply_pack
from .parts import DensePart, LowRankPart, SparsePart
from .policy import PRESETS, CodecSpec, CompressionPolicy, load_policy
from .quant import collect_hessians
from .roles import module_role
from .tune import TuneConfig, TuneObjective, TuneResult, tune_pack

__all__ = [
    "CODECS", "FORMAT_VERSION", "PRESETS", "CodecSpec", "CompressionPolicy", "DensePart",
    "LowRankPart", "PackFile", "PackSummary", "SparsePart", "TuneConfig", "TuneObjective",
    "TuneResult", "active_packs", "apply_pack",
    "check_compatible", "collect_hessians", "compress_checkpoint", "export_merged",
    "export_peft", "get_codec", "grafted", "iter_deltas", "load_base", "load_policy",
    "module_role", "read_pack", "release_buffers", "tune_pack", "unapply_pack",
]
