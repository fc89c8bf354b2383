"""lm-eval regression suites on in-memory model states, the eval cache, and continual-learning metrics."""

from .cache import GENERAL_SUITE, Suite, evaluate_state, headline, missing_tasks
from .metrics import (
                      ContinualMetrics,
                      average_accuracy,
                      backward_transfer,
                      continual_metrics,
                      forgetting,
                      forward_transfer,
)
from .runner import TaskResult, run_tasks, suite_version

__all__ = ["GENERAL_SUITE", "ContinualMetrics", "Suite", "TaskResult", "average_accuracy",
           "backward_transfer", "continual_metrics", "evaluate_state", "forgetting", "forward_transfer",
           "headline", "missing_tasks", "run_tasks", "suite_version"]
