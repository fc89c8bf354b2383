"""The experiment spec: one YAML file naming a base, a curriculum, the methods and the seeds.

A spec is validated whole before anything is queued: `load_spec` refuses an unknown key, a
bad value or an impossible combination with one ConfigError line naming the key, and
`check_spec` refuses a base, source or skill the catalog lacks. `runs` is the plan: one run
per (method, seed), in the order they would be queued.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import sqlalchemy as sa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy.orm import Session

from ..catalog.models import Skill
from ..curriculum.validate import validate_dataset
from ..errors import ConfigError, DatasetError, NotFoundError
from ..gate.policy import GatePolicy
from ..heldout import DEFAULT_METRIC, METRICS, Wording, split_dataset
from ..packs import TuneObjective, load_policy
from ..training.dpo import DPOConfig
from ..training.sft import SFTConfig

NAME = r"^[a-z][a-z0-9_-]{0,63}$"
Name = Annotated[str, Field(pattern=NAME)]


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Graft(_Settings):
    """GraftLLM: fine-tune, compress into a pack (``policy``, or ``budget`` percent of the dense
    fp16 delta), tune it ``tune_steps`` toward ``tune_objective`` (the rows' answers,
    ``labels``, or its fine-tune's, ``teacher``; `packs.tune`), and route between packs."""

    policy: str = "compact"
    budget: float | None = Field(default=None, gt=0, le=100)
    tune_steps: int = Field(default=0, ge=0)
    tune_objective: TuneObjective = "labels"
    router: Literal["learned", "tag", "none"] = "learned"
    top_k: int = Field(default=1, ge=1)

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        try:
            load_policy(v)  # a preset or a JSON policy file
        except ConfigError as exc:
            raise ValueError(str(exc).rstrip(".")) from None
        return v


class Sequential(_Settings):
    """Full fine-tuning of one model, skill after skill (``naive_ft``), with ``replay`` rows of
    every earlier skill mixed into each stage (``replay``)."""

    replay: int = Field(default=0, ge=0)


class LoRASweep(_Settings):
    """One LoRA trained in sequence (``lora_seq``) or one adapter per skill behind the router
    (``multi_lora``); rank and learning rate are picked from this grid on the validation split
    of the first seed, and the choice is reused for the others."""

    ranks: tuple[Annotated[int, Field(gt=0)], ...] = Field(default=(8, 16), min_length=1)
    lrs: tuple[Annotated[float, Field(gt=0)], ...] = Field(default=(1e-3, 3e-3), min_length=1)


MERGE_SCALES = (0.3, 0.5, 0.7, 1.0, 1.5)


class Merge(_Settings):
    """Task arithmetic, TIES or DARE-TIES over the skills' fine-tunes, at a fixed ``scale``,
    or (None) at the best of ``scales`` on the validation rows after each stage: one scale
    for every sum of several full deltas undoes them all (measured: 0 on every skill at 1)."""

    scale: float | None = Field(default=None, gt=0, le=2)
    scales: tuple[Annotated[float, Field(gt=0, le=2)], ...] = Field(default=MERGE_SCALES,
                                                                    min_length=1)
    density: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _one_way(self):
        if self.scale is not None and self.scales != MERGE_SCALES:
            raise ValueError("scale fixes the merge's scale and scales sweeps it; give one")
        return self

    def grid(self) -> tuple[float, ...]:
        """The scales a run tries: the fixed one, else the sweep's."""
        return (self.scale,) if self.scale is not None else self.scales


class Joint(_Settings):
    """Multi-task training on every skill at once: the upper bound."""


class Methods(_Settings):
    """The methods an experiment compares, each with its settings; a method named with no
    settings (``naive_ft:``) runs with its defaults."""

    graft: Graft | None = None
    naive_ft: Sequential | None = None
    replay: Sequential | None = None
    lora_seq: LoRASweep | None = None
    multi_lora: LoRASweep | None = None
    task_arithmetic: Merge | None = None
    ties: Merge | None = None
    dare_ties: Merge | None = None
    joint: Joint | None = None

    def chosen(self) -> dict[str, _Settings]:
        """method -> settings, for the methods the spec names, in this class's order."""
        return {name: getattr(self, name) or SETTINGS[name]()
                for name in type(self).model_fields if name in self.model_fields_set}


# method -> its settings class, the defaults of a method named with no settings
SETTINGS: dict[str, type[_Settings]] = {
    "graft": Graft, "naive_ft": Sequential, "replay": Sequential, "lora_seq": LoRASweep,
    "multi_lora": LoRASweep, "task_arithmetic": Merge, "ties": Merge, "dare_ties": Merge,
    "joint": Joint,
}
METHODS = tuple(Methods.model_fields)
MERGES = ("task_arithmetic", "ties", "dare_ties")
# Methods that learn LoRA adapters by SFT, so no dpo stage; every other one fine-tunes whole.
ADAPTER_METHODS = ("lora_seq", "multi_lora")


class SkillStage(_Settings):
    """One stage of the curriculum: a registered skill (or ``data``, a JSONL to register it
    from, scored by ``metric``), learned by ``method`` from ``source`` (one or several)."""

    name: Name
    method: Literal["sft", "distill", "dpo"] = "sft"
    source: tuple[Name, ...] = ()
    data: Path | None = None
    metric: str | None = None
    # The held-out test rows of a skill given as data (None: heldout's default size).
    test_size: int | None = Field(default=None, gt=0)

    @field_validator("source", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return (v,) if isinstance(v, str) else v

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, v: str | None) -> str | None:
        if v is not None and v not in METRICS:
            raise ValueError(f"unknown metric {v!r}; valid: {', '.join(METRICS)}")
        return v

    @model_validator(mode="after")
    def _source_fits_method(self):
        if self.method == "sft" and self.source:
            raise ValueError("method sft learns from the skill's own rows and takes no source; "
                             "use distill or dpo, or drop source")
        if self.method != "sft" and not self.source:
            raise ValueError(f"method {self.method} needs a source model")
        for key in ("metric", "test_size"):
            if getattr(self, key) is not None and self.data is None:
                raise ValueError(f"{key} splits a skill registered from data; add data or "
                                 f"drop {key}")
        return self


class ExperimentSpec(_Settings):
    """What `skillstore experiment run` queues: ``methods`` x ``seeds`` runs over ``skills``."""

    name: Name
    base: Name
    sources: tuple[Name, ...] = ()
    skills: tuple[SkillStage, ...] = Field(min_length=1)
    methods: Methods
    seeds: tuple[int, ...] = Field(default=(0,), min_length=1)
    eval_limit: int = Field(default=100, ge=10)
    # The first N training prompts each source answers for a distilled skill (None: all).
    distill_prompts: int | None = Field(default=None, gt=0)
    train: SFTConfig = SFTConfig()
    # DPO after SFT for the skills learned by dpo (its seed is each run's).
    dpo: DPOConfig = DPOConfig()
    gate: GatePolicy = GatePolicy()

    @model_validator(mode="after")
    def _consistent(self):
        names = [s.name for s in self.skills]
        if len(set(names)) != len(names):
            twice = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"skill {twice!r} is listed twice; a curriculum learns each once")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds repeat; each seed is one run per method")
        for stage in self.skills:
            missing = [s for s in stage.source if s not in self.sources]
            if missing:
                raise ValueError(f"skill {stage.name!r} names source {missing[0]!r}, which is "
                                 "not in sources; add it there")
        # (compared with the defaults, not by the keys given: a stored spec holds them all)
        if self.dpo != DPOConfig() and not any(s.method == "dpo" for s in self.skills):
            raise ValueError("dpo configures the preference stage of skills learned by dpo, "
                             "and no skill is; drop dpo or learn a skill by dpo")
        chosen = self.methods.chosen()
        if not chosen:
            raise ValueError(f"methods names none; name at least one of {', '.join(METHODS)}")
        preferred = next((s.name for s in self.skills if s.method == "dpo"), None)
        adapters = [m for m in chosen if m in ADAPTER_METHODS]
        if preferred is not None and adapters:
            raise ValueError(f"skill {preferred!r} learns by dpo, which {adapters[0]} cannot "
                             "(it trains LoRA adapters by SFT only); drop it from methods, or "
                             f"learn {preferred!r} by distill")
        merges = [m for m in chosen if m in MERGES]
        if merges and len(self.skills) < 2:
            raise ValueError(f"method {merges[0]} merges fine-tunes of several skills; the "
                             "curriculum has one")
        if getattr(chosen.get("task_arithmetic"), "density", None) is not None:
            raise ValueError("task_arithmetic sums whole deltas and takes no density; use "
                             "ties or dare_ties")
        if getattr(chosen.get("replay"), "replay", 1) == 0:
            raise ValueError("method replay needs replay > 0 rows per earlier skill (replay: 0 "
                             "is naive_ft)")
        return self

    def settings(self, method: str) -> _Settings:
        return self.methods.chosen()[method]

    def as_json(self) -> dict:
        """The whole spec as JSON, defaults filled in, methods only those it names: what the
        catalog stores, and what `parse_spec` reads back into an equal spec."""
        doc = self.model_dump(mode="json")
        doc["methods"] = {m: s.model_dump(mode="json") for m, s in self.methods.chosen().items()}
        return doc

    def runs(self) -> list[tuple[str, int]]:
        """(method, seed) of every run, methods in ``METHODS`` order, seeds within each."""
        return [(m, seed) for m in self.methods.chosen() for seed in self.seeds]


