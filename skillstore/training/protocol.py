"""The trainer contracts: what a trainer offers `run_training`, what a backend offers a trainer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .sft import Progress, SFTConfig, TrainResult

if TYPE_CHECKING:  # run.py builds the registry of Trainers; the job type is only named here
    from .dpo import DPOConfig
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


@runtime_checkable
class Backend(Protocol):
    """One optimisation loop that every method's stages run on: SFT and DPO, in memory.

    A method (sft, distill, dpo, lora) decides *what* is learned from which rows; a backend
    decides *how* the steps run. Both stages take prompt/answer (or prompt/chosen/rejected)
    rows, tokenise them with `training.data` (the loss on answer tokens only), honour the
    config's seed, steps, schedule and early stopping, call ``progress("train", fraction)``
    after every optimiser step (a raise there, such as a cancelled job, ends training and
    propagates), and return the trained model, of the type it was given, with JSON-able metrics
    that name the backend. They save nothing.
    """

    @property
    def name(self) -> str: ...

    @property
    def description(self) -> str: ...

    gradient_checkpointing: bool

    def missing(self) -> str | None:
        """Why this backend cannot run in this environment (a library not installed), or None."""
        ...

    def sft(self, model, tok, train_rows: list[dict], val_rows: list[dict] | None,
            config: SFTConfig, progress: Progress | None) -> TrainResult: ...

    def dpo(self, model, reference, tok, pairs: list[dict], config: DPOConfig,
            progress: Progress | None) -> TrainResult: ...
