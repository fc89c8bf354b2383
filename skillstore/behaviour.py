"""A base's behaviour suite: agreement with its own greedy answers and KL from it, in lm-eval.

Built once when a base is registered (`skillstore base add`), from a probe set of prompts: the
user's ``--general-data`` (JSONL rows with "prompt" or "text", or a text file, one prompt a
line), else short sequences the base samples itself (fixed seed), decoded with its tokenizer.
Two lm-eval tasks in one content-addressed folder ``<home>/suites/<base>-behaviour/<hash>/``:

* ``..._agreement`` (generate_until, exact_match): the target of each prompt is the base's own
  greedy answer, so the base scores 1.0 and a state that keeps its behaviour does too; this is
  the suite's headline, paired prompt by prompt by the gate like any exact_match suite.
  Its data also holds a ``train`` split that lm-eval never scores: probes the learned router
  trains on as the base's own inputs (no pack), disjoint from the scored ones, so the gate never
  scores a general prompt the router was fitted to.
* ``..._kl`` (loglikelihood, metric ``kl``, lower is better): each doc holds a continuation the
  base sampled after a probe prompt and the base's log-probability of it; per doc the task
  reports (log p_base - log p_state) / tokens, a Monte-Carlo estimate of the per-token
  KL(base || state). It never reports exact_match or acc, so no headline reads it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from .atomic import publish_dir
from .curriculum.lmeval import ZERO_SHOT
from .curriculum.validate import write_jsonl
from .errors import DatasetError
from .evaluation.runner import suite_version

#: Bump when the tasks change, so a rebuilt suite lands in another folder.
BEHAVIOUR_VERSION = 4  # 2: a train split of router probes, disjoint from the scored ones;
# 3: self-sampled probes drawn in rounds until they reach their size; 4: columns, not
# templates (curriculum.lmeval.ZERO_SHOT): a base answer that looked like a list was a list
# 800 paired prompts: the fewest (in hundreds) at which one prompt the state answers otherwise
# than the base keeps the drop's one-sided upper bound (Tango's score bound) under the default
# max_general_drop of 0.01 with five drop checks in the Holm family (0.0090; 0.0056 alone); at
# 400 one flip gives 0.0111 even alone. The KL texts only report.
DEFAULT_PROMPTS = 800
DEFAULT_TEXTS = 100
#: Probes for the learned router's no-pack class (the router reads at most 400 a class).
DEFAULT_ROUTER = 200
DEFAULT_SEED = 0
PROMPT_TOKENS = 24  # a self-sampled prompt
TEXT_TOKENS = 32  # a sampled continuation the KL task scores
ANSWER_TOKENS = 32  # the longest greedy answer compared
#: A self-sampled probe set must decode to usable text at least this often.
MIN_DECODED = 0.5
#: Sampling rounds a self-sampled probe set may take to reach its size, and the seed step
#: between rounds.
SAMPLE_ROUNDS, ROUND_SEED = 6, 7919
AGREEMENT_FILE, KL_FILE, UTILS_FILE = "agreement.jsonl", "kl.jsonl", "utils.py"
ROUTER_FILE = "router.jsonl"
UTILS_TEXT = '''"""The per-doc KL estimate of a skillstore behaviour suite."""


def kl(doc, results):
    """(log p_base - log p_state) of the base-sampled text, per token."""
    loglikelihood = results[0][0]
    return {"kl": (float(doc["base_ll"]) - float(loglikelihood)) / int(doc["n_tokens"])}
'''


@dataclass(frozen=True)
class BehaviourPlan:
    """Where a base's behaviour suite goes and what it is made from."""

    folder: Path
    name: str  # the task prefix
    prompts: tuple[str, ...]
    source: str  # "general-data" or "self-sampled"
    n_prompts: int
    n_texts: int
    seed: int
    n_router: int = DEFAULT_ROUTER

    def splits(self) -> tuple[list[str], list[str], list[str]]:
        """(scored agreement prompts, KL contexts, router probes). The router's probes follow
        the agreement prompts and the KL contexts; a probe set with none left over gives the
        router the last quarter of the agreement prompts instead, never a scored one."""
        prompts = list(self.prompts)
        agree, rest = prompts[:self.n_prompts], prompts[self.n_prompts:]
        contexts = (rest if len(rest) >= self.n_texts else prompts)[:self.n_texts]
        router = rest[self.n_texts:][:self.n_router]
        if not router and self.n_router:
            cut = min(self.n_router, len(agree) // 4)
            agree, router = agree[:len(agree) - cut], agree[len(agree) - cut:]
        return agree, contexts, router

    @property
    def tasks(self) -> tuple[str, str]:
        return f"{self.name}_agreement", f"{self.name}_kl"

    def yaml_paths(self) -> tuple[Path, Path]:
        return tuple(self.folder / f"{t}.yaml" for t in self.tasks)


def read_probes(path: str | Path) -> list[str]:
    """Prompts of a ``--general-data`` file: JSONL rows' "prompt" (else "text"), or the
    non-empty lines of any other text file; first occurrence of each, in file order."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"General data file {str(path)!r} does not exist.")
    lines = path.read_text(encoding="utf-8").splitlines()
    out: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if path.suffix in (".jsonl", ".json"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}:{number}: not JSON ({exc.msg}); write one object "
                                   "a line with a \"prompt\" or \"text\" field.") from None
            text = row.get("prompt", row.get("text")) if isinstance(row, dict) else None
            if not isinstance(text, str) or not text.strip():
                raise DatasetError(f"{path}:{number}: a row needs a non-empty \"prompt\" or "
                                   "\"text\" string.")
        else:
            text = line
        out.append(text)
    out = list(dict.fromkeys(out))
    if not out:
        raise DatasetError(f"{path}: no prompts; write one JSONL row or text line a prompt.")
    return out


def _start_token(tokenizer) -> int | None:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def _sample(model, tokenizer, contexts: Sequence[list[int]], new_tokens: int,
            seed: int) -> list[list[int]]:
    """Tokens the model samples (temperature 1, no truncation) after each context."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    out: list[list[int]] = []
    torch.manual_seed(seed)
    for start in range(0, len(contexts), 32):
        batch = contexts[start:start + 32]
        width = max(len(c) for c in batch)
        ids = torch.tensor([[pad] * (width - len(c)) + c for c in batch], device=device)
        mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in batch], device=device)
        with torch.no_grad():
            made = model.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                                  temperature=1.0, top_k=0, top_p=1.0,
                                  max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  pad_token_id=pad)
        out += made[:, width:].tolist()
    return out


