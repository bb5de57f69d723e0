"""What the web view adds to an overlay's age: simulate -> run -> view --web -> headless Chromium.

Runs the three medstream processes on loopback ports, opens the page in Debian's Chromium through
Selenium (never a downloaded browser) for ``--seconds``, and reads the page's own measurements
(``window.medstreamView.stats()``): for every overlay it drew, its age at the moment it was drawn,
on the server's clock estimated by the page from a ping exchange (the pong with the shortest round
trip of the last 30 wins; the offset is known to +- half that round trip):

* ``age_at_draw``: capture -> drawn in the browser (what the person looking at the page sees);
* ``runtime``: capture -> published by ``medstream run`` (``t_publish - t_capture``, both in the
  overlay);
* ``web_added``: published -> drawn, what the web path adds (SUB, pairing with the frame, JPEG + PNG
  encoding, websocket, decode and draw in the page).

Prints the percentiles and writes them to ``benchmarks/results/web_latency.json``::

    python -m medstream.benchmarks.web_latency --seconds 20

Needs the ``[web]`` extra, Selenium (the ``dev`` extra) and ``apt-get install chromium chromium-driver``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Flags for a headless Chromium in a container: no sandbox (no user namespaces here), no GPU, and no
#: traffic of its own (no QUIC, no component updates, sync or background networking).
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--force-color-profile=srgb", "--window-size=1280,900")
MEDSTREAM = [sys.executable, "-m", "medstream.cli.main"]
RESULTS = Path(__file__).resolve().parent / "results" / "web_latency.json"


def browser_missing() -> str | None:
    """Why a headless browser cannot run here (``None`` when it can)."""
    for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} is missing: apt-get install {pkg}"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[dev]'"
    return None


@contextmanager
def headless_chromium():
    """A Selenium driver for Debian's Chromium with a fresh profile; Selenium Manager is never asked to
    download anything (explicit binary and driver paths, ``SE_OFFLINE``)."""
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="medstream-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(MEDSTREAM + args, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True, env=env)


def wait_for_url(log: Path, proc: subprocess.Popen, timeout: float = 30.0) -> str:
    """The token URL the web view prints at start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r"open (https?://\S+\?token=\S+)", log.read_text())
        if m:
            return m.group(1)
        if proc.poll() is not None:
            raise RuntimeError(f"the web view exited with {proc.returncode}: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"the web view printed no URL within {timeout:.0f} s: {log.read_text()[-2000:]}")


@contextmanager
def pipeline(workdir: Path, *, rate: float = 30.0, threads: int = 1, stale_ms: float = 1000.0,
             model: str | None = None):
    """simulate -> run -> view --web on free loopback ports; yields a dict with the processes and the URL."""
    frames, overlays, web = free_port(), free_port(), free_port()
    procs: dict[str, subprocess.Popen] = {}
    try:
        run_args = ["run", "--source", f"zmq+tcp://127.0.0.1:{frames}", "--publish", f"tcp://127.0.0.1:{overlays}",
                    "--threads", str(threads)]
        if model:
            run_args += ["--model", model]
        procs["web"] = spawn(["view", "--web", f"127.0.0.1:{web}", "--connect", f"tcp://127.0.0.1:{overlays}",
                              "--frames-from", f"tcp://127.0.0.1:{frames}", "--web-stale-ms", str(stale_ms)],
                             workdir / "web.log")
        procs["run"] = spawn(run_args, workdir / "run.log")
        procs["simulate"] = spawn(["simulate", "--publish", f"tcp://127.0.0.1:{frames}", "--rate", str(rate)],
                                  workdir / "simulate.log")
        url = wait_for_url(workdir / "web.log", procs["web"])
        yield {"url": url, "procs": procs, "ports": {"frames": frames, "overlays": overlays, "web": web},
               "workdir": workdir}
    finally:
        for name in ("simulate", "run", "web"):
            p = procs.get(name)
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def wait_js(driver: Any, expr: str, timeout: float, interval: float = 0.1) -> Any:
    """Poll a JavaScript expression until it is truthy; its value, or TimeoutError naming it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(f"return {expr};")
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{expr} stayed falsy for {timeout:.0f} s")


def percentiles(values: list[float]) -> dict[str, float | int]:
    import numpy as np

    if not values:
        return {"n": 0}
    a = np.asarray(values, dtype=float)
    return {"n": int(a.size), "p50": round(float(np.percentile(a, 50)), 2), "p90": round(float(np.percentile(a, 90)), 2),
            "p99": round(float(np.percentile(a, 99)), 2), "max": round(float(a.max()), 2)}


def measure(seconds: float, warmup: float = 3.0, rate: float = 30.0, threads: int = 1) -> dict[str, Any]:
    why = browser_missing()
    if why:
        raise SystemExit(f"cannot run the web latency benchmark: {why}")
    with tempfile.TemporaryDirectory(prefix="medstream-weblat-") as tmp, \
            pipeline(Path(tmp), rate=rate, threads=threads) as pipe, headless_chromium() as driver:
        driver.get(pipe["url"])
        wait_js(driver, "window.medstreamView && window.medstreamView.seq !== null", 60)
        time.sleep(warmup)
        driver.execute_script("window.medstreamView.resetStats();")
        time.sleep(seconds)
        stats = driver.execute_script("return window.medstreamView.stats();")
        status = driver.execute_script("return window.medstreamView.overlayHeader();")
    return {
        "command": f"python -m medstream.benchmarks.web_latency --seconds {seconds:g} --rate {rate:g} --threads {threads}",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "browser": subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout.strip()},
        "seconds": seconds, "rate_fps": rate, "run_threads": threads,
        "views_drawn": len(stats["ages_at_draw_ms"]), "views_per_s": round(len(stats["ages_at_draw_ms"]) / seconds, 2),
        "clock_offset_ms": round(stats["offset_ms"], 3), "clock_best_rtt_ms": round(stats["best_rtt_ms"], 3),
        "age_at_draw_ms": percentiles(stats["ages_at_draw_ms"]),
        "runtime_capture_to_publish_ms": percentiles(stats["publish_ages_ms"]),
        "web_added_ms": percentiles(stats["added_ms"]),
        "page_client_counters": stats["client"], "web_counters": stats["web"],
        "model_id": (status or {}).get("model_id"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=20.0, help="measuring time after a warm-up (default 20)")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--rate", type=float, default=30.0, help="simulated frame rate (default 30)")
    p.add_argument("--threads", type=int, default=1, help="medstream run --threads (default 1: leaves a core for the rest)")
    p.add_argument("--out", default=str(RESULTS), help=f"JSON output (default {RESULTS})")
    args = p.parse_args(argv)
    result = measure(args.seconds, args.warmup, args.rate, args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for key in ("age_at_draw_ms", "runtime_capture_to_publish_ms", "web_added_ms"):
        r = result[key]
        print(f"{key:32s} n={r.get('n')}  p50 {r.get('p50')}  p90 {r.get('p90')}  p99 {r.get('p99')}  max {r.get('max')}")
    print(f"views drawn {result['views_drawn']} ({result['views_per_s']}/s); clock offset {result['clock_offset_ms']} ms "
          f"+- {result['clock_best_rtt_ms'] / 2:.3f}; dropped for the page: {result['page_client_counters']['dropped']}")
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
