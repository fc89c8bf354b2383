"""The tiny model zoo: a char-level Llama target and a BPE GPT-2 source, cached by recipe."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..curriculum.build import Curriculum, load_curriculum, write_curriculum
from ..curriculum.skills import CURRICULUM_VERSION
from ..curriculum.validate import load_rows
from ..errors import TrainingError
from ..fingerprint import fingerprint_checkpoint
from ..models import pick_device
from ..settings import get_settings
from ..training.sft import SFTConfig, train_sft
from .tokenizers import bpe_tokenizer, char_tokenizer

Progress = Callable[[str, float], None]
#: Bump when the builder's code changes what a recipe produces.
ZOO_FORMAT = 2  # 2: the source trains in its own process, on its share of the threads
MANIFEST = "zoo.json"


class ModelSpec(BaseModel):
    """Size of one tiny model and how long it is trained while the zoo is built."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden: int = Field(default=128, gt=0)
    layers: int = Field(default=2, gt=0)
    heads: int = Field(default=4, gt=0)
    intermediate: int = Field(default=384, gt=0)
    max_positions: int = Field(default=64, gt=8)
    train: SFTConfig = SFTConfig()


class ZooRecipe(BaseModel):
    """Everything that determines the zoo's bytes; its hash names the cache folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 0
    # 8,000 distinct rows per open-ended skill (addition has 8,100 prompts in all): the sweep in
    # docs/learning.md took sort past 95% only with 8,000 rows at batch 64-128.
    n_train: int = Field(default=8000, gt=0)
    n_eval: int = Field(default=200, gt=0)
    # Two layers at width 128 learn the copy pattern fastest per CPU second of the sizes tried.
    # At lr 5e-3, batch 32 the target copied 27% of the general suite's strings after 1,000
    # steps (validation loss 0.40); at 3e-3, batch 64 it copies 97% and stops at the SFT
    # stop_loss after about 400 steps (docs/learning.md, "Session 4").
    target: ModelSpec = ModelSpec(train=SFTConfig(lr=3e-3, max_steps=1000, batch_size=64,
                                                  eval_every=100, patience=5))
    # The source trains beside the target, so it may take the zoo's time budget: at lr 5e-3,
    # batch 32, 1,200 steps it answered 1-6% of sort, add and reverse (nothing to distil); at
    # 3e-3, batch 64, 1,500 steps it answers 0.56, 0.53 and 0.84.
    source: ModelSpec = ModelSpec(train=SFTConfig(lr=3e-3, max_steps=1500, batch_size=64,
                                                  eval_every=100, patience=5))
    bpe_vocab: int = Field(default=320, gt=260)

    def digest(self) -> str:
        # The curriculum's version counts: its rows are what both models train on.
        blob = json.dumps({"format": ZOO_FORMAT, "curriculum": CURRICULUM_VERSION,
                           **self.model_dump()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ZooPaths:
    """Where a built zoo lives: target model, source model(s) and the curriculum."""

    root: Path
    target: Path
    sources: dict[str, Path]
    curriculum: Path

    def load_curriculum(self) -> Curriculum:
        return load_curriculum(self.curriculum)

    def to_json(self) -> dict:
        return {"root": str(self.root), "target": str(self.target),
                "sources": {k: str(v) for k, v in self.sources.items()},
                "curriculum": str(self.curriculum),
                "tasks_dir": str(self.curriculum / "tasks")}


def _paths(root: Path) -> ZooPaths:
    return ZooPaths(root, root / "target", {"gpt2": root / "source-gpt2"}, root / "curriculum")


def _target_model(spec: ModelSpec, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden, num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads, num_key_value_heads=spec.heads,
        intermediate_size=spec.intermediate, max_position_embeddings=spec.max_positions,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg)


def _source_model(spec: ModelSpec, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=len(tokenizer), n_embd=spec.hidden, n_layer=spec.layers, n_head=spec.heads,
        n_inner=spec.intermediate, n_positions=spec.max_positions, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return GPT2LMHeadModel(cfg)


def _rows(cur: Curriculum, names: list[str] | None, split: str, general: bool) -> list[dict]:
    rows: list[dict] = []
    for name, files in cur.skills.items():
        if names is None or name in names:
            rows += load_rows(files.split(split))
    if general:
        rows += load_rows(cur.general.split(split))
    random.Random(f"{split}:{len(rows)}").shuffle(rows)
    return rows


def _train_and_save(model, tokenizer, train, val, spec: ModelSpec, out: Path, stage: str,
                    progress: Progress | None) -> dict:
    import torch

    model.to(pick_device())
    sub = (lambda s, f: progress(stage, f)) if progress else None
    result = train_sft(model, tokenizer, train, val, spec.train, sub)
    model.to(torch.device("cpu"))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {k: v for k, v in result.metrics.items() if k != "history"}


def build_source(recipe: ZooRecipe, paths: ZooPaths, progress: Progress | None = None) -> dict:
    """Train the GPT-2 source on every curriculum skill, with a BPE fitted to that text."""
    import torch

    cur = paths.load_curriculum()
    train_all = _rows(cur, None, "train", general=True)
    bpe = bpe_tokenizer((r["prompt"] + " " + r["answer"] + "\n" for r in train_all),
                        recipe.bpe_vocab, recipe.source.max_positions)
    torch.manual_seed(recipe.seed + 1)
    source = _source_model(recipe.source, bpe)
    return _train_and_save(source, bpe, train_all, _rows(cur, None, "validation", general=False),
                           recipe.source, paths.sources["gpt2"], "train-source", progress)


@contextmanager
def _threads(n: int | None):
    """Run the block with ``n`` torch intra-op threads (unchanged when ``n`` is None)."""
    import torch

    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _SourceBuild:
    """The source's build in a child process (``python -m skillstore.zoo.source_worker``),
    with the CPU threads split between the two.

    A plain subprocess, not multiprocessing: a spawned child would re-run the caller's main
    script, which a user's script without a ``__main__`` guard cannot survive. A thread relays
    the child's progress lines as they come. On a single core (or under
    ``SKILLSTORE_ZOO_PARALLEL=0``) the source is built in this process after the target.
    """

    def __init__(self, recipe: ZooRecipe, paths: ZooPaths, progress: Progress | None):
        import torch

        self.recipe, self.paths, self.progress = recipe, paths, progress
        parallel = os.environ.get("SKILLSTORE_ZOO_PARALLEL", "1") != "0"
        cores = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else os.cpu_count() or 1)
        self.parallel = parallel and cores >= 2
        self.threads = max(1, min(torch.get_num_threads(), cores) // 2) if self.parallel else None
        self.proc: subprocess.Popen | None = None
        self.outcome: dict | None = None
        self.stderr: list[str] = []
        self.relay: threading.Thread | None = None

    def __enter__(self) -> _SourceBuild:
        if self.parallel:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "skillstore.zoo.source_worker", str(self.paths.root),
                 str(self.threads)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.proc.stdin.write(self.recipe.model_dump_json())
            self.proc.stdin.close()
            self.relay = threading.Thread(target=self._relay, daemon=True)
            self.relay.start()
            threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr),
                             daemon=True).start()
        return self

    def _relay(self) -> None:
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:  # something wrote to the child's stdout below Python's sys.stdout
                self.stderr.append(line)
                continue
            if not isinstance(msg, dict):
                continue
            if "progress" in msg:
                if self.progress:
                    self.progress(*msg["progress"])
            else:
                self.outcome = msg

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def result(self) -> dict:
        if not self.parallel:
            return build_source(self.recipe, self.paths, self.progress)
        code = self.proc.wait()
        self.relay.join()
        if self.outcome and "metrics" in self.outcome:
            return self.outcome["metrics"]
        why = ((self.outcome or {}).get("error") or "".join(self.stderr[-5:]).strip()
               or f"exit code {code}")
        raise TrainingError(f"The zoo's source build failed: {why}. Nothing was cached; rerun "
                            "`skillstore zoo build`, or set SKILLSTORE_ZOO_PARALLEL=0 to build "
                            "in one process.")


def build_zoo(home: str | Path | None = None, *, recipe: ZooRecipe | None = None,
              seed: int | None = None, progress: Progress | None = None,
              force: bool = False) -> ZooPaths:
    """Build the zoo under ``<home>/zoo/<recipe hash>`` or return the cached one.

    The target is a Llama with a char-level tokenizer, pretrained on the general suite
    (copying and lookups); the source is a GPT-2 with a locally trained BPE, trained on every
    curriculum skill so it can teach them. Same recipe and seed give the same weights.
    """
    import torch

    recipe = recipe or ZooRecipe()
    if seed is not None:
        recipe = recipe.model_copy(update={"seed": seed})
    base = Path(home) if home is not None else get_settings().home
    root = base.absolute() / "zoo" / recipe.digest()
    if (root / MANIFEST).is_file() and not force:
        return _paths(root)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    paths = _paths(tmp)
    cur = write_curriculum(paths.curriculum, seed=recipe.seed, n_train=recipe.n_train,
                           n_eval=recipe.n_eval)
    if progress:
        progress("curriculum", 1.0)

    # The two models share nothing but the curriculum, so the source trains in a second
    # process while this one pretrains the target: on 2 cores that halves the build.
    with _SourceBuild(recipe, paths, progress) as source_build:
        with _threads(source_build.threads):
            char_tok = char_tokenizer(recipe.target.max_positions)
            torch.manual_seed(recipe.seed)
            target = _target_model(recipe.target, char_tok)
            gen_train, gen_val = load_rows(cur.general.train), load_rows(cur.general.validation)
            t_metrics = _train_and_save(target, char_tok, gen_train, gen_val, recipe.target,
                                        paths.target, "pretrain-target", progress)
        s_metrics = source_build.result()

    # Folder names inside the curriculum are absolute; rewrite them for the final location.
    final = _paths(root)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    write_curriculum(final.curriculum, seed=recipe.seed, n_train=recipe.n_train,
                     n_eval=recipe.n_eval)
    manifest = {**final.to_json(), "recipe": recipe.model_dump(), "digest": recipe.digest(),
                "fingerprints": {"target": fingerprint_checkpoint(final.target),
                                 **{k: fingerprint_checkpoint(v)
                                    for k, v in final.sources.items()}},
                "metrics": {"target": t_metrics, "gpt2": s_metrics},
                "seconds": time.perf_counter() - t0}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return final


def zoo_manifest(paths: ZooPaths) -> dict:
    return json.loads((paths.root / MANIFEST).read_text())
