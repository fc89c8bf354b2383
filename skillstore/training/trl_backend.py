"""The TRL backend's loops: SFTTrainer and DPOTrainer on accelerate, under the built-in contract.

Imported only when a job runs on TRL (see `backends.TRL`): TRL, datasets and transformers'
Trainer take seconds to import and are not needed by the built-in loop.
"""

from __future__ import annotations

import math
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import datasets as datasets_bars
import torch
import trl
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from ..errors import DatasetError, TrainingError
from .data import STOP, batch_plan, encode_example, encode_rows, pad_id_of
from .dpo import DPOConfig
from .loss import answer_loss, plain_head
from .sft import EarlyStopping, Progress, SFTConfig, TrainResult, lr_lambda, mean_loss

# What SFTTrainer and DPOTrainer attach to the model they train: TRL's fused LM-head forward,
# accelerate's output-casting wrapper and the trainer's tags. Taken off again afterwards, so
# the caller gets back a plain model (a deep copy, generation and saving behave as before).
_PATCHED = ("forward", "_original_forward", "_is_accelerate_prepared", "model_tags")


class ContractCallback(TrainerCallback):
    """The built-in loop's contract inside a transformers Trainer: progress (and so cancellation)
    after every optimiser step, a NaN loss raises, the loss history, and the built-in loop's
    `sft.EarlyStopping` on the validation loss (best weights kept in CPU memory).
    ``validate(model)`` is the validation loss; for SFT it is the built-in loop's own
    `sft.mean_loss` (token-weighted over the validation rows), so both backends stop and keep
    weights by the same figure and the same rule. Without ``stopping`` nothing is validated."""

    def __init__(self, what: str, progress: Progress | None, *, eval_every: int,
                 validate: Callable[[torch.nn.Module], float] | None = None,
                 stopping: EarlyStopping | None = None):
        self.what, self.progress = what, progress
        self.eval_every, self.validate, self.stopping = eval_every, validate, stopping
        self.losses: list[float] = []
        self.history: list[dict] = []
        self._window: list[float] = []

    def _due(self, state) -> bool:
        return state.global_step % self.eval_every == 0 or state.global_step >= state.max_steps

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress:  # raises JobCancelled when the job was cancelled: training ends here
            self.progress("train", min(1.0, state.global_step / state.max_steps))
        return control

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        # The step's loss is logged after on_step_end: validating here keeps the history's
        # order (the window of train losses, then the validation that closes it).
        if not logs or "loss" not in logs:  # end-of-training logs
            return control
        loss = float(logs["loss"])
        if not math.isfinite(loss):
            raise TrainingError(f"{self.what} loss became {loss} at step {state.global_step}; "
                                "nothing was saved. Lower the learning rate or check the data "
                                "for empty answers.")
        self.losses.append(loss)
        self._window.append(loss)
        if not self._due(state):
            return control
        window, self._window = self._window, []
        entry = {"step": state.global_step, "train_loss": sum(window) / len(window)}
        if self.validate is not None and self.stopping is not None:
            entry["val_loss"] = self.validate(model)
            if self.stopping.update(entry["val_loss"], state.global_step, model):
                control.should_training_stop = True
        self.history.append(entry)
        return control


class PlannedSFTTrainer(trl.SFTTrainer):
    """SFTTrainer on the built-in loop's batches and schedule: in one process its training
    batches come from ``plan`` (`data.batch_plan`), so the same seed gives both backends the
    same rows at each step, its learning rate follows `sft.lr_lambda`, and its loss is
    `loss.answer_loss`, the built-in loop's (answer tokens only, scored a chunk at a time).
    What differs between the backends is then the loop, not the draw or the loss. Under
    several processes (accelerate launch) the Trainer's own sharded sampler and TRL's own loss
    are kept: the loss must run through the DDP wrapper's forward for gradients to sync."""

    def __init__(self, *args, plan: list[list[int]], min_lr_frac: float, **kwargs):
        self.plan, self.min_lr_frac = plan, min_lr_frac
        super().__init__(*args, **kwargs)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            warmup = self.args.get_warmup_steps(num_training_steps)
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or self.optimizer,
                partial(lr_lambda, total=num_training_steps, warmup=warmup,
                        min_frac=self.min_lr_frac))
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.args.world_size > 1 or return_outputs or plain_head(model) is None:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        return answer_loss(model, inputs)

    def get_train_dataloader(self) -> DataLoader:
        if self.args.world_size > 1:
            return super().get_train_dataloader()
        dataset = self._remove_unused_columns(self.train_dataset, description="training")
        return self.accelerator.prepare(DataLoader(
            dataset, batch_sampler=self.plan, collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers))


