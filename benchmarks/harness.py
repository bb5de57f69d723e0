"""Process management for the multi-process scenarios: spawn, watch, stop, never hang.

Every process of a scenario (``medstream simulate``, ``medstream run`` or the naive loop, the
measuring subscriber) is a real subprocess started with this interpreter, its output going to a log
file in the scenario's folder. While they run, a sampler thread reads each one's CPU% (of one core)
and RSS with psutil every ``sample_s``. Stopping is SIGTERM (each program finishes its current frame
and writes its summary), then SIGKILL after a grace period. Every wait has a timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from medstream.runtime.errors import MedstreamError


class HarnessError(MedstreamError):
    """A benchmark process failed to start or to finish; the message names its log file."""

    def __init__(self, what: str, fix: str = "read the process log named above; rerun with --log-level DEBUG") -> None:
        super().__init__(what, fix)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the child binds it itself)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def medstream_cmd(*args: str) -> list[str]:
    """``medstream ARGS`` run with this interpreter (no reliance on PATH)."""
    return [sys.executable, "-m", "medstream.cli.main", *args]


def module_cmd(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class Proc:
    """One child process with its log and resource samples."""

    def __init__(self, name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in wait()/kill()
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.popen = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=full_env,
                                      start_new_session=True)
        self.ps = psutil.Process(self.popen.pid)
        self.cpu: list[float] = []
        self.rss: list[int] = []
        self.started = time.monotonic()
        with contextlib.suppress(psutil.Error):
            self.ps.cpu_percent(None)  # prime: the first call always returns 0

    # ---- sampling
    def sample(self) -> None:
        if self.popen.poll() is not None:
            return
        try:
            cpu = self.ps.cpu_percent(None)
            for child in self.ps.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    cpu += child.cpu_percent(None)
            self.cpu.append(cpu)
            self.rss.append(self.ps.memory_info().rss)
        except psutil.Error:
            pass

    def resources(self, skip: int = 2) -> dict[str, Any]:
        """Mean/max CPU% (100 = one core) and RSS; the first ``skip`` samples (start-up) left out."""
        cpu = self.cpu[skip:] or self.cpu
        rss = self.rss[skip:] or self.rss
        return {
            "cpu_pct_mean": round(sum(cpu) / len(cpu), 1) if cpu else None,
            "cpu_pct_max": round(max(cpu), 1) if cpu else None,
            "rss_mb_mean": round(sum(rss) / len(rss) / 2**20, 1) if rss else None,
            "rss_mb_max": round(max(rss) / 2**20, 1) if rss else None,
            "samples": len(cpu),
        }

    # ---- lifecycle
    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 2000) -> str:
        with contextlib.suppress(OSError):
            self._log.flush()
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        return ""

    def check_alive(self) -> None:
        if not self.running:
            raise HarnessError(f"benchmark process '{self.name}' exited early with code {self.popen.returncode}; "
                               f"log {self.log_path}:\n{self.log_tail()}")

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for it to exit by itself; its exit code or ``None``."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace_s: float = 10.0) -> int:
        """SIGTERM, wait ``grace_s``, then SIGKILL the whole process group. Returns the exit code."""
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            if self.wait(grace_s) is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.wait(5)
        self._log.close()
        return self.popen.returncode if self.popen.returncode is not None else -9


class ProcessGroup:
    """The processes of one scenario; a context manager that always stops all of them."""

    def __init__(self, log_dir: Path, sample_s: float = 0.5) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, Proc] = {}
        self.sample_s = sample_s
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample_loop, name="bench-sampler", daemon=True)
        self._sampler.start()

    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        proc = Proc(name, argv, self.log_dir, env)
        self.procs[name] = proc
        return proc

    def _sample_loop(self) -> None:
        while not self._stop.wait(self.sample_s):
            for proc in list(self.procs.values()):
                proc.sample()

    def resources(self) -> dict[str, dict[str, Any]]:
        return {name: p.resources() for name, p in self.procs.items()}

    def check_alive(self, *names: str) -> None:
        for name in names:
            self.procs[name].check_alive()

    def stop_all(self) -> None:
        self._stop.set()
        for proc in reversed(list(self.procs.values())):
            proc.stop(grace_s=5)

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def wait_for_file(path: Path, timeout: float, watch: Sequence[Proc] = ()) -> None:
    """Wait until ``path`` exists; fail early (with the log) if a watched process died."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        for p in watch:
            p.check_alive()
        if time.monotonic() > deadline:
            names = ", ".join(f"{p.name} ({p.log_path})" for p in watch)
            raise HarnessError(f"timed out after {timeout:.0f} s waiting for {path.name}; processes: {names}")
        time.sleep(0.05)
