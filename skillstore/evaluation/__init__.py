"""lm-eval suites of in-memory model states, the eval cache, scores and CL metrics."""

from .cache import Suite, evaluate_state, missing_tasks
from .loader import state_loader
from .metrics import (
                      ContinualMetrics,
                      average_accuracy,
                      backward_transfer,
                      continual_metrics,
                      forgetting,
                      forward_transfer,
)
from .runner import TaskResult, run_tasks, suite_version
from .scores import GENERAL_SUITE, HEADLINE_METRICS, Score, headline, suite_scores
from .suites import general_suite, normalise_suite, skill_suite, state_suites, suite_prompts

__all__ = ["GENERAL_SUITE", "HEADLINE_METRICS", "ContinualMetrics", "Score", "Suite", "TaskResult",
           "average_accuracy", "backward_transfer", "continual_metrics", "evaluate_state",
           "forgetting", "forward_transfer", "general_suite", "headline", "missing_tasks",
           "normalise_suite", "run_tasks", "skill_suite", "state_loader", "state_suites",
           "suite_prompts", "suite_scores", "suite_version"]
