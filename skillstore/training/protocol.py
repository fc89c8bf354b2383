"""The trainer contract: what every entry of the trainer registry offers `run_training`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .sft import Progress, TrainResult

if TYPE_CHECKING:  # run.py builds the registry of Trainers; the job type is only named here
    from .run import TrainJob


@runtime_checkable
class Trainer(Protocol):
    """One learning method: trains a loaded model on a job's data, in memory.

    ``train`` changes ``model`` (it may train it in place or return another module) and
    returns it in a TrainResult with JSON-able metrics; it reads its data and settings from
    ``job`` only, reports progress as (stage, fraction) when ``progress`` is given, and
    saves nothing: `run_training` saves the result atomically, or nothing on failure.
    """

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    def train(self, job: TrainJob, model, tok, progress: Progress | None) -> TrainResult: ...
