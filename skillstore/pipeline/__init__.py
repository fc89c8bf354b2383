"""The learning job as library code: queue it, then five idempotent steps that workers call."""

from .context import JobCancelled, Progress
from .judge import evaluate, gate
from .queue import (
                    KIND,
                    METHODS,
                    STAGES,
                    cancel,
                    earlier_unfinished,
                    orphaned_jobs,
                    queue_learning_job,
                    retry,
                    send_chain,
)
from .steps import compress, prepare, train

STEPS = {"prepare": prepare, "train": train, "compress": compress, "evaluate": evaluate,
         "gate": gate}

__all__ = ["KIND", "METHODS", "STAGES", "STEPS", "JobCancelled", "Progress", "cancel", "compress",
           "earlier_unfinished", "evaluate", "gate", "orphaned_jobs", "prepare",
           "queue_learning_job", "retry", "send_chain", "train"]
