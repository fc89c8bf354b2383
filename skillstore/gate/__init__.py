"""The promotion gate: a frozen policy, a decision on eval results, and the audited promotion."""

from .decision import Check, Decision, decide
from .judge import (
                    CandidateEvaluation,
                    evaluate_candidate,
                    make_judge,
                    recorded_judge,
                    store_report,
)
from .policy import GatePolicy, Thresholds
from .promote import GateOutcome, Judge, gate_pack, head_of, record_decision

__all__ = ["CandidateEvaluation", "Check", "Decision", "GateOutcome", "GatePolicy", "Judge",
           "Thresholds", "decide", "evaluate_candidate", "gate_pack", "head_of", "make_judge",
           "record_decision", "recorded_judge", "store_report"]
