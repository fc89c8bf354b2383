"""Fault injectors for the reliability suite: a private Redis to restart, a TCP proxy to cut."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import IN_CI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def require_binary(name: str) -> str:
    """The path of a server binary; missing is a skip locally and a failure in CI."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed"
        if IN_CI:
            pytest.fail(f"{message}; the reliability suite needs it in CI")
        pytest.skip(message)
    return path


class PrivateRedis:
    """A redis-server of this test's own on a free port, which the test may kill and restart.

    With ``appendonly`` (the default) every write is fsynced to an append-only file in
    ``folder``, as a production broker is configured, so queued messages survive a restart.
    """

    def __init__(self, folder: Path, *, appendonly: bool = True):
        self.binary = require_binary("redis-server")
        self.folder, self.appendonly = folder, appendonly
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        folder.mkdir(parents=True, exist_ok=True)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> PrivateRedis:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--daemonize", "no", "--dir", str(self.folder)]
        argv += (["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly
                 else ["--appendonly", "no"])
        log = open(self.folder / "redis.log", "ab")  # noqa: SIM115 - the child owns it
        try:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        deadline = time.monotonic() + 30
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"private redis-server on port {self.port} did not start:\n"
                                   + (self.folder / "redis.log").read_text()[-2000:])
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL: a crash, not a clean shutdown (no final save)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def restart(self, down_s: float) -> None:
        self.kill()
        time.sleep(down_s)
        self.start()
        self.restarts += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class TcpProxy:
    """A loopback TCP proxy in threads; ``cut()`` resets every connection and refuses new ones
    until ``restore()``, which looks to a client exactly like the server going away."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = free_port()
        self.cuts = 0
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()
        return self

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed by cut() or stop()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass  # the other side, or cut(), closed the connection
        finally:
            for s in (src, dst):
                self._close(s)

    def _close(self, s: socket.socket) -> None:
        with self._lock:
            self._conns.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed
        s.close()

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        if self._listener is not None:
            try:  # wakes the accept() blocked in the other thread; close() alone does not
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # not connected: nothing to wake
            self._listener.close()
            self._listener = None
        with self._lock:
            conns = list(self._conns)
        for s in conns:
            try:  # linger 0: close() sends RST, as a crashed server's kernel would
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                             b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass  # a pipe thread closed this socket meanwhile
            self._close(s)
        self.cuts += 1

    def restore(self) -> None:
        self.start()

    def stop(self) -> None:
        self.cut()


def tree_files(folder: Path) -> dict[str, int]:
    """Relative path -> size of every file under a folder (empty when it does not exist)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}

