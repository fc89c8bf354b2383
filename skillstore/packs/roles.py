"""Module roles: which compression operator a tensor gets, from its name and shape."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable

EMBEDDING = "embedding"   # token/position embeddings and the output head
ATTENTION = "attention"   # attention projections (q, k, v, o; GPT-2's fused c_attn)
MLP = "mlp"               # feed-forward projections
SMALL = "small"           # norms, biases and any other 1-D tensor
UNKNOWN = "unknown"       # a 2-D tensor no pattern claims: stored dense, with a warning
ROLES = (EMBEDDING, ATTENTION, MLP, SMALL, UNKNOWN)

# (regex searched in the tensor name, role). The first match wins; 1-D tensors are SMALL
# whatever their name. Covers Llama, Mistral, Qwen2, Gemma and GPT-2 naming.
DEFAULT_ROLE_TABLE: tuple[tuple[str, str], ...] = (
    (r"(^|\.)(embed_tokens|wte|wpe|lm_head|embed_out|word_embeddings)\.weight$", EMBEDDING),
    (r"\.(self_attn|attn|attention)"
     r"\.(q_proj|k_proj|v_proj|o_proj|qkv_proj|c_attn|c_proj|dense)\.weight$", ATTENTION),
    (r"\.(mlp|feed_forward)"
     r"\.(gate_proj|up_proj|down_proj|gate_up_proj|c_fc|c_proj|fc1|fc2|w1|w2|w3)\.weight$", MLP),
)


def module_role(name: str, shape: Iterable[int],
                table: tuple[tuple[str, str], ...] = DEFAULT_ROLE_TABLE) -> str:
    """The role of one tensor; a table given by the user is searched before the default one."""
    if len(tuple(shape)) <= 1:
        return SMALL
    for pattern, role in (*table, *DEFAULT_ROLE_TABLE):
        if re.search(pattern, name):
            return role
    warnings.warn(f"Tensor {name!r} has no module role; it is stored dense. "
                  "Add a (pattern, role) entry to the policy's role_table to compress it.",
                  stacklevel=2)
    return UNKNOWN


def module_name(tensor_name: str) -> str:
    """``model.layers.0.mlp.up_proj.weight`` -> ``model.layers.0.mlp.up_proj``."""
    return tensor_name.rsplit(".", 1)[0] if "." in tensor_name else tensor_name