def _checkpointing_field() -> str:
    """transformers 5 renamed `gradient_checkpointing` to `activation_checkpointing`."""
    new = "activation_checkpointing"
    return new if new in trl.SFTConfig.__dataclass_fields__ else "gradient_checkpointing"


def _common_args(out_dir: str, model, *, lr: float, max_steps: int, batch_size: int,
                 warmup_frac: float, min_lr_frac: float, grad_clip: float, seed: int,
                 gradient_checkpointing: bool) -> dict:
    """TrainingArguments shared by both stages: the built-in loop's schedule and seed, a log
    line per step (the NaN check and the history read it), nothing saved, nothing reported."""
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    return {
        "output_dir": out_dir, "max_steps": max_steps, "per_device_train_batch_size": batch_size,
        "learning_rate": lr, "max_grad_norm": grad_clip,
        "warmup_steps": max(1, int(warmup_frac * max_steps)),
        "lr_scheduler_type": "cosine_with_min_lr",
        "lr_scheduler_kwargs": {"min_lr_rate": min_lr_frac},
        "seed": seed, "data_seed": seed, "use_cpu": not cuda,
        "bf16": cuda and torch.cuda.is_bf16_supported(),
        _checkpointing_field(): gradient_checkpointing,
        "logging_steps": 1, "logging_nan_inf_filter": False, "eval_strategy": "no",
        "save_strategy": "no", "report_to": "none", "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }


@contextmanager
def _quiet() -> Iterator[None]:
    """No progress bars from datasets' map and no warnings about names transformers 6 drops."""
    bars_were_off = datasets_bars.are_progress_bars_disabled()
    datasets_bars.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*will be removed in v6",
                                    category=FutureWarning)
            yield
    finally:
        if not bars_were_off:
            datasets_bars.enable_progress_bars()