def _decoded(tokenizer, ids: list[int]) -> str | None:
    try:
        text = tokenizer.decode(ids, skip_special_tokens=True)
    except Exception:  # noqa: BLE001 - any tokenizer failure reads as "cannot decode"
        return None
    if not isinstance(text, str) or not text.strip() or "\ufffd" in text:
        return None
    return text


def _undecodable(base: str) -> DatasetError:
    return DatasetError(f"Base {base!r}: its tokenizer does not decode its own samples to text, "
                        "so no behaviour suite can be sampled from it; pass --general-data "
                        "FILE (JSONL with \"prompt\" or \"text\", or text lines).")


def sample_probes(model, tokenizer, n: int, *, seed: int, base: str) -> list[str]:
    """``n`` distinct prompts the base samples from its start token, decoded; DatasetError
    asking for --general-data when the tokenizer cannot decode them.

    A small model samples the same text often, and duplicates are dropped, so sampling goes on
    in rounds (at most SAMPLE_ROUNDS, each with its own seed) until ``n`` distinct probes are
    in hand: the zoo's target gave 591 distinct of 1,100 in one round, and its behaviour suite
    scored 426 probes where DEFAULT_PROMPTS asks for 800."""
    start = _start_token(tokenizer)
    if start is None:
        raise _undecodable(base)
    good: dict[str, None] = {}
    drawn = decoded = 0
    for round_ in range(SAMPLE_ROUNDS):
        want = n - len(good)
        if want <= 0:
            break
        texts = [_decoded(tokenizer, ids) for ids in _sample(
            model, tokenizer, [[start]] * want, PROMPT_TOKENS, seed + ROUND_SEED * round_)]
        drawn += len(texts)
        decoded += sum(t is not None for t in texts)
        if decoded < MIN_DECODED * drawn:
            raise _undecodable(base)
        good.update(dict.fromkeys(t for t in texts if t is not None))
    return list(good)[:n]


