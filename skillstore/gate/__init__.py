"""The promotion gate: a frozen policy, a decision on eval results, and the audited promotion."""

from .decision import Check, Decision, decide
from .judge import (
                    CandidateEvaluation,
                    GateOutcome,
                    Judge,
                    evaluate_candidate,
                    gate_pack,
                    head_of,
                    make_judge,
                    record_decision,
                    recorded_judge,
                    store_report,
)
from .override import override_pack
from .policy import GatePolicy, Thresholds

__all__ = ["CandidateEvaluation", "Check", "Decision", "GateOutcome", "GatePolicy", "Judge",
           "Thresholds", "decide", "evaluate_candidate", "gate_pack", "head_of", "make_judge",
           "override_pack", "record_decision", "recorded_judge", "store_report"]
