"""The synthetic skills: prompt formats, ground-truth solvers and rule-based checkers."""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import unknown_name

# A small fixed table for the "knowledge" skill: the target cannot derive these, only learn them.
FACTS: dict[str, str] = {
    "france": "paris", "spain": "madrid", "italy": "rome", "germany": "berlin",
    "poland": "warsaw", "norway": "oslo", "sweden": "stockholm", "finland": "helsinki",
    "greece": "athens", "egypt": "cairo", "japan": "tokyo", "china": "beijing",
    "india": "delhi", "peru": "lima", "chile": "santiago", "cuba": "havana",
    "kenya": "nairobi", "ghana": "accra", "iran": "tehran", "iraq": "baghdad",
    "russia": "moscow", "austria": "vienna", "hungary": "budapest", "ireland": "dublin",
    "portugal": "lisbon", "belgium": "brussels", "denmark": "copenhagen", "turkey": "ankara",
    "canada": "ottawa", "mexico": "mexico city", "brazil": "brasilia", "nepal": "kathmandu",
}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _letters(rng: random.Random, lo: int = 5, hi: int = 5,
             alphabet: str = string.ascii_lowercase) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


@dataclass(frozen=True)
class Skill:
    """One skill: a keyword that opens every prompt, a payload sampler and a solver.

    A prompt reads ``"<keyword>: <payload> ="`` and the answer is ``solve(payload)``, so the
    keyword alone tells a router which skill a prompt belongs to.
    """

    name: str
    keyword: str
    description: str
    sample_payload: Callable[[random.Random], str] = field(repr=False)
    solve: Callable[[str], str] = field(repr=False)
    #: Payloads to enumerate instead of sampling (a closed table such as the facts).
    closed_set: tuple[str, ...] = ()

    def prompt(self, payload: str) -> str:
        return f"{self.keyword}: {payload} ="

    def payload_of(self, prompt: str) -> str | None:
        head = f"{self.keyword}: "
        if not (prompt.startswith(head) and prompt.endswith(" =")):
            return None
        return prompt[len(head):-2]

    def row(self, payload: str) -> dict[str, str]:
        return {"prompt": self.prompt(payload), "answer": self.solve(payload)}

    def check(self, prompt: str, answer: str) -> bool:
        """Rule-based verification: is ``answer`` the right answer to ``prompt``?"""
        payload = self.payload_of(prompt)
        if payload is None:
            return False
        try:
            return self.solve(payload) == answer.strip()
        except (KeyError, ValueError):
            return False

    def sample(self, rng: random.Random) -> dict[str, str]:
        if self.closed_set:
            return self.row(rng.choice(self.closed_set))
        return self.row(self.sample_payload(rng))


def _add_payload(rng: random.Random) -> str:
    return f"{rng.randint(10, 99)}+{rng.randint(10, 99)}"


def _add_solve(payload: str) -> str:
    a, b = payload.split("+")
    if not (a.isdigit() and b.isdigit()):
        raise ValueError(payload)
    return str(int(a) + int(b))


def _next_solve(payload: str) -> str:
    if len(payload) != 1 or payload not in string.ascii_lowercase[:-1]:
        raise ValueError(payload)
    return chr(ord(payload) + 1)


def _spell_solve(payload: str) -> str:
    if len(payload) != 1 or not payload.isdigit():
        raise ValueError(payload)
    return DIGIT_WORDS[int(payload)]


def _copy_solve(payload: str) -> str:
    return payload


CURRICULUM: tuple[Skill, ...] = (
    Skill("reverse", "reverse", "Reverse a string of 5 lowercase letters.",
          _letters, lambda s: s[::-1]),
    Skill("sort", "sort", "Sort 5 lowercase letters alphabetically.",
          _letters, lambda s: "".join(sorted(s))),
    Skill("add", "add", "Add two two-digit numbers.", _add_payload, _add_solve),
    Skill("case", "swapcase", "Swap the case of 5 mixed-case letters.",
          lambda rng: _letters(rng, alphabet=string.ascii_letters), lambda s: s.swapcase()),
    Skill("knowledge", "capital of", "Name the capital of a country from a fixed table.",
          lambda rng: rng.choice(tuple(FACTS)), lambda s: FACTS[s], closed_set=tuple(FACTS)),
)

# What the base model learns in "pretraining" and must keep: copying and simple lookups.
GENERAL: tuple[Skill, ...] = (
    Skill("copy", "copy", "Copy 5 letters and digits verbatim.",
          lambda rng: _letters(rng, alphabet=string.ascii_letters + string.digits), _copy_solve),
    Skill("next", "next letter", "The letter after a lowercase letter.",
          lambda rng: rng.choice(string.ascii_lowercase[:-1]), _next_solve,
          closed_set=tuple(string.ascii_lowercase[:-1])),
    Skill("spell", "spell digit", "The English word for a digit.",
          lambda rng: str(rng.randint(0, 9)), _spell_solve, closed_set=tuple(string.digits)),
)

SKILLS: dict[str, Skill] = {s.name: s for s in CURRICULUM}
GENERAL_SKILLS: dict[str, Skill] = {s.name: s for s in GENERAL}
GENERAL_SUITE = "general"


def get_skill(name: str) -> Skill:
    """A curriculum or general skill by name; an unknown name lists the valid ones."""
    found = SKILLS.get(name) or GENERAL_SKILLS.get(name)
    if found is None:
        raise unknown_name("skill", name, tuple(SKILLS) + tuple(GENERAL_SKILLS))
    return found


def skill_for_prompt(prompt: str) -> Skill | None:
    """The built-in skill whose prompt format ``prompt`` follows, if any."""
    for skill in (*CURRICULUM, *GENERAL):
        if skill.payload_of(prompt) is not None:
            return skill
    return None
