"""Compression policies: which codec each module role gets, presets, and the budget mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ..errors import ConfigError, unknown_name
from .codecs import get_codec
from .roles import ATTENTION, EMBEDDING, MLP, ROLES, SMALL, UNKNOWN


class CodecSpec(BaseModel):
    """A codec by registry name plus the parameters that differ from its defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    codec: str
    params: dict[str, Any] = {}

    @field_validator("params")
    @classmethod
    def _freeze(cls, v: dict[str, Any]) -> dict[str, Any]:
        return dict(v)

    def build(self):
        return get_codec(self.codec, self.params)

    def model_post_init(self, _ctx) -> None:
        self.build()  # an unknown codec or bad parameter fails here, at the edge


class CompressionPolicy(BaseModel):
    """The operator per module role. With ``budget`` (a fraction of the dense fp16 delta's
    bytes) the rank and bits of embedding, attention and MLP modules are chosen per module
    to minimise the total reconstruction error within that budget instead."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = "custom"
    embedding: CodecSpec = CodecSpec(codec="magnitude", params={"keep": 0.05})
    attention: CodecSpec = CodecSpec(codec="mplr", params={"rank": 32})
    mlp: CodecSpec = CodecSpec(codec="mplr", params={"rank": None, "energy": 0.9})
    small: CodecSpec = CodecSpec(codec="dense")
    unknown: CodecSpec = CodecSpec(codec="dense")
    role_table: tuple[tuple[str, str], ...] = ()
    budget: float | None = None

    @field_validator("role_table")
    @classmethod
    def _roles_known(cls, v):
        for _, role in v:
            if role not in ROLES:
                raise unknown_name("module role", role, list(ROLES))
        return v

    @field_validator("budget")
    @classmethod
    def _budget_range(cls, v):
        if v is not None and not 0 < v <= 1:
            raise ValueError(f"budget is a fraction of the dense fp16 delta in (0, 1], got {v}")
        return v

    def spec_for(self, role: str) -> CodecSpec:
        return {EMBEDDING: self.embedding, ATTENTION: self.attention, MLP: self.mlp,
                SMALL: self.small, UNKNOWN: self.unknown}[role]


def _mplr(**params) -> CodecSpec:
    return CodecSpec(codec="mplr", params=params)


PRESETS: dict[str, CompressionPolicy] = {p.name: p for p in (
    CompressionPolicy(
        name="lossless", embedding=CodecSpec(codec="dense"), attention=CodecSpec(codec="dense"),
        mlp=CodecSpec(codec="dense")),
    CompressionPolicy(
        name="balanced",
        embedding=CodecSpec(codec="magnitude", params={"keep": 0.05}),
        attention=_mplr(rank=64, schedule=[[0.5, 8], [0.5, 4]]),
        mlp=_mplr(rank=None, energy=0.98, max_rank=256, schedule=[[0.5, 8], [0.5, 4]])),
    # Per-role ablation on the zoo (docs/skillpack.md): pruning the embedding and head to 1%
    # of entries lost half the accuracy alone, so they get low rank at 8/4 bits. Attention
    # is where the rest goes, and its rank matters more than its bits: rank 20 at 3/2 bits
    # kept what rank 16 at 4/2 lost. The MLP keeps 80% of its spectral energy at 3/2 bits.
    # On the zoo's knowledge and case fine-tunes this fits in 5% of the dense fp16 delta.
    CompressionPolicy(
        name="compact",
        embedding=_mplr(rank=20, schedule=[[0.5, 8], [0.5, 4]]),
        attention=_mplr(rank=20, schedule=[[0.5, 3], [0.5, 2]]),
        mlp=_mplr(rank=None, energy=0.8, max_rank=64, schedule=[[0.5, 3], [0.5, 2]])),
)}


def load_policy(spec: str | Path | CompressionPolicy, *,
                budget: float | None = None) -> CompressionPolicy:
    """A preset name, a JSON file or a policy object; ``budget`` switches on the budget mode."""
    if isinstance(spec, CompressionPolicy):
        policy = spec
    elif str(spec) in PRESETS:
        policy = PRESETS[str(spec)]
    elif Path(spec).is_file():
        try:
            policy = CompressionPolicy.model_validate(json.loads(Path(spec).read_text()))
        except (ValidationError, json.JSONDecodeError) as exc:
            first = str(exc).splitlines()
            raise ConfigError(
                f"Policy file {str(spec)!r} is invalid: {' '.join(first[:3])}") from None
    else:
        raise unknown_name("policy preset", str(spec), list(PRESETS))
    if budget is not None:
        try:
            policy = policy.model_copy(update={"budget": budget})
            CompressionPolicy.model_validate(policy.model_dump())
        except ValidationError as exc:
            raise ConfigError(f"Budget {budget}: {exc.errors()[0]['msg']}; "
                              "pass a fraction such as 0.05.") from None
    return policy
