"""Request and response bodies: frozen pydantic models with bounded fields."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from ..catalog.schema import JobStatus, PackStatus
from ..curriculum.lmeval import METRICS
from .params import NAME_PATTERN

T = TypeVar("T")
NameField = Field(pattern=NAME_PATTERN, max_length=128)
PATH_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # a server path: no NUL or other control characters


class Body(BaseModel):
    """A request body: unknown fields are refused, strings are bounded."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class BaseIn(Body):
    name: str = NameField
    path: str = Field(min_length=1, max_length=4096, pattern=PATH_PATTERN,
                      description="Checkpoint folder on the server (hub ids are not fetched).")
    general_suite: bool = Field(default=False, description=(
        "Build the base's behaviour suite (agreement with its greedy answers, KL(base || "
        "state)), the general suite of its jobs, as `skillstore base add` does by default. It "
        "runs the model in the server process, so it is off unless asked for."))
    general_data: str | None = Field(default=None, max_length=4096, pattern=PATH_PATTERN,
                                     description="Probe prompts for the behaviour suite: a "
                                                 "JSONL or text file on the server.")


class SkillIn(Body):
    name: str = NameField
    path: str = Field(min_length=1, max_length=4096, pattern=PATH_PATTERN,
                      description="JSONL dataset on the server.")
    suite: str = Field(default="", max_length=4096, pattern=PATH_PATTERN.replace("+", "*"),
                       description="The lm-eval suite that measures it: task YAML paths on the "
                                   "server or task names, comma-separated. Without one, a "
                                   "held-out test split of the rows becomes its suite.")
    description: str = Field(default="", max_length=2000)
    seed: int | None = Field(default=None, ge=0, description="Seed of the held-out split "
                                                             "(default 0; no suite only).")
    test_size: int | None = Field(default=None, ge=1, description=(
        "Rows held out for the test split (default: enough to see a 5-point drop at 80% "
        "accuracy, at most a fifth of the rows; no suite only)."))
    metric: Literal[METRICS] | None = Field(
        default=None, description="How the held-out task scores an answer (default "
                                  "exact_match; no suite only).")


class JobIn(Body):
    """A learning job, as `skillstore learn` takes it; the server validates the whole request
    (every trainer setting included) before queueing, and answers 422 naming a bad field."""

    skill: str = NameField
    base: str = NameField
    method: Literal["sft", "distill", "dpo"] = "sft"
    source: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=128)
    policy: str = Field(default="balanced", pattern=r"^[a-z][a-z0-9_-]{0,63}$",
                        description="A compression preset name (lossless, balanced, compact).")
    start_from: Literal["base", "current"] = "base"
    budget: float | None = Field(default=None, gt=0, le=100,
                                 description="Percent of the dense fp16 delta to fit the pack in.")
    max_steps: int | None = Field(default=None, ge=1, le=10_000_000,
                                  description="Steps of every training stage the method runs.")
    lr: float | None = Field(default=None, gt=0, description="Peak learning rate of every stage.")
    batch_size: int | None = Field(default=None, ge=1, le=1_000_000)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    tune_steps: int = Field(default=0, ge=0, le=100_000,
                            description="Steps of tune_pack on the skill's training rows after "
                                        "compressing; 0: off.")
    tune_objective: Literal["labels", "teacher"] = Field(
        default="labels", description="What tune_steps tune the pack toward: the rows' answers "
                                      "(labels) or the job's fine-tune's next-token "
                                      "distributions on them (teacher).")
    eval_limit: int | None = Field(default=None, ge=1, le=10_000_000)
    distill_prompts: int | None = Field(default=None, ge=1, le=100_000_000)
    verify: bool = True
    backend: Literal["auto", "builtin", "trl"] = Field(
        default="auto", description="Training loop: auto (builtin for a small model on the CPU, "
                                    "TRL otherwise), builtin or trl.")
    gradient_checkpointing: bool = Field(
        default=False, description="Recompute activations in the backward pass: less memory.")
    train: dict[str, Any] = Field(default_factory=dict, max_length=64,
                                  description="Other SFT settings (docs/learning.md).")
    dpo: dict[str, Any] = Field(default_factory=dict, max_length=64,
                                description="DPO settings (method dpo only).")
    generation: dict[str, Any] = Field(default_factory=dict, max_length=64,
                                       description="How the source answers (distill, dpo).")
    gate: dict[str, Any] = Field(default_factory=dict, max_length=64,
                                 description="Gate policy settings (min_gain, max_drop, ...).")


