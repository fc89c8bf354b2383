"""Compression policies: which codec each module role gets, presets, and the budget mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

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


ALLOCATED = (EMBEDDING, ATTENTION, MLP)  # the roles the budget mode allocates


class CompressionPolicy(BaseModel):
    """The operator per module role, or, with ``budget``, an allocation: the file (header
    included, and that of any tune of it) may take a ``budget`` fraction of the dense fp16
    delta's bytes, and the embedding, attention and MLP matrices get the singular directions
    and bit widths, or embedding rows, that lose the least of each matrix's energy.
    ``energy`` (role -> fraction) stops a matrix of that role taking more once it keeps that
    share of its energy.
    ``gptq`` quantises the allocated matrices' factors with GPTQ on calibration statistics
    (the input second moments of each linear layer), which the pack is then refused without;
    the job's compress step collects them from the skill's training rows."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = "custom"
    embedding: CodecSpec = CodecSpec(codec="magnitude", params={"keep": 0.05})
    attention: CodecSpec = CodecSpec(codec="mplr", params={"rank": 32})
    mlp: CodecSpec = CodecSpec(codec="mplr", params={"rank": None, "energy": 0.9})
    small: CodecSpec = CodecSpec(codec="dense")
    unknown: CodecSpec = CodecSpec(codec="dense")
    role_table: tuple[tuple[str, str], ...] = ()
    budget: float | None = None
    energy: dict[str, float] = {}
    gptq: bool = False

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

    @field_validator("energy")
    @classmethod
    def _energy_per_role(cls, v):
        for role, keep in v.items():
            if role not in ALLOCATED:
                raise unknown_name("role with an energy target", role, list(ALLOCATED))
            if not 0 < keep < 1:
                raise ValueError(f"energy of {role} is the fraction of each matrix's energy "
                                 f"to keep, in (0, 1), got {keep}")
        return dict(v)

    @model_validator(mode="after")
    def _energy_needs_budget(self):
        if self.energy and self.budget is None:
            raise ValueError("energy targets steer the budget allocation; set budget too "
                             "(1.0 for no byte limit)")
        return self

    def spec_for(self, role: str) -> CodecSpec:
        return {EMBEDDING: self.embedding, ATTENTION: self.attention, MLP: self.mlp,
                SMALL: self.small, UNKNOWN: self.unknown}[role]


def _everywhere(keep: float) -> dict[str, float]:
    return dict.fromkeys(ALLOCATED, keep)


# The lossy presets are stated in relative terms, so that a name means the same trade-off on
# the 0.45M zoo model and on an 8B one: a share of the dense fp16 delta's bytes, and the
# energy at which a matrix is kept well enough. Fixed ranks meant 4.9% of a 128-wide
# projection and 0.15% of a 4,096-wide one. On the zoo's SFT deltas (full-rank, flat
# spectra) the byte budget binds; on a low-rank delta the energy target does, well before.
PRESETS: dict[str, CompressionPolicy] = {p.name: p for p in (
    CompressionPolicy(
        name="lossless", embedding=CodecSpec(codec="dense"), attention=CodecSpec(codec="dense"),
        mlp=CodecSpec(codec="dense")),
    CompressionPolicy(name="balanced", budget=0.25, energy=_everywhere(0.9999)),
    CompressionPolicy(name="compact", budget=0.05, energy=_everywhere(0.999)),
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
