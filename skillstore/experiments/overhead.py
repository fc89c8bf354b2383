"""What running an experiment as queued jobs costs beyond its runs' own work.

Each run's result records the seconds its method took (`methods.execute`). Everything else an
experiment's wall clock holds is orchestration:
- in the task: reading the run's inputs from the catalog, writing its result and packs;
- between tasks: time when no run of the experiment was running at all (a queued message
  waiting for a worker, a worker starting, the broker's polling).

Runs of different methods may overlap on several workers, so the idle part is measured as the
wall clock minus the union of the runs' intervals, not as wall minus the sum of their times.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime


def _busy(intervals: Sequence[tuple[datetime, datetime]]) -> float:
    """Seconds covered by at least one interval."""
    total, end = 0.0, None
    for start, stop in sorted(intervals):
        if end is None or start > end:
            total += (stop - start).total_seconds()
            end = stop
        elif stop > end:
            total += (stop - end).total_seconds()
            end = stop
    return total


Span = tuple[datetime | None, datetime | None, dict | None]  # started, finished, result


def orchestration(created_at: datetime, finished_at: datetime | None,
                  runs: Sequence[Span]) -> dict | None:
    """Overhead of a finished experiment from its queueing time, finish time and each run's
    (started_at, finished_at, result); None while it runs or when no run recorded its seconds.

    ``overhead`` = in-task seconds (each run's span minus its method's seconds) + idle seconds
    (wall minus the union of the runs' spans); ``ratio`` is that over the sum of the runs'
    method seconds."""
    done = [(s, f, r) for s, f, r in runs if s and f and r and r.get("seconds") is not None]
    if finished_at is None or not done:
        return None
    work = sum(float(r["seconds"]) for _, _, r in done)
    in_task = sum((f - s).total_seconds() - float(r["seconds"]) for s, f, r in done)
    wall = (finished_at - created_at).total_seconds()
    # a failed run's span is busy too: its time was spent on the method, not on the queue
    idle = max(0.0, wall - _busy([(s, f) for s, f, _ in runs if s and f]))
    overhead = max(0.0, in_task) + idle
    return {"runs": len(done), "wall_s": round(wall, 3), "work_s": round(work, 3),
            "in_task_s": round(in_task, 3), "idle_s": round(idle, 3),
            "overhead_s": round(overhead, 3), "ratio": overhead / work if work > 0 else None}
