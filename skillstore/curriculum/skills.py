"""The synthetic skills: prompt templates, ground-truth solvers and rule-based checkers."""

from __future__ import annotations

import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from ..errors import unknown_name

#: Bump when a skill's prompts, payloads or answers change: the zoo's recipe digest includes it,
#: so a zoo built with another curriculum is rebuilt rather than reused.
CURRICULUM_VERSION = 3  # 2: natural prompt templates, some held out; 3: openers
#: The longest prompt a template may give (at the longest payload). The zoo's target has 64
#: positions and lm-eval keeps 16 of them for the answer, so a longer prompt would be cut.
MAX_PROMPT_CHARS = 48

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
# Payload fields are letters and digits only, so a field never swallows a template's punctuation
# and every prompt parses one way.
_FIELD = "[A-Za-z0-9]+"

#: Skill-neutral openings a user puts before a request ("Ok, sort ..."). Every training request
#: of a curriculum skill also appears after each TRAIN_OPENERS entry; the test split asks the
#: trained requests after HELD_OUT_OPENERS, which no training row has. A 2-layer zoo model
#: reads a request at the positions it was trained at, so without openers in training it
#: answers no prompt that starts differently (docs/learning.md, "Curriculum").
TRAIN_OPENERS = ("Now ", "Ok, ", "So, ", "Q: ", "Hey, ", "Then ")
HELD_OUT_OPENERS = ("Hi, ", "Pls ", "Yes. ")
#: What a template is to a model trained on the training templates (Template.kind).
TRAINED, NEW_OPENER, NEW_PHRASING = "trained", "new opener", "new phrasing"
KINDS = (TRAINED, NEW_OPENER, NEW_PHRASING)


@dataclass(frozen=True)
class Template:
    """One way of asking for a skill: text with the payload's fields (``{p}``, or ``{a}`` and
    ``{b}`` for a sum) in it, and a stable id that test rows record.

    A held-out template never appears in training or validation rows, only in the test split:
    either a phrasing no training row uses, or a trained request after an ``opener`` that no
    training row has.
    """

    id: str
    text: str
    held_out: bool = False
    opener: str = ""

    @property
    def kind(self) -> str:
        """TRAINED, NEW_OPENER (a trained request, unseen opening) or NEW_PHRASING."""
        if not self.held_out:
            return TRAINED
        return NEW_OPENER if self.opener else NEW_PHRASING

    def after(self, opener: str, *, held_out: bool) -> Template:
        """This request after ``opener`` ("Ok, " + "Sort {p}:"), id ``<id>@<opener word>``."""
        slug = "".join(c for c in opener.lower() if c.isalnum())
        return Template(f"{self.id}@{slug}", opener + self.text, held_out, opener)

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        parts = [re.escape(lit) + (f"(?P<{f}>{_FIELD})" if f else "")
                 for lit, f, _, _ in string.Formatter().parse(self.text)]
        return re.compile("".join(parts))

    def render(self, fields: dict[str, str]) -> str:
        return self.text.format(**fields)

    def match(self, prompt: str) -> dict[str, str] | None:
        m = self.pattern.fullmatch(prompt)
        return m.groupdict() if m else None


def pick_template(rng: random.Random, templates: tuple[Template, ...]) -> Template:
    """A random one of ``templates``; from one template, that one without drawing, so a
    keyword-only skill's rows are what they were before skills had templates."""
    return templates[0] if len(templates) == 1 else rng.choice(templates)


def _letters(rng: random.Random, lo: int = 5, hi: int = 5,
             alphabet: str = string.ascii_lowercase) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


