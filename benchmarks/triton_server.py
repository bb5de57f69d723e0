"""A local, CPU-only Triton Inference Server for tests, benchmarks and trying ``--backend triton`` out.

PyPI's ``nvidia-pytriton`` (Apache-2.0) ships a real ``tritonserver`` (2.51 in 0.7.0) with the Python backend
only: no ONNX Runtime or TensorRT backend, so a repository for it is written with ``medstream triton-repo
--backend python-onnxruntime`` (ONNX Runtime inside the Python backend). What this module handles, as measured
on the development machine:

* ``nvidia-pytriton`` 0.7.0 pins ``numpy<2``, which medstream's environment does not: the server runs from its
  OWN virtual environment (created once, cached in ``~/.cache/medstream/pytriton-venv``, or
  ``$MEDSTREAM_PYTRITON_VENV``), with ``onnxruntime`` beside it for the Python-backend model. medstream's own
  environment needs only ``tritonclient`` (the ``[triton]`` extra).
* The Python backend's stub loads ``libpython3.X.so`` through the library path; the system's (Debian 3.11.2)
  differs from the interpreter's patch release and crashes in ``multiprocessing.resource_tracker``. The server
  is started with ``LD_LIBRARY_PATH`` = the wheel's libraries + the interpreter's own ``LIBDIR``.
* It listens on loopback only (``--grpc-address``/``--http-address 127.0.0.1``; its default is 0.0.0.0).

Command line (``python -m medstream.benchmarks.triton_server``): ``--prepare`` creates the environment
(``scripts/test.sh`` runs it); ``--serve REPO [--grpc-port 8001 --http-port 8000]`` serves a repository until
Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PYTRITON_VERSION = "0.7.0"
SERVER_PACKAGES = (f"nvidia-pytriton=={PYTRITON_VERSION}", "onnxruntime")
READY_MARK = ".medstream-ready.json"


def venv_dir() -> Path:
    return Path(os.environ.get("MEDSTREAM_PYTRITON_VENV", Path.home() / ".cache" / "medstream" / "pytriton-venv"))


def why_cannot_run() -> str | None:
    """Why the wheel's server cannot run on this machine, or ``None`` when it can (checked without installing)."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return f"the nvidia-pytriton wheel is for Linux x86-64 only (this is {sys.platform} {platform.machine()})"
    libc, version = platform.libc_ver()
    if libc == "glibc" and tuple(int(x) for x in version.split(".")[:2]) < (2, 35):
        return f"the nvidia-pytriton wheel needs glibc 2.35 or newer (manylinux_2_35); this machine has {version}"
    if not _libpython().is_file():
        return (f"the Python backend stub needs {_libpython()} (a shared libpython); this interpreter was built "
                "without it (--enable-shared)")
    return None


def _libpython() -> Path:
    import sysconfig

    libdir = sysconfig.get_config_var("LIBDIR") or ""
    return Path(libdir) / f"libpython{sys.version_info.major}.{sys.version_info.minor}.so"