def _run(trainer, callback: ContractCallback, model) -> None:
    """Train, and leave ``model`` (and a PEFT wrapper's base) as plain as it was given."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    try:
        trainer.train()
    finally:
        for m in {id(model): model, id(base := _base(model)): base}.values():
            if "_require_grads_hook" in m.__dict__:
                m.disable_input_require_grads()
            for attr in _PATCHED:
                m.__dict__.pop(attr, None)
        model.eval()


def _base(model):
    get = getattr(model, "get_base_model", None)
    return get() if get is not None else model


def trl_sft(model, tokenizer, train_rows: list[dict], val_rows: list[dict] | None,
            cfg: SFTConfig, progress: Progress | None, *,
            gradient_checkpointing: bool = False) -> TrainResult:
    """`train_sft`'s contract on TRL's SFTTrainer: the rows are tokenised by `training.data`
    (prompt and answer apart, the loss on answer tokens only) and drawn in `data.batch_plan`'s
    order, so both backends learn the same tokens in the same batches; TRL takes the
    pre-tokenised input_ids and labels as they are."""
    train = encode_rows(tokenizer, train_rows, cfg.max_length, "SFT training data")
    val = (encode_rows(tokenizer, val_rows, cfg.max_length, "SFT validation data")
           if val_rows else [])
    if not any(p.requires_grad for p in model.parameters()):
        raise TrainingError("The model has no trainable parameters; unfreeze it or use the "
                            "LoRA trainer.")

    def dataset(examples):
        return Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels}
                                  for e in examples])

    pad = pad_id_of(tokenizer)
    stopping = EarlyStopping(cfg, on_cpu=True)
    callback = ContractCallback(
        "SFT", progress, eval_every=cfg.eval_every,
        validate=(lambda m: mean_loss(m, val, pad, cfg.batch_size * 2)) if val else None,
        stopping=stopping)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="skillstore-trl-") as scratch, _quiet():
        args = trl.SFTConfig(
            **_common_args(scratch, model, lr=cfg.lr, max_steps=cfg.max_steps,
                           batch_size=cfg.batch_size, warmup_frac=cfg.warmup_frac,
                           min_lr_frac=cfg.min_lr_frac, grad_clip=cfg.grad_clip, seed=cfg.seed,
                           gradient_checkpointing=gradient_checkpointing),
            weight_decay=cfg.weight_decay,
            max_length=None,  # encode_rows refused any row over cfg.max_length already
            packing=False)
        trainer = PlannedSFTTrainer(
            model=model, args=args, train_dataset=dataset(train),
            processing_class=tokenizer,
            callbacks=[callback], min_lr_frac=cfg.min_lr_frac,
            plan=batch_plan(len(train), cfg.batch_size, cfg.max_steps, cfg.seed))
        _run(trainer, callback, model)
        steps = trainer.state.global_step
    stopping.restore(model)
    metrics = {"steps": steps, "seconds": time.perf_counter() - t0,
               "stopped_early": stopping.reason is not None, "stop_reason": stopping.reason,
               "best_val_loss": stopping.best_val_loss,
               "n_train": len(train), "n_val": len(val), "history": callback.history,
               "backend": "trl", "trl_version": trl.__version__, "seed": cfg.seed,
               "config": cfg.model_dump()}
    return TrainResult(model, metrics)


def trl_dpo(model, reference, tokenizer, pairs: list[dict], cfg: DPOConfig,
            progress: Progress | None, *, gradient_checkpointing: bool = False) -> TrainResult:
    """`train_dpo`'s contract on TRL's DPOTrainer (sigmoid loss, ``reference`` frozen).

    DPOTrainer tokenises text itself: chosen and rejected are the answer plus the stop string,
    as the built-in loop learns them, and TRL appends the tokenizer's EOS token. A row over
    ``max_length`` is refused as the built-in loop refuses it, not truncated.
    """
    if not pairs:
        raise DatasetError("DPO got no preference pairs; give at least one "
                           "prompt/chosen/rejected row.")
    for p in pairs:
        for side in ("chosen", "rejected"):
            encode_example(tokenizer, p["prompt"], p[side], cfg.max_length)
    rows = [{"prompt": p["prompt"], "chosen": p["chosen"] + STOP,
             "rejected": p["rejected"] + STOP} for p in pairs]
    callback = ContractCallback("DPO", progress, eval_every=cfg.max_steps)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="skillstore-trl-") as scratch, _quiet():
        args = trl.DPOConfig(
            **_common_args(scratch, model, lr=cfg.lr, max_steps=cfg.max_steps,
                           batch_size=cfg.batch_size, warmup_frac=cfg.warmup_frac,
                           min_lr_frac=0.1, grad_clip=cfg.grad_clip, seed=cfg.seed,
                           gradient_checkpointing=gradient_checkpointing),
            beta=cfg.beta, loss_type=["sigmoid"], weight_decay=0.0,
            max_length=cfg.max_length + 1)  # room for the EOS token TRL appends
        trainer = trl.DPOTrainer(model=model, ref_model=reference, args=args,
                                 train_dataset=Dataset.from_list(rows),
                                 processing_class=tokenizer, callbacks=[callback])
        _run(trainer, callback, model)
        steps = trainer.state.global_step
    losses = callback.losses or [math.nan]
    tail = losses[-10:]
    return TrainResult(model, {"steps": steps, "seconds": time.perf_counter() - t0,
                               "first_loss": losses[0], "final_loss": sum(tail) / len(tail),
                               "n_pairs": len(pairs), "initial_loss_expected": math.log(2),
                               "backend": "trl", "trl_version": trl.__version__,
                               "seed": cfg.seed, "config": cfg.model_dump()})