@dataclass(frozen=True)
class Skill:
    """One skill: a keyword, natural prompt templates, a payload sampler and a solver.

    The keyword form reads ``"<keyword>: <payload> ="``; the natural templates ask the same
    thing without naming the skill (``"What is qwxyz written backwards?"``), so a router has to
    read the request, not a tag. The answer is ``solve(payload)`` whatever the template, and the
    payload is parsed back out of any template's prompt (``parse``), which is what ``check``
    verifies against.
    """

    name: str
    keyword: str
    description: str
    sample_payload: Callable[[random.Random], str] = field(repr=False)
    solve: Callable[[str], str] = field(repr=False)
    #: Payloads to enumerate instead of sampling (a closed table such as the facts).
    closed_set: tuple[str, ...] = ()
    #: The payload's own shape: its fields, which the templates place (``"{a}+{b}"`` for a sum).
    payload_format: str = "{p}"
    #: Prompts that do not name the skill; the keyword form is always the first template.
    natural: tuple[Template, ...] = ()

    @cached_property
    def requests(self) -> tuple[Template, ...]:
        """The keyword form and the natural forms, with no opener."""
        keyword = Template(f"{self.name}:keyword", f"{self.keyword}: {self.payload_format} =")
        return (keyword, *self.natural)

    @cached_property
    def templates(self) -> tuple[Template, ...]:
        """Every request, then (for a skill with natural forms) each trained request after
        each training opener and each held-out opener; the keyword form comes first."""
        if not self.natural:
            return self.requests
        trained = [t for t in self.requests if not t.held_out]
        return (*self.requests,
                *(t.after(o, held_out=False) for o in TRAIN_OPENERS for t in trained),
                *(t.after(o, held_out=True) for o in HELD_OUT_OPENERS for t in trained))

    @property
    def train_templates(self) -> tuple[Template, ...]:
        return tuple(t for t in self.templates if not t.held_out)

    @property
    def held_out_templates(self) -> tuple[Template, ...]:
        return tuple(t for t in self.templates if t.held_out)

    def template(self, template_id: str) -> Template:
        for t in self.templates:
            if t.id == template_id:
                return t
        raise unknown_name("template", template_id, tuple(t.id for t in self.templates))

    def _fields(self, payload: str) -> dict[str, str]:
        found = Template("payload", self.payload_format).match(payload)
        if found is None:
            raise ValueError(f"{payload!r} is not a {self.name} payload ({self.payload_format})")
        return found

    def prompt(self, payload: str, template: Template | None = None) -> str:
        """The prompt asking for ``payload`` in ``template`` (default: the keyword form)."""
        return (template or self.templates[0]).render(self._fields(payload))

    def parse(self, prompt: str) -> tuple[Template, str] | None:
        """The template ``prompt`` follows and the payload in it, or None for another skill's."""
        for t in self.templates:
            found = t.match(prompt)
            if found is not None:
                return t, self.payload_format.format(**found)
        return None

    def payload_of(self, prompt: str) -> str | None:
        parsed = self.parse(prompt)
        return parsed[1] if parsed else None

    def row(self, payload: str, template: Template | None = None) -> dict[str, str]:
        template = template or self.templates[0]
        return {"prompt": self.prompt(payload, template), "answer": self.solve(payload),
                "template": template.id}

    def check(self, prompt: str, answer: str) -> bool:
        """Rule-based verification: is ``answer`` the right answer to ``prompt``?"""
        payload = self.payload_of(prompt)
        if payload is None:
            return False
        try:
            return self.solve(payload) == answer.strip()
        except (KeyError, ValueError):
            return False

    def sample(self, rng: random.Random,
               templates: Sequence[Template] | None = None) -> dict[str, str]:
        """A row with a random payload in a random template (default: a training template)."""
        template = pick_template(rng, tuple(templates or self.train_templates))
        if self.closed_set:
            return self.row(rng.choice(self.closed_set), template)
        return self.row(self.sample_payload(rng), template)


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


def _forms(skill: str, train: Sequence[tuple[str, str]],
           held_out: Sequence[tuple[str, str]]) -> tuple[Template, ...]:
    return (*(Template(f"{skill}:{slug}", text) for slug, text in train),
            *(Template(f"{skill}:{slug}", text, held_out=True) for slug, text in held_out))


# Natural templates name neither the skill nor its keyword. Each held-out form is a paraphrase
# sharing a content word with a training form ("backwards", "alphabetical", "plus", "governs",
# "upper"), the way a user's rewording shares vocabulary with what a router was trained on.
CURRICULUM: tuple[Skill, ...] = (
    Skill("reverse", "reverse", "Reverse a string of 5 lowercase letters.",
          _letters, lambda s: s[::-1],
          natural=_forms("reverse", [("backwards", "What is {p} written backwards?"),
                                     ("last-to-first", "Give {p} from last letter to first:"),
                                     ("right-to-left", "Read {p} from right to left:")],
                         [("write-backwards", "Write {p} backwards:"),
                          ("from-the-end", "{p} read from the end is")])),
    Skill("sort", "sort", "Sort 5 lowercase letters alphabetically.",
          _letters, lambda s: "".join(sorted(s)),
          natural=_forms("sort", [("alphabetical", "Put {p} in alphabetical order:"),
                                  ("a-to-z", "Arrange the letters {p} from a to z:"),
                                  ("dictionary", "Order {p} as in a dictionary:")],
                         [("is-alphabetical", "{p} in alphabetical order is"),
                          ("rearrange", "Rearrange {p} to go from a to z:")])),
    Skill("add", "add", "Add two two-digit numbers.", _add_payload, _add_solve,
          payload_format="{a}+{b}",
          natural=_forms("add", [("make", "What do {a} and {b} make?"),
                                 ("plus-equals", "{a} plus {b} equals"),
                                 ("sum-of", "What is the sum of {a} and {b}?")],
                         [("how-much-plus", "How much is {a} plus {b}?"),
                          ("total", "Find the total of {a} and {b}:")])),
    Skill("case", "swapcase", "Swap the case of 5 mixed-case letters.",
          lambda rng: _letters(rng, alphabet=string.ascii_letters), lambda s: s.swapcase(),
          natural=_forms("case", [("flip", "Flip upper and lower letters in {p}:"),
                                  ("big-small", "Make big letters small, small big: {p}"),
                                  ("invert", "Invert the letter sizes of {p}:")],
                         [("upper-lower", "{p} with upper and lower flipped is"),
                          ("turn", "Turn small letters big, big small: {p}")])),
    Skill("knowledge", "capital of", "Name the capital of a country from a fixed table.",
          lambda rng: rng.choice(tuple(FACTS)), lambda s: FACTS[s], closed_set=tuple(FACTS),
          natural=_forms("knowledge", [("governs", "Which city governs {p}?"),
                                       ("government", "Where is the government of {p}?"),
                                       ("ruled-from", "{p} is ruled from which city?")],
                         [("name-the-city", "Name the city that governs {p}:"),
                          ("from-which", "From which city is {p} ruled?")])),
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
