"""Router evaluation data: prompts asking for two skills at once, and prompts for no skill.

A router must be judged on more than one skill's prompts at a time: a prompt can ask for two
skills (``"What is qwxyz written backwards? add: 12+34 ="``; labelled with both), or for none of
the packs, only for what the base already does (``"Which letter comes after f?"``; labelled
with no skill). ``write_curriculum`` writes these rows to ``router_eval.jsonl`` beside the
skills' folders; single-skill rows are each skill's test split, whose ``template`` field says
which rows use held-out templates.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import DatasetError
from .skills import GENERAL_SKILLS, SKILLS, Template
from .validate import write_jsonl

ROUTER_EVAL_FILE = "router_eval.jsonl"
MIXED, GENERAL = "mixed", "general"
#: Every row carries these: the prompt, the skills it asks for in prompt order (empty: none, the
#: base should answer), the template id of each part, and the kind of row.
ROUTER_EVAL_FIELDS = ("prompt", "skills", "templates", "kind")
#: A mixed prompt is two prompts joined by a space, no longer than the zoo target's 64 positions.
MAX_MIXED_CHARS = 64

#: Natural forms of the base's own (general) skills. The base never trained on them and no pack
#: should take them; some share words with the curriculum's templates ("written", "letter").
GENERAL_FORMS: dict[str, tuple[Template, ...]] = {
    "copy": (Template("copy:say-again", "Say {p} again:"),
             Template("copy:repeat", "Repeat {p} exactly:")),
    "next": (Template("next:comes-after", "Which letter comes after {p}?"),
             Template("next:follows", "What letter follows {p}?")),
    "spell": (Template("spell:in-words", "How is the digit {p} written in words?"),
              Template("spell:as-a-word", "Write the number {p} as a word:")),
}


def mixed_rows(tests: Mapping[str, Sequence[dict]], rng: random.Random, n: int) -> list[dict]:
    """``n`` prompts each joining two skills' test prompts (every pair of skills in turn, in a
    random order); a pair too long for MAX_MIXED_CHARS is drawn again."""
    pairs = list(itertools.combinations(sorted(tests), 2))
    rows: list[dict] = []
    for i in range(n if pairs else 0):
        names = list(pairs[i % len(pairs)])
        rng.shuffle(names)
        for _ in range(1000):
            parts = [rng.choice(tests[name]) for name in names]
            prompt = " ".join(p["prompt"] for p in parts)
            if len(prompt) <= MAX_MIXED_CHARS:
                break
        else:  # a keyword form always fits; this only guards against a template gone wrong
            raise AssertionError(f"no pair of {names} prompts fits {MAX_MIXED_CHARS} characters")
        rows.append({"prompt": prompt, "skills": names,
                     "templates": [p["template"] for p in parts], "kind": MIXED})
    return rows


def general_rows(general_tests: Sequence[dict], rng: random.Random, n: int) -> list[dict]:
    """``n`` prompts for no pack: half from the general suite's test split (its keyword forms),
    half in GENERAL_FORMS with fresh payloads."""
    keyword = [{"prompt": r["prompt"], "skills": [], "templates": [r["template"]],
                "kind": GENERAL} for r in rng.sample(list(general_tests),
                                                      min(n // 2, len(general_tests)))]
    forms = [(GENERAL_SKILLS[name], t) for name, ts in GENERAL_FORMS.items() for t in ts]
    natural = []
    for i in range(n - len(keyword)):
        skill, template = forms[i % len(forms)]
        payload = (rng.choice(skill.closed_set) if skill.closed_set
                   else skill.sample_payload(rng))
        natural.append({"prompt": template.render({"p": payload}), "skills": [],
                        "templates": [template.id], "kind": GENERAL})
    return keyword + natural


def write_router_eval(path: str | Path, tests: Mapping[str, Sequence[dict]],
                      general_tests: Sequence[dict], *, seed: int, n: int) -> Path:
    """Write ``n`` mixed and ``n`` general rows, from the skills' and the general suite's test
    rows, to ``path`` (JSONL)."""
    rng = random.Random(f"{seed}:router-eval")
    rows = mixed_rows(tests, rng, n) + general_rows(general_tests, rng, n)
    return write_jsonl(path, rows)


def load_router_eval(path: str | Path) -> list[dict]:
    """The rows of a router evaluation file; a row without a field is refused with its line."""
    rows = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [f for f in ROUTER_EVAL_FIELDS if f not in row]
        if missing or any(s not in SKILLS for s in row["skills"]):
            raise DatasetError(f"{path}:{lineno}: a router evaluation row needs "
                               f"{', '.join(ROUTER_EVAL_FIELDS)} and curriculum skill names; "
                               "rewrite the curriculum with `skillstore zoo build --force`.")
        rows.append(row)
    return rows