def _base_python() -> str:
    """The interpreter this venv's Python comes from (a venv made from a venv would nest them)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def prepare(quiet: bool = True) -> Path:
    """Create (once) the server's environment and a runnable copy of the server; return the venv folder.

    Concurrent callers wait for each other (a lock file); a half-made environment is rebuilt.
    """
    reason = why_cannot_run()
    if reason:
        raise RuntimeError(reason)
    root = venv_dir()
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        mark = root / READY_MARK
        if mark.is_file():
            return root
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run([_base_python(), "-m", "venv", str(root)], check=True)
        pip = [str(root / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
               *(["-q"] if quiet else []), *SERVER_PACKAGES]
        subprocess.run(pip, check=True)
        _stage_server(root)
        info = {"packages": list(SERVER_PACKAGES), "python": sys.version.split()[0], "libdir": str(_libpython().parent)}
        mark.write_text(json.dumps(info))
    return root


def _site_packages(root: Path) -> Path:
    return root / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _stage_server(root: Path) -> None:
    """A copy of the wheel's tritonserver with the Python backend stub of this Python version in place."""
    site = _site_packages(root)
    dist = site / "pytriton" / "tritonserver"
    staged = root / "tritonserver"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(dist, staged, ignore=shutil.ignore_patterns("python_backend_stubs"))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = dist / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise RuntimeError(f"nvidia-pytriton {PYTRITON_VERSION} has no Python backend stub for Python {version}")
    shutil.copy2(stub, staged / "backends" / "python" / "triton_python_backend_stub")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalTriton:
    """``tritonserver`` on loopback serving ``repository``: a context manager; ``kill``/``start`` for outage tests.

    The ports stay the same across restarts, so a client's URL stays valid.
    """

    def __init__(self, repository: str | Path, *, grpc_port: int | None = None, http_port: int | None = None,
                 log_path: str | Path | None = None, extra_args: tuple[str, ...] = ()) -> None:
        self.root = prepare()
        self.repository = Path(repository)
        self.grpc_port = grpc_port or _free_port()
        self.http_port = http_port or _free_port()
        self.log_path = Path(log_path) if log_path else self.repository.parent / "tritonserver.log"
        self.extra_args = tuple(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def command(self) -> list[str]:
        server = self.root / "tritonserver"
        return [str(server / "bin" / "tritonserver"), "--model-repository", str(self.repository),
                "--backend-directory", str(server / "backends"), "--cache-directory", str(server / "caches"),
                "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc_port),
                "--http-address", "127.0.0.1", "--http-port", str(self.http_port),
                "--allow-metrics", "false", "--exit-timeout-secs", "5", *self.extra_args]

    def environment(self) -> dict[str, str]:
        libs = _site_packages(self.root) / "nvidia_pytriton.libs"
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (str(libs), str(_libpython().parent),
                                                      env.get("LD_LIBRARY_PATH", "")) if p)
        env["PATH"] = f"{self.root / 'bin'}:{env.get('PATH', '')}"
        env.pop("VIRTUAL_ENV", None)
        env.pop("PYTHONPATH", None)
        return env

    def start(self, timeout_s: float = 60.0) -> LocalTriton:
        if self.proc is not None and self.proc.poll() is None:
            return self
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child holds it; closed with the process
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.environment(),
                                     start_new_session=True)
        log.close()
        self.wait_ready(timeout_s)
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=1) as r:  # noqa: S310 - loopback
                return r.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {self.proc.returncode}; log {self.log_path}:\n"
                                   f"{self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"tritonserver was not ready within {timeout_s:.0f} s; log {self.log_path}:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        return ""

    def kill(self) -> None:
        """SIGKILL, as a crash or a pulled cable would: no goodbye to the clients."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None

    def __enter__(self) -> LocalTriton:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medstream.benchmarks.triton_server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepare", action="store_true", help="create the server's environment (cached) and exit")
    p.add_argument("--serve", metavar="REPO", help="serve this model repository on loopback until Ctrl-C")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    args = p.parse_args(argv)
    reason = why_cannot_run()
    if reason:
        print(f"cannot run the local Triton server here: {reason}", file=sys.stderr)
        return 2
    if args.prepare:
        print(f"Triton server environment ready: {prepare(quiet=False)}")
    if args.serve:
        def _stop(_signum: int, _frame: object) -> None:  # SIGTERM as Ctrl-C: the server is stopped, not orphaned
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _stop)
        server = LocalTriton(args.serve, grpc_port=args.grpc_port, http_port=args.http_port,
                             log_path=Path(args.serve).resolve().parent / "tritonserver.log")
        with server:
            print(f"serving {args.serve}: {server.grpc_url} (gRPC), {server.http_url} (HTTP); log {server.log_path}; "
                  "Ctrl-C stops", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                while server.proc is not None and server.proc.poll() is None:
                    time.sleep(0.5)
    if not (args.prepare or args.serve):
        p.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