def _message(error: dict) -> str:
    loc = error["loc"]
    if error["type"] == "extra_forbidden" and len(loc) == 2 and loc[0] == "methods":
        return f"unknown method {loc[1]!r}; valid: {', '.join(METHODS)}"
    if error["type"] == "extra_forbidden":
        return "no such key (see docs/experiments.md)"
    return error["msg"].removeprefix("Value error, ")


def parse_spec(doc: Any, where: str = "experiment spec") -> ExperimentSpec:
    """Validate a spec document; the first problem is one ConfigError line naming its key."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a mapping of keys (name, base, skills, methods, "
                          f"seeds, ...), got {type(doc).__name__}.")
    try:
        return ExperimentSpec.model_validate(doc)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{where}: {key + ': ' if key else ''}{_message(first)}.") from None


#: Specs that ship with skillstore, named instead of a path (`skillstore experiment run hetero`).
BUILTIN = Path(__file__).with_name("specs")


def builtin_specs() -> list[str]:
    return sorted(p.stem for p in BUILTIN.glob("*.yaml"))


def load_spec(path: str | Path) -> ExperimentSpec:
    """The spec in a YAML file, or a built-in spec by name (a file of that name wins); one
    ConfigError line when it is missing, not YAML, or invalid."""
    path = Path(path)
    if not path.is_file() and str(path) in builtin_specs():
        path = BUILTIN / f"{path}.yaml"
    if not path.is_file():
        raise NotFoundError(f"Experiment spec {str(path)!r} does not exist; give a YAML file "
                            f"or a built-in spec ({', '.join(builtin_specs())}).")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"Experiment spec {str(path)!r} is not YAML{at}; fix the file.") from None
    spec = parse_spec(doc, f"Experiment spec {str(path)!r}")
    rebased = [s.model_copy(update={"data": (path.parent / s.data).resolve()})
               if s.data is not None and not s.data.is_absolute() else s for s in spec.skills]
    return spec.model_copy(update={"skills": tuple(rebased)})


def check_spec(session: Session, spec: ExperimentSpec) -> None:
    """Refuse, before anything is queued, a spec whose base, sources or skills the catalog
    lacks. A skill given as ``data`` is registered when the spec is queued
    (`experiments.queue.register_data_skills`), so its file must exist, hold valid rows that
    split into a held-out test half scored by its ``metric``, and, when a skill of that name is
    registered already, be the very file it was registered from."""
    from ..catalog import get_base, get_skill

    get_base(session, spec.base)
    for source in spec.sources:
        get_base(session, source)
    for stage in spec.skills:
        if stage.data is None:
            get_skill(session, stage.name)
        else:
            check_data_stage(session, stage)


# A data stage's fixes name the spec's keys, not `skill add`'s flags.
SPEC_KEYS = Wording(metric="metric", test_size="test_size",
                    own_task="register it with your own task by `skillstore skill add --suite`")


def check_data_stage(session: Session, stage: SkillStage) -> None:
    """A data stage's file is whole and splittable (DatasetError names the file and line), and
    a registered skill of its name came from the same file with the same metric."""
    if not stage.data.is_file():
        raise NotFoundError(f"Experiment skill {stage.name!r}: data file "
                            f"{str(stage.data)!r} does not exist.")
    try:
        digest = validate_dataset(stage.data).sha256
        registered = session.scalar(sa.select(Skill).where(Skill.name == stage.name))
        if registered is None:
            split_dataset(stage.data, metric=stage.metric or DEFAULT_METRIC,
                          test_size=stage.test_size, say=SPEC_KEYS)
            return
    except DatasetError as exc:
        raise DatasetError(f"Experiment skill {stage.name!r}: {exc}") from None
    if registered.data_sha256 != digest:
        raise ConfigError(f"Experiment skill {stage.name!r} is registered already from other "
                          f"data than {str(stage.data)!r}; rename the skill in the spec, or "
                          "drop its data to learn the registered one.")
    split = registered.heldout or {}
    for key, wanted, had in (("metric", stage.metric, split.get("metric")),
                             ("test_size", stage.test_size, split.get("n_test"))):
        if wanted is not None and had != wanted:
            raise ConfigError(f"Experiment skill {stage.name!r} is registered already with "
                              f"{key} {had}, not {wanted}; drop it from the stage or rename "
                              "the skill.")
