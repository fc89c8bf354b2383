"""The promotion gate: a frozen policy, a decision on eval results, and the audited promotion."""

from .decision import GENERAL, Check, Decision, Score, decide
from .judge import make_judge
from .policy import GatePolicy, Thresholds
from .promote import GateOutcome, gate_pack, head_of, record_decision

__all__ = ["GENERAL", "Check", "Decision", "GateOutcome", "GatePolicy", "Score", "Thresholds", "decide",
           "gate_pack", "head_of", "make_judge", "record_decision"]
