"""The promotion policy: how much a new skill must gain and how much old ones may drop."""

from __future__ import annotations

import warnings
from statistics import NormalDist
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..evaluation.scores import GENERAL_SUITE


class Thresholds(BaseModel):
    """Per-skill thresholds; a field left None inherits the policy's global value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_gain: float | None = Field(default=None, ge=-1.0, le=1.0)
    max_drop: float | None = Field(default=None, ge=0.0, le=1.0)


class GatePolicy(BaseModel):
    """Frozen gate policy, global with optional per-skill overrides (docs/composition.md).

    Scores are fractions in [0, 1]. Every claim is a one-sided confidence bound at
    ``confidence`` on a paired difference over the same prompts: the new skill's gain over the
    current state must have its lower bound at ``min_gain`` or above; the pack state must keep
    ``min_fidelity`` of the uncompressed fine-tune's score on the new skill; every earlier skill's
    and the general suite's drop must have its upper bound within its tolerance (Holm-adjusted
    across those drop checks). A check the samples cannot decide is inconclusive.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_gain: float = Field(default=0.05, ge=-1.0, le=1.0, description=(
        "Least gain on the new skill: the lower confidence bound of its paired gain must reach "
        "it. A negative value asks only that the skill lose no more than that (-1: no check)."))
    max_drop: float = Field(default=0.01, ge=0.0, le=1.0, description=(
        "Largest tolerated drop on any earlier skill (upper confidence bound)."))
    max_general_drop: float = Field(default=0.01, ge=0.0, le=1.0, description=(
        "Largest tolerated drop on the general suite (upper confidence bound)."))
    min_fidelity: float = Field(default=0.95, ge=0.0, le=1.0, description=(
        "Least share of the uncompressed fine-tune's score on the new skill that the pack "
        "state must keep: the lower confidence bound of the paired mean of pack - "
        "min_fidelity x fine-tune must reach 0. 0: no check."))
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0, description=(
        "Confidence of each one-sided bound (0.95: a 5% chance of a wrong claim per decision)."))
    power: float = Field(default=0.8, gt=0.0, lt=1.0, description=(
        "Power assumed when an inconclusive check says how many prompts it would need."))
    per_skill: dict[str, Thresholds] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _z_is_confidence(cls, data: Any) -> Any:
        """``z`` (a margin in standard errors, before paired bounds) is read as the one-sided
        confidence with the same quantile, Phi(z): stored requests keep working."""
        if not isinstance(data, dict) or "z" not in data:
            return data
        data = dict(data)
        z = data.pop("z")
        if "confidence" not in data:
            if not isinstance(z, int | float) or not 0.0 < z <= 10.0:
                raise ValueError(f"z={z!r} is no longer a setting; set confidence (0.5 to 1, "
                                 "e.g. 0.95) instead")
            data["confidence"] = NormalDist().cdf(z)
        warnings.warn("GatePolicy.z is deprecated; set confidence instead", DeprecationWarning,
                      stacklevel=2)
        return data

    @field_validator("per_skill")
    @classmethod
    def _names(cls, value: dict[str, Thresholds]) -> dict[str, Thresholds]:
        for name in value:
            if not name.strip():
                raise ValueError("per_skill keys must be skill names, not blank strings")
            if name == GENERAL_SUITE:
                raise ValueError(f"per_skill names {GENERAL_SUITE!r}, the general suite; "
                                 "set max_general_drop instead")
        return value

    def min_gain_for(self, skill: str) -> float:
        override = self.per_skill.get(skill)
        return self.min_gain if override is None or override.min_gain is None else override.min_gain

    def max_drop_for(self, skill: str) -> float:
        override = self.per_skill.get(skill)
        return self.max_drop if override is None or override.max_drop is None else override.max_drop
