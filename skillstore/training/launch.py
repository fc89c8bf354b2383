"""Training in child processes under `accelerate launch`: a host's GPUs, progress, cancellation.

`launch_training` is `run_training` run by `skillstore.training.child` in every rank that
``accelerate launch`` starts from an accelerate config file (DDP across one host's GPUs, or one
process). The caller's process waits: it forwards the progress rank 0 writes, lets the caller's
progress callback cancel (it raises, and the whole process tree is killed), and turns a rank that
died into one TrainingError line. No process outlives the caller: the launcher runs in a process
group of its own with a parent-death signal, and each rank watches the caller's pid as well
(torch's elastic agent puts ranks in sessions of their own, out of the group's reach).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from .. import errors
from ..errors import ConfigError, SkillstoreError, TrainingError
from .run import TrainJob
from .sft import Progress

JOB_FILE = "job.json"
PROGRESS_FILE = "progress.jsonl"
RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
LOG_FILE = "launch.log"
#: The pid (and start time) of the process that launched the run; every rank exits when it goes.
PARENT_ENV = "SKILLSTORE_LAUNCHED_BY"
POLL_S = 0.2
#: The caller's progress callback is called at least this often, new progress or not: it is
#: where a cancelled job raises, also while the ranks are still loading.
REPORT_EVERY_S = 1.0
#: How long SIGTERM may take before the tree is SIGKILLed.
KILL_GRACE_S = 5.0
#: accelerate distributed types that this module runs, with the GPUs each process needs: one
#: process (on a GPU when there is one), or DDP across one host's GPUs. FSDP and DeepSpeed shard
#: the weights, and `run_training` saves rank 0's plain model; MULTI_CPU needs an MPI hostfile.
SUPPORTED = {"NO": 0, "MULTI_GPU": 1}
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class LaunchConfig:
    """What an accelerate config file asks of the host, read as ``accelerate launch`` reads it."""

    path: Path
    distributed_type: str
    num_processes: int
    use_cpu: bool
    main_process_port: int | None

    @property
    def gpus(self) -> int:
        """GPUs the host must have: one per process for DDP on GPUs, none otherwise."""
        return 0 if self.use_cpu else SUPPORTED.get(self.distributed_type, 1) * self.num_processes

    def as_json(self) -> dict:
        return {"config": str(self.path), "distributed_type": self.distributed_type,
                "num_processes": self.num_processes, "use_cpu": self.use_cpu}


def read_config(path: str | Path) -> LaunchConfig:
    """The accelerate config file at ``path``; one ConfigError line when it is missing, does not
    parse, or asks for a distributed type this module does not run."""
    import yaml
    from accelerate.commands.config.config_args import load_config_from_file

    path = Path(path).expanduser().absolute()
    if not path.is_file():
        raise ConfigError(f"Accelerate config {str(path)!r} does not exist; write one with "
                          "`accelerate config --config_file PATH` or unset "
                          "SKILLSTORE_ACCELERATE_CONFIG to train in the worker's process.")
    try:
        cfg = load_config_from_file(str(path))
        kind = getattr(cfg.distributed_type, "value", cfg.distributed_type)
        processes = int(cfg.num_processes or 1)
    except (OSError, ValueError, TypeError, AttributeError, KeyError, yaml.YAMLError) as exc:
        why = " ".join(str(exc).split())[:200]
        raise ConfigError(f"Accelerate config {str(path)!r} does not parse ({why}); fix it or "
                          "write it again with `accelerate config --config_file PATH`.") from None
    if kind not in SUPPORTED:
        raise ConfigError(f"Accelerate config {str(path)!r} asks for distributed_type {kind}; "
                          "skillstore launches NO (one process) or MULTI_GPU (DDP across this "
                          "host's GPUs), not sharded or MPI training: set one of those two.")
    if processes < 1:
        raise ConfigError(f"Accelerate config {str(path)!r} asks for {processes} processes; "
                          "num_processes must be at least 1.")
    return LaunchConfig(path=path, distributed_type=kind, num_processes=processes,
                        use_cpu=bool(cfg.use_cpu), main_process_port=cfg.main_process_port)


def check_host(config: LaunchConfig, gpus: int | None = None) -> None:
    """One ConfigError line when the host has fewer GPUs than ``config`` asks for."""
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    if config.gpus > gpus:
        raise ConfigError(f"Accelerate config {str(config.path)!r} asks for {config.gpus} GPUs "
                          f"({config.num_processes} {config.distributed_type} processes) but this "
                          f"host has {gpus}; route the job to a host with {config.gpus} GPUs or "
                          "lower num_processes.")


def die_with_parent(sig: int = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to this process when its parent exits (PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the rank's watchdog still applies
        pass


def parent_stamp(pid: int | None = None) -> str:
    """``pid:start time``: names one process, never another that reuses its pid later."""
    proc = psutil.Process(pid or os.getpid())
    return f"{proc.pid}:{proc.create_time()}"


def parent_alive(stamp: str) -> bool:
    pid, created = stamp.split(":", 1)
    try:
        proc = psutil.Process(int(pid))
        return (str(proc.create_time()) == created
                and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(config: LaunchConfig, job_file: Path) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config.path)]
    if config.num_processes > 1 and config.main_process_port is None:
        cmd += ["--main_process_port", str(_free_port())]  # two jobs on one host never collide
    return cmd + ["-m", "skillstore.training.child", str(job_file)]


def _launched_job(job: TrainJob, config: LaunchConfig) -> TrainJob:
    """The job each rank runs: with several processes the loop must be TRL's (DDP through its
    accelerate Trainer); the built-in loop trains one device and is refused there."""
    if config.num_processes == 1:
        return job
    if job.backend == "builtin":
        raise ConfigError(f"The built-in loop trains on one device; a {config.num_processes}-"
                          f"process launch ({config.path.name}) needs --backend trl or auto.")
    return job.model_copy(update={"backend": "trl"})


class _Tail:
    """The progress lines rank 0 has written so far, read a whole line at a time."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0
        self.last: tuple[str, float] = ("launch", 0.0)

    def read(self) -> list[tuple[str, float]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        whole = data[:data.rfind(b"\n") + 1]
        self.offset += len(whole)
        out = []
        for line in whole.splitlines():
            record = json.loads(line)
            out.append((record["stage"], float(record["fraction"])))
        if out:
            self.last = out[-1]
        return out


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and every descendant it has now."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGTERM the launcher's group and every descendant (ranks sit in sessions of their own),
    SIGKILL whatever is left after KILL_GRACE_S, and reap the launcher."""
    tree = process_tree(proc.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for p in tree:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _gone, tree = psutil.wait_procs(tree, timeout=KILL_GRACE_S)
        if not tree:
            break
    proc.wait()


def _failure(folder: Path, proc: subprocess.Popen, method: str) -> SkillstoreError:
    """The error to raise for a launch that ended without a result: the rank's own error
    (the same class, the same line) when it wrote one, else how the process ended."""
    try:
        record = json.loads((folder / ERROR_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        record = None
    if record is not None:
        cls = getattr(errors, record.get("type", ""), None)
        if isinstance(cls, type) and issubclass(cls, SkillstoreError):
            return cls(record["message"])
        return TrainingError(f"Training {method} failed in a launched process: "
                             f"{record['message']}")
    code, log = proc.returncode, _log_tail(folder)
    # The launcher reports a rank that died of a signal as "... died with <Signals.SIGKILL: 9>."
    died = re.findall(r"died with <Signals\.(\w+)", log)
    if died or code < 0:
        how, why = f"was killed by {died[-1] if died else signal.Signals(-code).name}", ""
    else:
        tail = [line.strip() for line in log.splitlines() if line.strip()]
        how = f"exited with code {code}"
        why = f" (last output: {tail[-1][:300]!r})" if tail else ""
    return TrainingError(f"Training {method}: a launched training process {how} before it "
                         f"finished{why}; nothing was saved, retry the job to train again.")


def _log_tail(folder: Path, size: int = 4096) -> str:
    try:
        with open(folder / LOG_FILE, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - size))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def launch_training(method: str, job: TrainJob, config_path: str | Path,
                    progress: Progress | None = None, *, scratch_dir: Path | None = None,
                    gpus: int | None = None) -> dict:
    """`run_training(method, job, progress)` in the ranks of ``accelerate launch`` with the
    config at ``config_path``; returns rank 0's result with ``launch`` (the config) added.

    Refused with one ConfigError line before anything starts: a config that is missing or does
    not parse, more GPUs than the host has (``gpus``: torch's count when None). ``progress`` is
    called with rank 0's progress and at least every REPORT_EVERY_S; whatever it raises (the
    pipeline's JobCancelled) kills the whole process tree and is raised again. A rank that
    fails raises its error; a rank that dies raises TrainingError. ``scratch_dir``: a fresh
    folder for the job, progress and log files (a temporary one when None), removed afterwards.
    """
    config = read_config(config_path)
    check_host(config, gpus)
    launched = _launched_job(job, config)
    folder = Path(scratch_dir) if scratch_dir else Path(tempfile.mkdtemp(prefix="launch-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        (folder / JOB_FILE).write_text(json.dumps(
            {"method": method, "job": launched.model_dump(mode="json")}))
        env = {**os.environ, PARENT_ENV: parent_stamp(), "PYTHONUNBUFFERED": "1"}
        # PR_SET_PDEATHSIG fires when the *thread* that started the launcher ends: call this
        # from the thread that waits for the run (a Celery prefork process runs tasks on its main
        # thread). The launcher's own group lets a cancel signal it and its children at once.
        with open(folder / LOG_FILE, "wb") as log:
            proc = subprocess.Popen(_command(config, folder / JOB_FILE), env=env,
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=die_with_parent)
        _wait(proc, _Tail(folder / PROGRESS_FILE), progress)
        if proc.returncode != 0 or not (folder / RESULT_FILE).is_file():
            raise _failure(folder, proc, method)
        result = json.loads((folder / RESULT_FILE).read_text())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    world = result.pop("world_size", 1)
    return {**result, "launch": {**config.as_json(), "world_size": world}}


def _wait(proc: subprocess.Popen, tail: _Tail, progress: Progress | None) -> None:
    """Forward progress until the launcher exits; anything raised here kills the tree first."""
    reported = 0.0
    try:
        while True:
            done = proc.poll() is not None
            lines, now = tail.read(), time.monotonic()
            if progress is not None and (lines or now - reported >= REPORT_EVERY_S):
                for stage, fraction in lines or [tail.last]:
                    progress(stage, fraction)
                reported = now
            if done:
                return
            time.sleep(POLL_S)
    except BaseException:
        kill_tree(proc)
        raise


def watch_parent(stamp: str, every_s: float = 1.0) -> threading.Thread:
    """A daemon thread that ends this process when the process named by ``stamp`` is gone."""
    def watch() -> None:
        while parent_alive(stamp):
            time.sleep(every_s)
        os.kill(os.getpid(), signal.SIGKILL)

    thread = threading.Thread(target=watch, name="skillstore-parent-watch", daemon=True)
    thread.start()
    return thread
