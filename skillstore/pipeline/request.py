"""The learn request: one frozen, typed object the CLI and the API build, checked and stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy.orm import Session

from ..catalog import current_head, get_base, get_skill, get_state
from ..catalog.models import BaseCheckpoint, ModelState, Skill
from ..errors import ConfigError, NotFoundError, RequestError
from ..evaluation.suites import general_suite, skill_suite
from ..fingerprint import fingerprint_tokenizer
from ..gate.policy import GatePolicy
from ..packs import TuneObjective, load_policy
from ..training.backends import BackendName, get_backend
from ..training.distill import GenerationConfig
from ..training.dpo import DPOConfig
from ..training.sft import SFTConfig

METHODS = ("sft", "distill", "dpo")
START_FROM = ("base", "current")
# The flags `learn --max-steps/--lr/--batch-size/--seed` set on every training stage a method
# runs: SFT for all three, and the DPO stage too for dpo. No flag is left unread.
COMMON_TRAIN_KEYS = ("max_steps", "lr", "batch_size", "seed")


class LearnRequest(BaseModel):
    """Everything a learning job was asked to do, validated in full when it is queued.

    ``sft`` configures the supervised stage every method runs (on ground-truth answers for
    sft, on the source's verified answers for distill and dpo); ``dpo`` configures the
    preference stage that follows it for dpo; ``generation`` is how the source answers.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    skill: str = Field(min_length=1, max_length=128)
    base: str = Field(min_length=1, max_length=128)
    method: Literal["sft", "distill", "dpo"] = "sft"
    source: str | None = Field(default=None, min_length=1, max_length=128)
    start_from: Literal["base", "current"] = "base"
    policy: str = Field(default="balanced", min_length=1,
                        description="A compression preset, or the path of a policy JSON file.")
    budget: float | None = Field(default=None, gt=0, le=1,
                                 description="Fit the pack in this fraction of the dense fp16 "
                                             "delta.")
    tune_steps: int = Field(default=0, ge=0, le=1_000_000)
    tune_objective: TuneObjective = Field(default="labels", description=(
        "What tune_steps tune the pack toward: the training rows' answers (labels) or the "
        "job's fine-tune's next-token distributions on them (teacher)."))
    sft: SFTConfig = SFTConfig()
    generation: GenerationConfig = GenerationConfig()
    distill_prompts: int | None = Field(default=None, gt=0, description=(
        "distill and dpo: how many of the skill's training prompts the source answers "
        "(default: all)."))
    verify: bool = Field(default=True, description=(
        "distill and dpo: keep only the source answers that the skill's rule-based checker "
        "accepts (the curriculum's checker, else equality with the reference answer)."))
    dpo: DPOConfig = DPOConfig()
    gate: GatePolicy = GatePolicy()
    eval_limit: int | None = Field(default=None, gt=0, description=(
        "Evaluate at most this many prompts per task (default: every test prompt)."))
    general_suite: str | None = Field(default=None, min_length=1, description=(
        "The base's general suite (an lm-eval task YAML); default: the one beside the "
        "skill's suite, if any."))
    backend: BackendName = Field(default="auto", description=(
        "The loop the train step runs on: builtin (the hand-written AdamW loop), trl (TRL on "
        "accelerate), or auto (builtin for a small model on the CPU, TRL otherwise; the "
        "choice is recorded with the train step)."))
    gradient_checkpointing: bool = Field(default=False, description=(
        "Recompute activations in the backward pass: less memory, about a third more compute."))

    @model_validator(mode="after")
    def _source_for_transfer(self) -> LearnRequest:
        if self.method in ("distill", "dpo") and self.source is None:
            raise ValueError(f"method {self.method!r} learns from a source model; "
                             "name one with --source NAME")
        if self.method == "sft":  # settings of the source's answers would go unread
            unread = [flag for flag, set_ in (
                ("--source", self.source is not None),
                ("--distill-prompts", self.distill_prompts is not None),
                ("--no-verify", not self.verify),
                ("--generation", self.generation != GenerationConfig())) if set_]
            if unread:
                raise ValueError(f"method 'sft' trains on the skill's own answers and reads no "
                                 f"source, so {', '.join(unread)} would be ignored; drop it or "
                                 "use --method distill")
        return self

    @classmethod
    def build(cls, skill: str, base: str, *, max_steps: int | None = None,
              lr: float | None = None, batch_size: int | None = None, seed: int | None = None,
              sft: dict[str, Any] | None = None, dpo: dict[str, Any] | None = None,
              generation: dict[str, Any] | None = None, **fields: Any) -> LearnRequest:
        """A request from the flat options the CLI and the API take; the common training flags
        apply to every stage the method runs. Raises RequestError naming the first bad field."""
        common = {k: v for k, v in (("max_steps", max_steps), ("lr", lr),
                                    ("batch_size", batch_size), ("seed", seed)) if v is not None}
        doc = {"skill": skill, "base": base, **{k: v for k, v in fields.items() if v is not None}}
        doc["sft"] = {**(sft or {}), **common}
        stages = {"dpo": dpo or {}}
        if doc.get("method") == "dpo":
            stages["dpo"] = {**stages["dpo"], **common}
        elif dpo:
            raise RequestError("DPO settings were given but the method is not dpo; "
                               "pass --method dpo or drop them.", "dpo")
        doc["dpo"] = stages["dpo"]
        doc["generation"] = {**(generation or {}), **(
            {"seed": seed} if seed is not None and doc.get("method", "sft") != "sft" else {})}
        return parse_request(doc)


def parse_request(doc: dict[str, Any]) -> LearnRequest:
    """Validate a request document; a bad field is one RequestError line naming it."""
    try:
        return LearnRequest.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "no such setting (see `skillstore learn --help` and docs/learning.md)"
        what = f"Learning job option {where}" if where else "Learning job"
        raise RequestError(f"{what}: {message}.", where) from None


def request_of(job) -> LearnRequest:
    """The request a job was queued with (validated again: the column is plain JSON)."""
    return parse_request(job.request)


# Queue-time checks against the catalog and the disk: refuse before anything is queued.


def _check_backend(request: LearnRequest) -> None:
    """A backend asked for by name must be importable here (an install may lack TRL; the train
    step checks again on the worker, before loading anything)."""
    if request.backend != "auto":
        get_backend(request.backend)  # ConfigError: "... TRL is not installed ..."


def _check_data(skill: Skill) -> None:
    if not skill.data_uri and not skill.data_sha256:
        raise ConfigError(f"Skill {skill.name!r} has no training data; register it with "
                          "`skillstore skill add NAME --data FILE`.")


def _check_source(source: BaseCheckpoint) -> None:
    if not Path(source.uri).is_dir():
        raise NotFoundError(f"Source model {source.name!r} is not on this machine ({source.uri}); "
                            "register a local checkpoint folder.")
    fingerprint_tokenizer(source.uri)  # NotFoundError naming the folder when it has no tokenizer


def _check_policy(request: LearnRequest) -> None:
    load_policy(request.policy, budget=request.budget)  # a preset or a JSON file, else ConfigError


def _check_suites(skill: Skill, request: LearnRequest) -> None:
    """The evaluate step will resolve these; a job that cannot be judged is not queued."""
    if request.general_suite and not Path(request.general_suite).is_file():
        raise NotFoundError(f"General suite YAML {request.general_suite!r} does not exist; "
                            "pass the path of an lm-eval task YAML.")
    try:
        suite = skill_suite(skill)
    except NotFoundError:  # a bare task name: a job has no tasks folder to find it in
        raise NotFoundError(
            f"Skill {skill.name!r} has suite {skill.suite!r}, which names no task YAML a job "
            "can find; register the skill again with --suite PATH/TO/TASK.yaml, or with only "
            "--data to get a held-out suite made for it.") from None
    general_suite(request.general_suite, beside=[suite])


def _check_gate(session: Session, request: LearnRequest) -> None:
    """A per-skill threshold must name a registered skill: a typo would silently not apply."""
    for name in request.gate.per_skill:
        try:
            get_skill(session, name)
        except NotFoundError as exc:
            raise NotFoundError(f"Gate policy per_skill: {exc}") from None


def check_request(session: Session, request: LearnRequest) -> tuple[Skill, BaseCheckpoint]:
    """(skill, base) rows of a request whose every reference resolves; else one-line errors:
    an unknown skill, base or source, a skill without data, a source with no tokenizer, a policy
    that does not parse, a general suite that is not there, a gate threshold for no skill, a
    backend that is not installed."""
    _check_backend(request)
    skill, base = get_skill(session, request.skill), get_base(session, request.base)
    _check_gate(session, request)
    _check_data(skill)
    _check_policy(request)
    _check_suites(skill, request)
    if request.source is not None:
        _check_source(get_base(session, request.source))
    if request.start_from == "current":
        check_start_state(session, base)
    return skill, base


def check_start_state(session: Session, base: BaseCheckpoint) -> ModelState | None:
    """The state a ``start_from=current`` job trains on top of (None: the plain base). Refused
    with one line when that state picks packs per input (a learned or tag router): the new
    pack would be trained with every pack in the weights and then served without them, and
    such fine-tunes scored 0.00 on their own skill where the same jobs from the base learned."""
    head = current_head(session, base.id)
    state = get_state(session, head.state_id) if head is not None else None
    if state is not None and state.members and state.router != "none":
        raise ConfigError(
            f"Base {base.name!r} is at state {state.id}, which routes one pack per input "
            f"(router {state.router!r}); a skill trained on top of all its packs would be "
            "served without them. Start from the base (--start-from base, the default), or "
            "make a state that sums its packs (router 'none', e.g. `skillstore state fuse`) "
            "the head first.")
    return state


def resolved(request: LearnRequest) -> LearnRequest:
    """The request as stored: a policy file and a general suite by absolute path, so a worker
    started elsewhere reads the same files."""
    changes = {}
    if Path(request.policy).is_file():
        changes["policy"] = str(Path(request.policy).absolute())
    if request.general_suite:
        changes["general_suite"] = str(Path(request.general_suite).absolute())
    return request.model_copy(update=changes) if changes else request
