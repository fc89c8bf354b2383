"""The memory plan: peak training memory, estimated before a run starts and measured as it runs."""

from __future__ import annotations

import ctypes
import json
import os
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch

from ..errors import ConfigError
from .loss import chunk_tokens, plain_head_config

GIB = 2 ** 30
#: What a run adds besides the terms below (loading code, the tokenizer, the allocator's slack;
#: for TRL also its lazily imported modules, datasets and Trainer), fitted on the CPU in fresh
#: processes (docs/learning.md, "Memory plan").
OVERHEAD_BYTES = {"builtin": 80 * 2 ** 20, "trl": 150 * 2 ** 20}
#: fp32 vocabulary-sized rows held per scored token at the peak, fitted the same way: the
#: logits, their log-softmax and gradients under `loss.answer_loss` (either backend in one
#: process); TRL's own LM head (several processes) scores chunks of up to 32,768 tokens and
#: keeps entropy and top-1 statistics beside the log-probabilities.
LOGIT_COPIES = {"builtin": 4, "trl": 8}
TRL_LOGIT_CHUNK = 32768
#: AdamW keeps two moments per trainable parameter.
ADAM_STATES = 2
_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a checkpoint, read from its config and safetensors headers only."""

    params: int
    param_bytes: int  # bytes per parameter as stored, so as loaded (dtype "auto")
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    eager_attention: bool = False  # eager attention keeps every (seq x seq) score matrix
    plain_head: bool = False  # `loss.answer_loss` scores answer tokens a chunk at a time
    tied_embeddings: bool = False  # the input embedding is the LM head's weight

    @classmethod
    def of_folder(cls, folder: str | Path) -> ModelShape:
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(str(folder), local_files_only=True).get_text_config()
        hidden = cfg.hidden_size
        heads = cfg.num_attention_heads
        numel, nbytes = _safetensors_size(Path(folder))
        return cls(params=numel, param_bytes=max(1, round(nbytes / max(1, numel))),
                   hidden=hidden, layers=cfg.num_hidden_layers, heads=heads,
                   kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
                   intermediate=(getattr(cfg, "intermediate_size", None)
                                 or getattr(cfg, "n_inner", None) or 4 * hidden),
                   vocab=cfg.vocab_size,
                   eager_attention=getattr(cfg, "_attn_implementation", None) == "eager",
                   plain_head=plain_head_config(cfg),
                   tied_embeddings=bool(getattr(cfg, "tie_word_embeddings", False)))

    @property
    def weight_bytes(self) -> int:
        return self.params * self.param_bytes


def _safetensors_size(folder: Path) -> tuple[int, int]:
    """(parameters, bytes) over the folder's safetensors files, from their JSON headers."""
    numel = nbytes = 0
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{str(folder)!r} has no *.safetensors weights to plan memory for; "
                          "save the model with safe_serialization=True.")
    for path in files:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        for name, info in header.items():
            if name == "__metadata__":
                continue
            n = 1
            for d in info["shape"]:
                n *= d
            numel += n
            nbytes += n * _DTYPE_BYTES.get(info["dtype"], 4)
    return numel, nbytes


@dataclass(frozen=True)
class MemoryPlan:
    """Estimated peak bytes of one training stage on one device, by part."""

    device: str
    backend: str
    stage: str
    batch_size: int
    seq_len: int
    gradient_checkpointing: bool
    parts: dict[str, int] = field(default_factory=dict)
    scored_len: int | None = None  # tokens per sequence the loss scores, where not all

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def as_json(self) -> dict:
        return {"device": self.device, "backend": self.backend, "stage": self.stage,
                "batch_size": self.batch_size, "seq_len": self.seq_len,
                "gradient_checkpointing": self.gradient_checkpointing,
                "scored_len": self.scored_len, "total_bytes": self.total,
                "parts_bytes": dict(self.parts)}

    def summary(self) -> str:
        big = sorted(self.parts.items(), key=lambda kv: -kv[1])[:3]
        return f"{gib(self.total)} ({', '.join(f'{k} {gib(v)}' for k, v in big)})"


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 100 else f"{n / 2 ** 20:.1f} MiB"


