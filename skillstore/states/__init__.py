"""Model states: base + ordered packs with scales + routing policy, materialised in memory."""

from .materialise import grafted_all, load_packs, materialise, pack_deltas
from .service import (
                      attach_router,
                      candidate_state,
                      fuse_packs,
                      manual_override,
                      router_prompts,
                      skill_prompts,
                      unloaded_state,
)
from .view import Member, StateView, base_state, extend_state, load_view

__all__ = ["Member", "StateView", "attach_router", "base_state", "candidate_state", "extend_state",
           "fuse_packs", "grafted_all", "load_packs", "load_view", "manual_override", "materialise",
           "pack_deltas", "router_prompts", "skill_prompts", "unloaded_state"]
