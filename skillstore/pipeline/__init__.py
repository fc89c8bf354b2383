"""The learning job: a typed request, its lifecycle, and five idempotent steps that workers call."""

from .lifecycle import (
                        KIND,
                        STAGES,
                        JobCancelled,
                        Progress,
                        WaitForEarlier,
                        cancel,
                        queue,
                        retry,
                        send_chain,
)
from .request import METHODS, LearnRequest, request_of
from .steps import compress, evaluate, gate, prepare, train

# stage -> step function; workers.learn builds one Celery task per entry, in this order.
STEPS = {"prepare": prepare, "train": train, "compress": compress, "evaluate": evaluate,
         "gate": gate}
assert tuple(STEPS) == STAGES

__all__ = ["KIND", "METHODS", "STAGES", "STEPS", "JobCancelled", "LearnRequest", "Progress",
           "WaitForEarlier", "cancel", "compress", "evaluate", "gate", "prepare", "queue",
           "request_of", "retry", "send_chain", "train"]
