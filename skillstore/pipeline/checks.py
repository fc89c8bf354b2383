"""Queue-time checks of a learn request against the catalog and the disk: refuse before queueing."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from ..catalog import get_base, get_skill
from ..catalog.models import BaseCheckpoint, Skill
from ..errors import ConfigError, NotFoundError
from ..evaluation.suites import general_suite, skill_suite
from .request import LearnRequest


def _check_data(skill: Skill) -> None:
    if not skill.data_uri and not skill.data_sha256:
        raise ConfigError(f"Skill {skill.name!r} has no training data; register it with "
                          "`skillstore skill add NAME --data FILE`.")


def _check_source(source: BaseCheckpoint) -> None:
    from ..fingerprint import fingerprint_tokenizer

    if not Path(source.uri).is_dir():
        raise NotFoundError(f"Source model {source.name!r} is not on this machine ({source.uri}); "
                            "register a local checkpoint folder.")
    fingerprint_tokenizer(source.uri)  # NotFoundError naming the folder when it has no tokenizer


def _check_policy(request: LearnRequest) -> None:
    from ..packs import load_policy

    load_policy(request.policy, budget=request.budget)  # a preset or a JSON file, else ConfigError


def _check_suites(skill: Skill, request: LearnRequest) -> None:
    """The evaluate step will resolve these; a job that cannot be judged is not queued."""
    if request.general_suite and not Path(request.general_suite).is_file():
        raise NotFoundError(f"General suite YAML {request.general_suite!r} does not exist; "
                            "pass the path of an lm-eval task YAML.")
    general_suite(request.general_suite, beside=[skill_suite(skill)])


def check_request(session: Session, request: LearnRequest) -> tuple[Skill, BaseCheckpoint]:
    """(skill, base) rows of a request whose every reference resolves; else one-line errors:
    an unknown skill, base or source, a skill without data, a source with no tokenizer, a policy
    that does not parse, a general suite that is not there."""
    skill, base = get_skill(session, request.skill), get_base(session, request.base)
    _check_data(skill)
    _check_policy(request)
    _check_suites(skill, request)
    if request.source is not None:
        _check_source(get_base(session, request.source))
    return skill, base


def resolved(request: LearnRequest) -> LearnRequest:
    """The request as stored: a policy file and a general suite by absolute path, so a worker
    started elsewhere reads the same files."""
    changes = {}
    if Path(request.policy).is_file():
        changes["policy"] = str(Path(request.policy).absolute())
    if request.general_suite:
        changes["general_suite"] = str(Path(request.general_suite).absolute())
    return request.model_copy(update=changes) if changes else request
