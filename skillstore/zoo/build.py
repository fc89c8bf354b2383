"""The tiny model zoo: a char-level Llama target and GPT-2 and Qwen2 sources with their own BPEs,
cached by recipe."""

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
from .models import ModelSpec, gpt2_model, llama_model, qwen2_model
from .tokenizers import bpe_tokenizer, char_tokenizer

Progress = Callable[[str, float], None]
#: Bump when the builder's code changes what a recipe produces.
ZOO_FORMAT = 3  # 3: a Qwen2 source, trained in the parent after the target
# 2: the source trains in its own process, on its share of the threads
MANIFEST = "zoo.json"
QWEN2_STEP_SHARE = 0.6


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
    # The Qwen2 source: None is the GPT-2 source's size and training at QWEN2_STEP_SHARE of its
    # steps, so it fits in the time the parent would otherwise wait for the GPT-2 child.
    qwen2: ModelSpec | None = None
    qwen2_vocab: int = Field(default=448, gt=260)

    def qwen2_spec(self) -> ModelSpec:
        if self.qwen2 is not None:
            return self.qwen2
        steps = max(1, round(self.source.train.max_steps * QWEN2_STEP_SHARE))
        return self.source.model_copy(
            update={"train": self.source.train.model_copy(update={"max_steps": steps})})

    def digest(self) -> str:
        # The curriculum's version counts: its rows are what both models train on.
        blob = json.dumps({"format": ZOO_FORMAT, "curriculum": CURRICULUM_VERSION,
                           **self.model_dump(), "qwen2": self.qwen2_spec().model_dump()},
                          sort_keys=True)
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


@dataclass(frozen=True)
class Source:
    """One source architecture of the zoo: how it is made, its BPE's size, its seed offset."""

    name: str
    make: Callable  # (ModelSpec, tokenizer) -> a randomly initialised causal LM
    seed_offset: int

    def spec(self, recipe: ZooRecipe) -> ModelSpec:
        return recipe.source if self.name == "gpt2" else recipe.qwen2_spec()

    def vocab(self, recipe: ZooRecipe) -> int:
        return recipe.bpe_vocab if self.name == "gpt2" else recipe.qwen2_vocab


SOURCES = {s.name: s for s in (Source("gpt2", gpt2_model, 1), Source("qwen2", qwen2_model, 2))}


def _paths(root: Path) -> ZooPaths:
    return ZooPaths(root, root / "target", {k: root / f"source-{k}" for k in SOURCES},
                    root / "curriculum")


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


def build_source(recipe: ZooRecipe, paths: ZooPaths, name: str = "gpt2",
                 progress: Progress | None = None) -> dict:
    """Train source ``name`` on every curriculum skill, with its own BPE fitted to that text
    (GPT-2's at ``bpe_vocab`` tokens, Qwen2's at ``qwen2_vocab``: the tokenizers differ)."""
    import torch

    source, spec = SOURCES[name], SOURCES[name].spec(recipe)
    cur = paths.load_curriculum()
    train_all = _rows(cur, None, "train", general=True)
    bpe = bpe_tokenizer((r["prompt"] + " " + r["answer"] + "\n" for r in train_all),
                        source.vocab(recipe), spec.max_positions)
    torch.manual_seed(recipe.seed + source.seed_offset)
    model = source.make(spec, bpe)
    stage = "train-source" if name == "gpt2" else f"train-source-{name}"
    return _train_and_save(model, bpe, train_all, _rows(cur, None, "validation", general=False),
                           spec, paths.sources[name], stage, progress)


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
            return build_source(self.recipe, self.paths, "gpt2", self.progress)
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
    (copying and lookups); the sources, a GPT-2 and a Qwen2 each with its own locally trained
    BPE, are trained on every curriculum skill so they can teach them. Same recipe and seed
    give the same weights.
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

    # The models share nothing but the curriculum, so the GPT-2 source trains in a second
    # process while this one pretrains the target, then the Qwen2 source: on 2 cores that
    # halves the build.
    with _SourceBuild(recipe, paths, progress) as source_build:
        with _threads(source_build.threads):
            char_tok = char_tokenizer(recipe.target.max_positions)
            torch.manual_seed(recipe.seed)
            target = llama_model(recipe.target, char_tok)
            gen_train, gen_val = load_rows(cur.general.train), load_rows(cur.general.validation)
            t_metrics = _train_and_save(target, char_tok, gen_train, gen_val, recipe.target,
                                        paths.target, "pretrain-target", progress)
            # The target stops early (stop_loss); the Qwen2 source takes this process's
            # threads while the GPT-2 child is still training.
            q_metrics = build_source(recipe, paths, "qwen2", progress)
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
                "metrics": {"target": t_metrics, "gpt2": s_metrics, "qwen2": q_metrics},
                "seconds": time.perf_counter() - t0}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return final


def zoo_manifest(paths: ZooPaths) -> dict:
    return json.loads((paths.root / MANIFEST).read_text())
