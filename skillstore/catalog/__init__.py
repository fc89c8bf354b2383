"""The skill-store catalog: tables, migrations, lineage queries and the service functions."""

from .gc import BLOB_REFERENCES, GcReport, collect_garbage, referenced_digests
from .jobs import attach_task, create_job, get_job, list_jobs
from .lineage import LineageGraph, add_edge, ancestors, descendants, describe_nodes
from .models import (
                   BaseCheckpoint,
                   BaseHead,
                   EvalResult,
                   Job,
                   JobStep,
                   LineageEdge,
                   ModelState,
                   Promotion,
                   Skill,
                   SkillPack,
                   StatePack,
)
from .packs import (
                   PackPage,
                   create_pack,
                   get_pack,
                   inconclusive_packs,
                   list_packs,
                   pack_detail,
                   pack_name,
                   pack_origin,
                   pack_rows,
                   promotions_of,
                   set_pack_status,
                   status_label,
)
from .registry import add_skill, get_base, get_skill, list_bases, list_skills, register_base
from .schema import EdgeKind, JobStatus, PackStatus, Record, utcnow
from .states import (
                   advance_head,
                   current_head,
                   current_state,
                   eval_results,
                   get_or_create_state,
                   get_state,
                   record_eval_result,
                   state_fingerprint,
)
from .workspace import Catalog, init_workspace, open_catalog

__all__ = [
    "BLOB_REFERENCES", "BaseCheckpoint", "BaseHead", "Catalog", "EdgeKind", "EvalResult",
    "GcReport", "Job", "JobStep", "JobStatus", "LineageEdge", "LineageGraph", "ModelState",
    "PackPage", "PackStatus", "Promotion", "Record", "Skill", "SkillPack", "StatePack", "add_edge",
    "add_skill", "advance_head", "ancestors", "attach_task", "collect_garbage",
    "create_job", "create_pack", "current_head", "current_state", "describe_nodes",
    "descendants", "eval_results", "get_base", "get_job",
    "get_or_create_state", "get_pack", "get_skill", "get_state", "inconclusive_packs",
    "init_workspace", "list_bases",
    "list_jobs", "list_packs", "list_skills", "open_catalog", "pack_detail", "pack_name",
    "pack_origin", "pack_rows", "promotions_of",
    "record_eval_result", "referenced_digests", "register_base", "set_pack_status",
    "state_fingerprint", "status_label", "utcnow",
]
