"""Regression-cost benchmark: docs the evaluate step runs through lm-eval per promotion as
promoted skills accumulate, with outcome reuse against a full re-evaluation of the same
candidate, side by side in one run."""

from __future__ import annotations

import copy
import json
import os
import random
import string
import tempfile
import time
from pathlib import Path

import lm_eval.evaluator as evaluator
import sqlalchemy as sa
import torch

from skillstore.catalog import EvalResult, advance_head, create_pack, get_state, init_workspace
from skillstore.catalog.registry import add_skill, register_base
from skillstore.curriculum.lmeval import write_task_yaml
from skillstore.evaluation import general_suite, state_suites, suite_scores
from skillstore.evaluation.reuse import OutcomeReuse
from skillstore.evaluation.routes import disagreements
from skillstore.gate import evaluate_candidate, head_of
from skillstore.models import load_causal_lm
from skillstore.packs import compress_checkpoint
from skillstore.routing.routers import traced_routes
from skillstore.settings import Settings
from skillstore.states import load_view
from skillstore.zoo.tokenizers import char_tokenizer

SEED = 7
NS = tuple(int(n) for n in os.environ.get("SKILLSTORE_BENCH_COST_NS", "5,10,20").split(","))
DOCS = int(os.environ.get("SKILLSTORE_BENCH_COST_DOCS", "12"))  # test docs per suite
# (arm, router, distinct instructions): every skill its own instruction, or the same few
# instructions repeated as variants (own words, own pack) that the learned router confuses.
ARMS = (("tag", "tag", None), ("learned", "learned", None), ("variants", "learned", 5))
BATCH = 32  # the pipeline's EVAL_BATCH
TENSORS = ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight",
           "model.layers.1.self_attn.v_proj.weight", "model.layers.0.mlp.up_proj.weight")


def _log(message: str) -> None:
    print(f"[cost {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _tiny_base(root: Path):
    """A 2-layer Llama of width 32 on the zoo's character tokenizer (random weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=False, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id)).eval()
    model.save_pretrained(root / "base", safe_serialization=True)
    tok.save_pretrained(root / "base")
    return model, tok


def _pack(base, tok, root: Path, k: int) -> Path:
    """Skill k's pack: a random rank-2 change to two tensors, compressed losslessly."""
    tuned = copy.deepcopy(base)
    g = torch.Generator().manual_seed(SEED * 100 + k)
    with torch.no_grad():
        for name in (TENSORS[k % 4], TENSORS[(k + 1) % 4]):
            w = tuned.get_parameter(name)
            w.add_(0.5 * torch.randn(w.shape[0], 2, generator=g) @ torch.randn(2, w.shape[1],
                                                                              generator=g))
    tuned.save_pretrained(root / f"tuned{k}", safe_serialization=True)
    tok.save_pretrained(root / f"tuned{k}")
    return compress_checkpoint(root / "base", root / f"tuned{k}", "lossless",
                               root / f"pack{k}.safetensors").path


def _skill_files(root: Path, name: str, rng: random.Random, stem: str) -> tuple[Path, Path]:
    """(task YAML, training data) of a synthetic skill: the instruction ``stem`` on random
    words, answered by the word's first letter."""
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 5)))
             for _ in range(DOCS + 64)]
    rows = [{"prompt": f"{stem} {w}: ", "answer": w[0]} for w in words]
    folder = root / "data" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:DOCS]))
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[DOCS:]))
    task = "skillstore_general" if name == "general" else f"skillstore_{name}"
    yaml = write_task_yaml(root / "tasks", task,
                           {"train": folder / "train.jsonl", "test": folder / "test.jsonl"})
    return yaml, folder / "train.jsonl"


class Counter:
    """Docs lm-eval answers (its n-samples, effective) while installed."""

    def __init__(self):
        self.docs, self.real = 0, evaluator.simple_evaluate

    def __enter__(self) -> Counter:
        def counted(*args, **kwargs):
            out = self.real(*args, **kwargs)
            self.docs += sum(int(c["effective"]) for c in out["n-samples"].values())
            return out

        evaluator.simple_evaluate = counted
        return self

    def __exit__(self, *exc) -> None:
        evaluator.simple_evaluate = self.real


def _outcomes(session, blobs, state_id: int, suites) -> dict:
    return {name: score.samples
            for name, score in suite_scores(session, state_id, suites, blobs=blobs).items()}


def _full(session, blobs, model, tok, pack, current, version, general, router, reused):
    """The same candidate evaluated in full (its rows from the reuse run deleted first); the
    outcomes must equal the reused ones. Returns (the candidate's docs, seconds, route
    disagreements: predicted before the run against taken in it)."""
    cand = get_state(session, reused.candidate_state_id)
    suites = state_suites(session, load_view(session, cand).skills, general=general)
    kept = _outcomes(session, blobs, cand.id, suites)
    session.execute(sa.delete(EvalResult).where(EvalResult.state_id == cand.id))
    start = time.perf_counter()
    with Counter() as count, traced_routes() as trace:
        evaluate_candidate(session, blobs, model, tok, pack, current, version, general=general,
                           router=router, batch_size=BATCH, reuse=False)
    seconds = time.perf_counter() - start
    if _outcomes(session, blobs, cand.id, suites) != kept:
        raise AssertionError(f"reused outcomes differ from a full re-evaluation ({router})")
    planner = OutcomeReuse(session, blobs, model, tok, load_view(session, current),
                           load_view(session, cand), skills=reused.earlier, batch_size=BATCH)
    predicted = {}
    for suite in suites:
        planner.plan(suite, suite.tasks)
        predicted.update(planner.predicted["candidate"].get(suite.name, {}))
    return count.docs, seconds, disagreements(predicted, trace, planner.candidate)