def estimate(shape: ModelShape, *, device: str, backend: str, stage: str = "sft",
             batch_size: int, seq_len: int, gradient_checkpointing: bool = False,
             keep_best: bool = False, reference: bool = False, other_weights: int = 0,
             mixed_bf16: bool = False, scored_len: int | None = None,
             processes: int = 1) -> MemoryPlan:
    """Peak bytes of a full fine-tune: weights, gradients, AdamW state, activations, logits.

    ``batch_size`` counts sequences per forward pass (a DPO step runs chosen and rejected:
    twice its batch). Activations are what a Llama-style decoder layer keeps for the backward
    pass, fitted as 16 hidden-sized, 3 key/value-sized and 4 MLP-sized tensors per token
    (the norms' fp32 intermediates, q/k/v and their rotations, the attention output, the MLP;
    the (seq x seq) scores only with eager attention); with gradient checkpointing each layer
    keeps its input and one layer is recomputed at a time. Logits: LOGIT_COPIES fp32 rows of
    the vocabulary per scored token. SFT in one process on a model with a plain LM head scores
    only the ``scored_len`` answer tokens of each sequence, at most `loss.chunk_tokens` at a
    time (`loss.answer_loss`); otherwise every token is scored (TRL's own head under several
    ``processes``: up to TRL_LOGIT_CHUNK at a time). On the CPU a fixed overhead is added (the
    process's, not the tensors'). ``keep_best`` adds the copy of the best weights early
    stopping holds on the device; ``reference`` the frozen DPO reference; ``other_weights``
    another model loaded beside (a distillation source). With tied embeddings the backward
    pass holds the embedding's gradient beside the head's before adding them: one more
    vocabulary x hidden tensor.
    """
    act_bytes = 2 if mixed_bf16 else shape.param_bytes
    tokens = batch_size * seq_len
    h, kv = shape.hidden, shape.kv_heads * (shape.hidden // shape.heads)
    per_token = 16 * h + 3 * kv + 4 * shape.intermediate
    if shape.eager_attention:
        per_token += 2 * shape.heads * seq_len
    layer = tokens * per_token * act_bytes
    if gradient_checkpointing:
        activations = shape.layers * tokens * h * act_bytes + layer
    else:
        activations = shape.layers * layer
    answers_only = stage == "sft" and shape.plain_head and (backend == "builtin" or processes == 1)
    if answers_only:
        scored = min(batch_size * (scored_len or seq_len), chunk_tokens(shape.vocab))
        copies = LOGIT_COPIES["builtin"]
    else:
        scored = min(tokens, TRL_LOGIT_CHUNK) if backend == "trl" else tokens
        copies = LOGIT_COPIES.get(backend, LOGIT_COPIES["trl"])
    logits = copies * scored * shape.vocab * 4
    # bf16 autocast changes the activations only: weights, gradients and AdamW's moments stay
    # in the dtype the checkpoint was loaded in.
    parts = {"weights": shape.weight_bytes, "gradients": shape.weight_bytes,
             "optimizer": ADAM_STATES * shape.weight_bytes,
             "activations": activations + tokens * h * act_bytes, "logits": logits}
    if device.startswith("cpu"):  # process memory; on CUDA the allocator holds tensors only
        parts["overhead"] = OVERHEAD_BYTES.get(backend, OVERHEAD_BYTES["trl"])
    if shape.tied_embeddings:  # the head's and the embedding's gradients meet as two tensors
        parts["tied_gradient"] = shape.vocab * h * shape.param_bytes
    if keep_best:
        parts["best_weights"] = shape.weight_bytes
    if reference:
        parts["reference"] = shape.weight_bytes
    if other_weights:
        parts["source"] = other_weights
    return MemoryPlan(device=device, backend=backend, stage=stage, batch_size=batch_size,
                      seq_len=seq_len, gradient_checkpointing=gradient_checkpointing,
                      parts=parts, scored_len=scored_len if answers_only else None)


def available_bytes(device: torch.device | str) -> int:
    """Free memory on ``device``: CUDA's free bytes, else the host's available memory (within
    the container's cgroup limit, where there is one)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    free = psutil.virtual_memory().available
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            cap, used = Path(limit).read_text().strip(), Path(usage).read_text().strip()
        except OSError:
            continue
        if cap.isdigit() and used.isdigit() and int(cap) < 2 ** 60:
            free = min(free, int(cap) - int(used))
        break
    return int(free)


def refuse_unless_fits(plan: MemoryPlan, available: int, *, with_checkpointing: MemoryPlan,
                       fitting_batch: int | None, what: str) -> None:
    """One ConfigError line when ``plan`` needs more than ``available``, naming what to change:
    gradient checkpointing when it would fit with it, else the largest batch size that fits,
    else a device with more memory (or sharding across GPUs)."""
    if plan.total <= available:
        return
    if not plan.gradient_checkpointing and with_checkpointing.total <= available:
        fix = ("turn on gradient checkpointing (learn --gradient-checkpointing), which needs "
               f"{gib(with_checkpointing.total)}")
    elif fitting_batch:
        fix = f"lower the batch size to {fitting_batch} (learn --batch-size {fitting_batch})"
        if not plan.gradient_checkpointing:
            fix += " and turn on --gradient-checkpointing"
    else:
        static = sum(v for k, v in plan.parts.items()
                     if k not in ("activations", "logits", "overhead"))
        fix = (f"the weights, gradients and optimiser state alone need {gib(static)} at any "
               "batch size: use a device with more memory (a multi-GPU worker's DDP, "
               "SKILLSTORE_ACCELERATE_CONFIG, keeps all of it on every GPU; sharded FSDP "
               "training is not supported yet)")
    raise ConfigError(f"{what} needs about {plan.summary()} on {plan.device} with the "
                      f"{plan.backend} backend at batch {plan.batch_size} x {plan.seq_len} "
                      f"tokens, but {gib(available)} is free; {fix}.")


def fitting_batch_size(plan_at, batch_size: int, available: int) -> int | None:
    """The largest batch size under ``batch_size`` whose plan (``plan_at(b)``) fits, or None."""
    lo, hi, best = 1, batch_size - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if plan_at(mid).total <= available:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


class PeakMemory:
    """Measures the peak memory a block adds on a device: torch's allocator peak on CUDA, the
    process's peak RSS on the CPU (Linux's VmHWM, reset on entry through /proc/self/clear_refs;
    where that is not allowed, RSS sampled every 5 ms), less the RSS the process held as the
    block began (`before`). The process's own peak is `before` plus the measured bytes, and
    its estimate `before` plus the plan's total."""

    def __init__(self, device: torch.device | str):
        self.device = torch.device(device)
        self.bytes: int | None = None
        self.method = ""
        self._base = 0
        self._stop: threading.Event | None = None
        self._sampled = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base, self.method = torch.cuda.memory_allocated(self.device), "cuda allocator"
            return self
        _trim()
        self._base = _rss()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "peak RSS (VmHWM)"
        except OSError:
            self.method = "sampled RSS"
            self._stop = threading.Event()
            self._sampled = self._base
            threading.Thread(target=self._sample, daemon=True).start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._sampled = max(self._sampled, _rss())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self._stop is not None:
            self._stop.set()
            peak = max(self._sampled, _rss())
        else:
            peak = _hwm()
        self.bytes = max(0, peak - self._base)

    @property
    def before(self) -> int | None:
        """The process's RSS as the block began (CPU only): what the peak stands on, and what
        the plan leaves out, since the host's available memory already excludes it."""
        return None if self.device.type == "cuda" else self._base

    def as_json(self) -> dict:
        return {"measured_peak_bytes": self.bytes, "measured_by": self.method,
                "process_before_bytes": self.before}


def _trim() -> None:
    """Hand the heap's free pages back to the OS (glibc), so that memory freed by earlier work
    in this process is not silently reused and hidden from the RSS peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss() -> int:
    return psutil.Process(os.getpid()).memory_info().rss


def _hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return _rss()
