"""One rank of a launched run: `python -m skillstore.training.child JOBFILE` calls `run_training`.

Started by ``accelerate launch`` for `launch.launch_training`. Every rank trains (TRL's Trainer
finds the others through the environment accelerate sets); rank 0 writes the progress lines,
the result and, on a failure, the error, each beside JOBFILE. A rank dies with the launcher
(PR_SET_PDEATHSIG) and with the process that launched it (a watchdog on its pid).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from ..errors import SkillstoreError
from . import launch
from .run import TrainJob, run_training


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)  # the launcher reads a whole file or none


class _Rank0Progress:
    """Rank 0's progress callback: one JSON line per call for the launcher to tail. It also
    notes how many processes were training together (the group is gone once the Trainer ends)."""

    def __init__(self, path: Path):
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (open while the rank runs)
        self.world_size = 1

    def __call__(self, stage: str, fraction: float) -> None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            self.world_size = max(self.world_size, dist.get_world_size())
        self.file.write(json.dumps({"stage": stage, "fraction": fraction}) + "\n")
        self.file.flush()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m skillstore.training.child JOBFILE", file=sys.stderr)
        return 2
    launch.die_with_parent()
    if os.environ.get(launch.PARENT_ENV):
        launch.watch_parent(os.environ[launch.PARENT_ENV])
    job_file = Path(args[0])
    folder = job_file.parent
    rank = int(os.environ.get("RANK", "0"))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch

        if torch.cuda.is_available():  # "cuda" means this rank's GPU, not GPU 0
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    spec = json.loads(job_file.read_text())
    job = TrainJob.model_validate(spec["job"])
    progress = _Rank0Progress(folder / launch.PROGRESS_FILE) if rank == 0 else None
    try:
        result = run_training(spec["method"], job, progress)
    except SkillstoreError as exc:
        if rank == 0:
            _write_json(folder / launch.ERROR_FILE,
                        {"type": type(exc).__name__, "message": str(exc)})
        print(f"rank {rank}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # out of memory, NCCL, a library bug: the parent reports it
        traceback.print_exc()
        if rank == 0:
            _write_json(folder / launch.ERROR_FILE, {"type": type(exc).__name__,
                                              "message": f"{type(exc).__name__}: {exc}"})
        return 1
    if rank == 0:
        _write_json(folder / launch.RESULT_FILE, {**result, "world_size": progress.world_size})
    return 0


if __name__ == "__main__":
    sys.exit(main())
