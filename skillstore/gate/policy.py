"""The promotion policy: how much a new skill must gain and how much old ones may drop."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Thresholds(BaseModel):
    """Per-skill thresholds; a field left None inherits the policy's global value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_gain: float | None = Field(default=None, ge=0.0, le=1.0)
    max_drop: float | None = Field(default=None, ge=0.0, le=1.0)


class GatePolicy(BaseModel):
    """Frozen gate policy, global with optional per-skill overrides.

    Scores are fractions in [0, 1]. A drop counts as forgetting only when it exceeds the
    tolerance plus ``z`` standard errors of the difference (both runs' stderr combined).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_gain: float = Field(default=0.05, ge=0.0, le=1.0,
                            description="Least score gain on the new skill over the current state.")
    max_drop: float = Field(default=0.01, ge=0.0, le=1.0,
                            description="Largest tolerated drop on any earlier skill.")
    max_general_drop: float = Field(default=0.01, ge=0.0, le=1.0,
                                    description="Largest tolerated drop on the general suite.")
    z: float = Field(default=1.96, ge=0.0, le=10.0,
                     description="Confidence margin in standard errors (1.96 = 95% two-sided).")
    per_skill: dict[str, Thresholds] = Field(default_factory=dict)

    @field_validator("per_skill")
    @classmethod
    def _names(cls, value: dict[str, Thresholds]) -> dict[str, Thresholds]:
        for name in value:
            if not name.strip():
                raise ValueError("per_skill keys must be skill names, not blank strings")
        return value

    def min_gain_for(self, skill: str) -> float:
        override = self.per_skill.get(skill)
        return self.min_gain if override is None or override.min_gain is None else override.min_gain

    def max_drop_for(self, skill: str) -> float:
        override = self.per_skill.get(skill)
        return self.max_drop if override is None or override.max_drop is None else override.max_drop