def plan_behaviour(suites_dir: str | Path, base: str, fingerprint: str, prompts: Sequence[str],
                   *, source: str, n_prompts: int = DEFAULT_PROMPTS,
                   n_texts: int = DEFAULT_TEXTS, seed: int = DEFAULT_SEED,
                   n_router: int = DEFAULT_ROUTER) -> BehaviourPlan:
    """The folder ``<suites_dir>/<base>-behaviour/<hash>`` of these weights and probes: other
    weights, probes or sizes are another folder, so a suite already measured never changes."""
    key = json.dumps({"version": BEHAVIOUR_VERSION, "fingerprint": fingerprint,
                      "prompts": hashlib.sha256("\0".join(prompts).encode()).hexdigest(),
                      "n_prompts": n_prompts, "n_texts": n_texts, "seed": seed,
                      "n_router": n_router}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    name = f"skillstore_behaviour_{base.replace('-', '_').replace('.', '_')}"
    folder = Path(suites_dir).absolute() / f"{base}-behaviour" / digest
    return BehaviourPlan(folder, name, tuple(prompts), source, n_prompts, n_texts, seed, n_router)


def _yaml(task: str, data: Path, lines: list[str], train: Path | None = None) -> str:
    q = json.dumps
    split = [f"    train: {q(str(train))}"] if train is not None else []
    return "\n".join([f"task: {task}", "dataset_path: json", "dataset_kwargs:", "  data_files:",
                      f"    test: {q(str(data))}", *split, "test_split: test", *ZERO_SHOT,
                      *lines,
                      "metadata:", f"  version: {BEHAVIOUR_VERSION}.0"]) + "\n"


def _write_tasks(folder: Path, plan: BehaviourPlan, agreement: list[dict], kl: list[dict],
                 router: list[str]) -> None:
    write_jsonl(folder / AGREEMENT_FILE, agreement)
    write_jsonl(folder / KL_FILE, kl)
    write_jsonl(folder / ROUTER_FILE, [{"prompt": p, "answer": ""} for p in router])
    (folder / UTILS_FILE).write_text(UTILS_TEXT, encoding="utf-8")
    agree, div = plan.tasks
    (folder / f"{agree}.yaml").write_text(_yaml(agree, plan.folder / AGREEMENT_FILE, [
        "output_type: generate_until", "doc_to_target: answer", "generation_kwargs:",
        f"  until: [{json.dumps(chr(10))}]", "  do_sample: false",
        f"  max_gen_toks: {ANSWER_TOKENS}", "metric_list:", "  - metric: exact_match",
        "    aggregation: mean", "    higher_is_better: true"],
        train=plan.folder / ROUTER_FILE if router else None), encoding="utf-8")
    (folder / f"{div}.yaml").write_text(_yaml(div, plan.folder / KL_FILE, [
        "output_type: loglikelihood", "doc_to_target: text",
        "process_results: !function utils.kl", "metric_list:", "  - metric: kl",
        "    aggregation: mean", "    higher_is_better: false"]), encoding="utf-8")


def _logged(model, tokenizer, folder: Path, tasks: Sequence[str],
            batch_size: int) -> dict[str, list]:
    """doc index -> the base's filtered response, per task, run through lm-eval exactly as the
    suite will be (same YAML, same request path), so the base reproduces its own targets."""
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
              device=str(next(model.parameters()).device))
    results = evaluator.simple_evaluate(
        model=lm, tasks=list(tasks),
        task_manager=TaskManager(include_path=str(folder), include_defaults=False),
        log_samples=True, bootstrap_iters=0, verbosity="ERROR")
    out = {}
    for task in tasks:
        logged = sorted(results["samples"][task], key=lambda s: s["doc_id"])
        out[task] = [s["filtered_resps"][0] for s in logged]
    return out