def _files(root: Path, n_skills: int, distinct: int | None) -> dict[str, tuple[Path, Path]]:
    rng = random.Random(SEED)
    stems = ["".join(rng.choices(string.ascii_lowercase, k=5)) for _ in range(n_skills + 1)]
    if distinct is not None:
        stems = [stems[k % distinct] for k in range(n_skills)] + [stems[-1]]
    files = {f"s{k:02d}": _skill_files(root, f"s{k:02d}", rng, stems[k])
             for k in range(n_skills)}
    files["general"] = _skill_files(root, "general", rng, stems[-1])
    return files


def _arm(root: Path, arm: str, router: str, model, tok, packs: list[Path],
         distinct: int | None) -> list[dict]:
    root = root / arm
    files = _files(root, len(packs), distinct)
    catalog = init_workspace(Settings(home=root))
    blobs, rows = catalog.blobs, []
    with catalog.session() as s:
        base = register_base(s, name="tiny", uri=str(root / "base"),
                             architecture="LlamaForCausalLM",
                             fingerprint=model.skillstore_fingerprint)
        made = []
        for k, path in enumerate(packs):
            yaml, data = files[f"s{k:02d}"]
            skill = add_skill(s, name=f"s{k:02d}", suite=str(yaml), data_uri=str(data))
            made.append(create_pack(s, skill=skill, base=base, blob_digest=blobs.put_file(path),
                                    size_bytes=path.stat().st_size, format_version=1,
                                    method="sft"))
        general = general_suite(files["general"][0])
        s.commit()
        for n, pack in enumerate(made):  # the head holds n promoted skills
            current, version = head_of(s, base)
            start = time.perf_counter()
            with Counter() as count:
                ev = evaluate_candidate(s, blobs, model, tok, pack, current, version,
                                        general=general, router=router, batch_size=BATCH)
            # the current state answers only the new skill's suite (the rest is cached)
            row = {"arm": arm, "router": router, "n": n, "reuse_docs": count.docs,
                   "reuse_s": time.perf_counter() - start, "reused": ev.reuse.n_reused,
                   "current_docs": count.docs - ev.reuse.n_evaluated}
            if n in NS:
                docs, seconds, (differ, compared) = _full(s, blobs, model, tok, pack, current,
                                                          version, general, router, ev)
                row |= {"full_docs": docs + row["current_docs"], "full_s": seconds,
                        "route_differ": differ, "routes_compared": compared}
                _log(f"{arm} N={n}: reuse {row['reuse_docs']} docs ({row['reused']} copied),"
                     f" full {row['full_docs']} docs; predicted routes wrong {differ}/{compared}")
            rows.append(row)
            advance_head(s, base.id, ev.candidate_state_id, expected_version=version)
            s.commit()
    catalog.close()
    return rows


def run(out_dir: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.set_num_threads(1)
        base, tok = _tiny_base(root)
        packs = [_pack(base, tok, root, k) for k in range(max(NS) + 1)]
        model, tok = load_causal_lm(root / "base", dtype=torch.float32)
        rows = [r for arm, router, distinct in ARMS
                for r in _arm(root, arm, router, model, tok, packs, distinct)]
    measured = [r for r in rows if "full_docs" in r]
    print(f"\nDocs answered by lm-eval per promotion ({DOCS} docs per suite, tiny Llama, CPU)")
    ref = f"N{NS[0]}"
    print(f"{'arm':8} {'N':>3} {'reuse':>6} {'copied':>7} {'full':>6} {'reuse/' + ref:>9} "
          f"{'full/' + ref:>8} {'reuse s':>8} {'full s':>7} {'routes wrong':>13}")
    for r in measured:
        first = next(m for m in measured if m["arm"] == r["arm"])
        print(f"{r['arm']:8} {r['n']:>3} {r['reuse_docs']:>6} {r['reused']:>7} "
              f"{r['full_docs']:>6} {r['reuse_docs'] / first['reuse_docs']:>9.2f} "
              f"{r['full_docs'] / first['full_docs']:>8.2f} {r['reuse_s']:>8.1f} "
              f"{r['full_s']:>7.1f} {r['route_differ']:>6}/{r['routes_compared']:<6}")
    result = {"docs_per_suite": DOCS, "batch_size": BATCH, "ns": list(NS), "rows": rows,
              "device": "cpu", "threads": torch.get_num_threads()}
    (out_dir / "cost.json").write_text(json.dumps(result, indent=2))
    return result