class OverrideIn(Body):
    reason: str = Field(min_length=1, max_length=2000, pattern=r"\S",
                        description="Why; kept in the audit trail.")


class ErrorDetail(Out):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorOut(Out):
    error: ErrorDetail


class Page(Out, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class BaseOut(Out):
    id: int
    name: str
    uri: str
    architecture: str
    fingerprint: str
    tokenizer_fingerprint: str | None
    behaviour: dict | None = None
    created_at: datetime


class SkillOut(Out):
    id: int
    name: str
    description: str
    suite: str
    data_uri: str | None
    data_sha256: str | None
    heldout: dict | None = Field(
        default=None, description="The held-out split its suite was made from (seed, sizes, "
                                  "blob digests of both halves, metric, suite version); null "
                                  "when the skill was registered with its own suite.")
    created_at: datetime


class PackOut(Out):
    id: int
    name: str
    skill: str
    version: int
    base: str
    status: PackStatus
    blob_digest: str
    size_bytes: int
    format_version: int
    compression_ratio: float | None
    codecs: dict[str, Any]
    method: str
    source: str | None
    metrics: dict[str, Any]
    created_at: datetime
    inconclusive: bool = Field(False, description=(
        "True for a rejected pack whose last status change was an inconclusive gate decision: "
        "the samples could not decide, which is not a finding that it forgot or did not learn."))


class PromotionOut(Out):
    id: int
    pack_id: int
    from_: PackStatus | None = Field(alias="from")
    to: PackStatus
    reason: str
    report_ref: str | None
    state_id: int | None
    actor: str
    at: datetime


class PackDetail(PackOut):
    parents: list[dict[str, Any]]
    experiment: dict[str, Any] | None
    history: list[PromotionOut]


class JobOut(Out):
    id: int
    kind: str
    status: JobStatus
    stage: str | None
    progress: float
    attempts: int
    error: str | None
    celery_task_id: str | None
    request: dict[str, Any]
    steps: dict[str, dict[str, Any]]
    owner: dict[str, Any] | None
    base_id: int | None
    skill_id: int | None
    pack_id: int | None
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None


class ExperimentRunOut(Out):
    id: int
    method: str
    seed: int
    status: JobStatus
    error: str | None
    result: dict[str, Any] | None = Field(description="Once succeeded: skills, accuracy "
                                          "matrix, metrics, bytes per skill (docs/experiments.md).")
    job_id: int | None
    state_id: int | None
    stage: str | None = Field(description="While running: the step the method is in.")
    progress: float | None = Field(description="While running: the fraction of the run done, "
                                               "as the worker last reported it.")
    started_at: datetime | None
    finished_at: datetime | None


class ExperimentOut(Out):
    id: int
    name: str
    status: JobStatus = Field(description="Derived from the runs': failed when any run failed "
                                          "and the others finished.")
    base_id: int
    spec_sha256: str
    spec: dict[str, Any]
    run_counts: dict[str, int]
    runs: list[ExperimentRunOut]
    created_at: datetime
    finished_at: datetime | None


class AdoptedOut(Out):
    """One pack of an adopted graft run: the gate's verdict on the state it would join."""

    pack_id: int
    name: str
    verdict: str = Field(description="promoted, rejected or inconclusive; for a pack decided "
                                     "before, its status.")
    summary: str
    state_id: int | None


class StateMember(Out):
    position: int
    pack_id: int
    name: str
    scale: float


class StateOut(Out):
    id: int
    fingerprint: str
    base: str
    base_id: int
    parent_id: int | None
    router: str
    router_config: dict[str, Any]
    description: str
    packs: list[StateMember]
    current: bool
    created_at: datetime


class LineageNode(Out):
    model_config = ConfigDict(frozen=True, extra="allow")
    id: str
    depth: int
    type: str | None = None
    name: str | None = None


class LineageEdge(Out):
    child: str
    parent: str
    kind: str


class LineageOut(Out):
    root: str
    direction: Literal["ancestors", "descendants"]
    nodes: list[LineageNode]
    edges: list[LineageEdge]