def build_behaviour_suite(model, tokenizer, plan: BehaviourPlan, *,
                          batch_size: int = 16) -> dict:
    """Answer and sample the probes with the base, publish the task folder (skipped when it is
    already there), and return the record the base row keeps (``suite`` resolves like a
    skill's suite, skillstore.evaluation.suites)."""
    agree_prompts, contexts, router = plan.splits()
    if not all(p.is_file() for p in plan.yaml_paths()):
        tmp = plan.folder.with_name(f".tmp-{plan.folder.name}-{uuid.uuid4().hex[:8]}")
        kl_rows = _kl_texts(model, tokenizer, contexts, plan.seed)
        draft = [{"prompt": p, "answer": ""} for p in agree_prompts]
        # The draft tasks read the temporary folder's files, so point the plan there for now.
        draft_plan = replace(plan, folder=tmp)
        _write_tasks(tmp, draft_plan, draft, [{**r, "base_ll": 0.0} for r in kl_rows], router)
        resps = _logged(model, tokenizer, tmp, plan.tasks, batch_size)
        answers = [{"prompt": p, "answer": a} for p, a in zip(agree_prompts, resps[plan.tasks[0]],
                                                              strict=True)]
        kl = [{**r, "base_ll": float(ll[0])} for r, ll in zip(kl_rows, resps[plan.tasks[1]],
                                                              strict=True)]
        _write_tasks(tmp, plan, answers, kl, router)
        publish_dir(tmp, plan.folder, replace=plan.folder.is_dir())
    agree_yaml, kl_yaml = plan.yaml_paths()
    return {"suite": f"{agree_yaml},{kl_yaml}", "source": plan.source, "seed": plan.seed,
            "n_prompts": len(agree_prompts), "n_texts": len(contexts),
            "n_router": len(router), "version": BEHAVIOUR_VERSION,
            "suite_version": suite_version(plan.folder, plan.tasks)}


def _kl_texts(model, tokenizer, contexts: Sequence[str], seed: int) -> list[dict]:
    """A continuation the base samples after each context, with its token count."""
    encoded = [tokenizer(c, add_special_tokens=False)["input_ids"] or [_start_token(tokenizer)]
               for c in contexts]
    rows = []
    for context, ids in zip(contexts, _sample(model, tokenizer, encoded, TEXT_TOKENS, seed + 1),
                            strict=True):
        text = _decoded(tokenizer, ids)
        if text is None:
            continue
        n = len(tokenizer(context + text, add_special_tokens=False)["input_ids"]) - len(
            tokenizer(context, add_special_tokens=False)["input_ids"])
        rows.append({"prompt": context, "text": text, "n_tokens": max(1, n)})
    return rows


def behaviour_suite_for(model, tokenizer, suites_dir: str | Path, *, base: str,
                        fingerprint: str, data: str | Path | None = None,
                        n_prompts: int = DEFAULT_PROMPTS, n_texts: int = DEFAULT_TEXTS,
                        n_router: int = DEFAULT_ROUTER, seed: int = DEFAULT_SEED,
                        batch_size: int = 16) -> dict:
    """The probe set (``data``, else sampled from the base), planned and built: the record."""
    if data is not None:
        prompts, source = read_probes(data), "general-data"
    else:
        prompts = sample_probes(model, tokenizer, n_prompts + n_texts + n_router, seed=seed,
                                base=base)
        source = "self-sampled"
    plan = plan_behaviour(suites_dir, base, fingerprint, prompts, source=source,
                          n_prompts=n_prompts, n_texts=n_texts, seed=seed, n_router=n_router)
    return build_behaviour_suite(model, tokenizer, plan, batch_size=batch_size)


def build_for_checkpoint(folder: str | Path, suites_dir: str | Path, *, base: str,
                         fingerprint: str, data: str | Path | None = None, **options) -> dict:
    """behaviour_suite_for on the checkpoint in ``folder`` (loaded here, freed after)."""
    from .models import load_causal_lm

    if data is not None:
        read_probes(data)  # a bad file fails before the model loads
    model, tokenizer = load_causal_lm(folder, fingerprint=False)
    try:
        return behaviour_suite_for(model, tokenizer, suites_dir, base=base,
                                   fingerprint=fingerprint, data=data, **options)
    finally:
        del model
