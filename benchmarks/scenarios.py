"""The benchmark scenarios: floor, transport, pipeline, glass, overload, naive, streams. Each runs alone.

Every scenario returns one dict (see :func:`_result`) with the same keys, so the report can put
them side by side:

* ``latency_ms``: the headline figures (p10..p99.9, max, tail, flatness). ``floor``: compute time of
  one inference; ``pipeline``: capture -> overlay ready (``stages_ms.total``) in-process; ``glass``,
  ``overload``, ``naive``, ``streams``, ``transport`` (glass with a no-work relay in place of the
  runtime): age at arrival in a separate subscriber process.
* ``latency_ms_co``: the same corrected for coordinated omission (fixed-rate scenarios).
* ``stages_ms``: per-stage figures from the overlay headers (plus ``wire_out`` and ``ingress``).
* ``throughput_fps``, ``capacity_fps``, ``drops`` (by reason), ``accounting``, ``resources``.

Rates: ``capacity = 1000 / floor_p50`` overlays per second (``floor`` is run briefly first when a
scenario needs it and it has not run). ``glass`` runs at ``glass_fraction`` (0.6) of capacity,
``overload`` and the naive overload at 2x, each capped at ``max_rate`` (what the simulator can render).
With ``rounds`` > 1 the whole list runs that many times, each round starting with its floor, and
each scenario's rounds are pooled (``benchmarks.pooling``).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medstream.benchmarks import harness, pooling
from medstream.benchmarks.subscriber import STAGES, cdf_points, encode_histogram, figures, new_histogram

log = logging.getLogger("medstream.bench")

SCENARIOS = ("floor", "transport", "pipeline", "glass", "overload", "naive", "streams", "igtl")
#: What ``medstream bench`` runs without names: ``igtl`` (4 chains, OpenIGTLink vs ZeroMQ at two frame sizes,
#: benchmarks/igtl_glass.py) is asked for by name.
DEFAULT_SCENARIOS = tuple(n for n in SCENARIOS if n != "igtl")


@dataclass
class Settings:
    """What every scenario of one ``medstream bench`` run shares."""

    model: str
    model_path: Path
    out_dir: Path
    duration_s: float = 15.0
    rate: float | None = None          # fixed source rate for glass/naive-under/streams (fps); None: derived
    overload_rate: float | None = None  # None: 2x capacity
    streams: int = 2
    threads: int = 1
    backend: str = "onnxruntime"        # every scenario's backend (medstream bench --backend)
    precision: str = "auto"             # OpenVINO's precision (--precision); other backends: auto
    triton_url: str | None = None       # backend triton: the server (medstream bench starts a local one if None)
    triton_model: str | None = None     # backend triton: the model's name there (default: the contract's model_id)
    rounds: int = 1                     # the whole suite this many times, pooled (benchmarks.pooling)
    round_tag: str = ""                 # "round2": output subfolder of the round being run
    fixed_capacity: float | None = None  # after round 1: every round runs at the same rates
    warmup_s: float = 2.0
    floor_runs: int = 300
    glass_fraction: float = 0.6
    overload_factor: float = 2.0
    max_rate: float = 240.0
    inject_delay_ms: dict[str, float] = field(default_factory=dict)  # planted delays (harness tests)
    naive_delay_ms: float = 0.0
    drain_timeout_s: float = 30.0
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def contract(self):
        if "contract" not in self.cache:
            from medstream.runtime.models.loader import read_model_contract

            self.cache["contract"] = read_model_contract(self.model_path)
        return self.cache["contract"]

    @property
    def sim_kind(self) -> str:
        return "fluoroscopy" if getattr(self.contract, "modality", "") == "fluoroscopy" else "ultrasound"

    @property
    def frame_hw(self) -> tuple[int, int]:
        return (self.contract.input.height, self.contract.input.width)


def default_threads() -> int:
    """ONNX Runtime intra-op threads for the benchmark: every usable core, as ``medstream run`` uses.

    The simulator replays pre-rendered frames (``--preload``) and the subscriber only timestamps, so
    neither needs a core of its own. Measured on the 2-core development machine (ultrasound U-Net,
    256x256): 1 thread ~40 ms per inference, 2 threads ~21 ms; the floor and every scenario use the
    same count, so their comparison stays fair. ``--threads`` overrides it.
    """
    from medstream.runtime.backends.onnxruntime_backend import default_threads as usable

    return usable()


def _result(name: str, **kw: Any) -> dict[str, Any]:
    base = {"scenario": name, "latency_ms": {}, "latency_ms_co": None, "stages_ms": {}, "throughput_fps": None,
            "rate_fps": None, "capacity_fps": None, "drops": {}, "accounting": None, "resources": {}, "timeline": [],
            "cdf": [], "notes": []}
    base.update(kw)
    return base


# ------------------------------------------------------------------------------------------ floor
def floor(s: Settings, runs: int | None = None, duration_s: float | None = None) -> dict[str, Any]:
    """Backend compute alone: ``OnnxRuntimeBackend.infer`` on one preallocated, preprocessed frame.

    ``runs`` and ``duration_s`` (default ``s.floor_runs``, ``s.duration_s``) bound one round; the
    result also becomes the capacity reference (``s.cache["floor"]``) until a pooled floor replaces it.
    """
    runs = runs or s.floor_runs
    # In rounds every floor takes the same number of inferences (as every other scenario runs for the same
    # time at the same rate), so each round weighs the same when pooled; the time limit only guards a
    # machine far slower than expected.
    duration_s = duration_s or (s.duration_s if s.rounds <= 1 else max(4 * s.duration_s, 30.0))
    from medstream.runtime.backends import load_backend
    from medstream.runtime.models.loader import load_model
    from medstream.runtime.phantom import make_phantom

    c = s.contract
    backend = load_backend(load_model(s.model_path, backend=s.backend, precision=s.precision, triton=_triton(s)),
                           **_backend_options(s))
    backend.activate()
    pre = backend.make_preprocessor()
    image, _ = make_phantom(s.sim_kind, fps=30, height=c.input.height, width=c.input.width, seed=0).render(0)
    x = {c.input.name: pre(image, "gray").copy()}
    warm = max(5, runs // 20)
    for _ in range(warm):
        backend.infer(x)
    hist = new_histogram()
    timeline, t0 = [], time.perf_counter()
    deadline = t0 + max(duration_s, 1.0)
    n = 0
    while n < runs and time.perf_counter() < deadline:
        t_call = time.perf_counter()
        backend.infer(x)
        # a remote backend's floor is the whole round trip: that, not the server's compute, bounds one stream
        ms = (time.perf_counter() - t_call) * 1000 if s.backend == "triton" else backend.last_compute_ms
        hist.record_value(max(1, int(ms * 1000)))
        timeline.append([round(time.perf_counter() - t0, 4), round(ms, 3), 1])
        n += 1
    backend.deactivate()
    fig = figures(hist)
    cap = 1000.0 / fig["p50"] if fig.get("p50") else None
    res = _result("floor", latency_ms=fig, capacity_fps=cap, throughput_fps=n / max(time.perf_counter() - t0, 1e-9),
                  timeline=timeline, cdf=cdf_points(hist), runs=n, warmup_runs=warm,
                  histograms={"age": encode_histogram(hist)},
                  backend=backend.describe(),
                  notes=[f"{warm} warm-up inferences excluded; {n} timed ({backend.name}, {backend.precision}, "
                         f"threads {s.threads})"])
    s.cache["floor"] = res
    return res


def _backend_options(s: Settings) -> dict[str, Any]:
    """The floor's runner options for ``s.backend`` (as ``medstream run`` gives them: stream/assembly.py)."""
    if s.backend == "openvino":
        return {"threads": s.threads, "precision": s.precision}
    if s.backend == "tensorrt":
        return {}
    if s.backend == "triton":
        return {}
    return {"intra_op_threads": s.threads}


def _triton(s: Settings) -> Any:
    """Backend triton: the server the scenarios use (``None`` for local backends)."""
    if s.backend != "triton":
        return None
    from medstream.runtime.backends.triton_backend import TritonTarget

    return TritonTarget(url=s.triton_url or "", model=s.triton_model)


def _run_flags(s: Settings) -> list[str]:
    """``medstream run`` flags for the bench's backend, precision and threads."""
    flags = ["--backend", s.backend, "--threads", str(s.threads)]
    if s.backend == "triton":
        flags += ["--triton-url", s.triton_url or ""] + (["--triton-model", s.triton_model] if s.triton_model else [])
    return flags + (["--precision", s.precision] if s.precision != "auto" else [])


def _floor(s: Settings) -> dict[str, Any]:
    if "floor" not in s.cache:
        floor(s, runs=min(s.floor_runs, 100), duration_s=min(s.duration_s, 3.0))
    return s.cache["floor"]


def capacity(s: Settings) -> float:
    """Overlays/s the model allows: 1000 / floor p50 (plus any planted per-frame delay)."""
    if s.fixed_capacity:
        return s.fixed_capacity
    p50 = _floor(s)["latency_ms"]["p50"] + sum(s.inject_delay_ms.values())
    return 1000.0 / p50


def under_rate(s: Settings) -> float:
    return s.rate if s.rate else min(s.glass_fraction * capacity(s), s.max_rate)


def over_rate(s: Settings) -> float:
    return s.overload_rate if s.overload_rate else min(s.overload_factor * capacity(s), s.max_rate)


# --------------------------------------------------------------------------------------- pipeline
def pipeline(s: Settings) -> dict[str, Any]:
    """The runtime in-process: synthetic source (under capacity) -> preprocess -> infer -> postprocess."""
    from medstream.runtime.config import load_config
    from medstream.runtime.observers import PipelineObserver
    from medstream.runtime.stream import build_stream

    rate = under_rate(s)
    h, w = s.frame_hw

    class Recorder(PipelineObserver):
        def __init__(self) -> None:
            self.t0: float | None = None
            self.hists: dict[str, Any] = {}
            self.timeline: list[list[float]] = []

        def on_frame(self, outcome: str, overlay: Any, stages_ms: dict[str, float]) -> None:
            if outcome != "processed":
                return
            now = time.monotonic()
            self.t0 = self.t0 or now
            measured = now - self.t0 >= s.warmup_s
            self.timeline.append([round(now - self.t0, 4), round(stages_ms.get("total", 0.0), 3), int(measured)])
            if measured:
                for k, v in stages_ms.items():
                    self.hists.setdefault(k, new_histogram()).record_value(max(1, int(v * 1000)))

    rec = Recorder()
    cfg = load_config(None, {"source": f"synthetic://{s.sim_kind}?fps={rate:.3f}&width={w}&height={h}&truth=0",
                             "model": str(s.model_path), "backend": s.backend, "precision": s.precision,
                             "threads": s.threads, "triton_url": s.triton_url, "triton_model": s.triton_model,
                             "publish": f"tcp://127.0.0.1:{harness.free_port()}",
                             "inject": {"delay_ms": dict(s.inject_delay_ms)}})
    with build_stream(cfg, observers=[rec]) as pipe:
        pipe.prepare()
        summary = pipe.run(duration_s=s.duration_s)
    stages = {k: figures(hh) for k, hh in rec.hists.items()}
    total = rec.hists.get("total")
    c = summary["counters"]
    n = total.get_total_count() if total else 0
    return _result("pipeline", latency_ms=stages.get("total", {}), stages_ms=stages, rate_fps=rate,
                   throughput_fps=n / max(s.duration_s - s.warmup_s, 1e-9), capacity_fps=capacity(s),
                   drops=c["dropped"], accounting=_accounting(summary), timeline=rec.timeline,
                   cdf=cdf_points(total) if total else [],
                   histograms={"age": encode_histogram(total or new_histogram()), "age_co": None,
                               "stages": {k: encode_histogram(hh) for k, hh in rec.hists.items()}},
                   notes=[f"warm-up: first {s.warmup_s:g} s after the first overlay excluded",
                          "latency = capture (phantom rendered in the receiver thread) -> overlay ready to publish"])


def _accounting(summary: dict[str, Any]) -> dict[str, Any]:
    c = summary["counters"]
    return {"received": c["received"], "processed": c["processed"], "published": c.get("published"),
            "dropped_total": c["dropped_total"], "in_flight": c.get("in_flight", 0),
            "exact": c["received"] == c["processed"] + c["dropped_total"], "accounting_ok": summary.get("accounting_ok")}


# ------------------------------------------------------------------------------- multi-process
def stream(s: Settings, name: str, rate: float, *, engine: str = "medstream", n_streams: int = 1) -> dict[str, Any]:
    """``simulate`` -> ``run`` (or the naive loop) -> subscriber, N independent copies at once."""
    out = s.out_dir / name / s.round_tag  # round_tag "" adds nothing
    out.mkdir(parents=True, exist_ok=True)
    h, w = s.frame_hw
    frames = max(1, int(round(rate * s.duration_s)))
    interval_ms = 1000.0 / rate
    lanes = []
    # medstream serves several streams from ONE process and one model session (config `streams:`); the
    # naive loop and the relay have no such mode, so they run one process per stream.
    # Backend triton: one process per stream, all against the one server (its dynamic batcher does the sharing).
    shared = engine == "medstream" and n_streams > 1 and s.backend != "triton"
    shared_pub = f"tcp://127.0.0.1:{harness.free_port()}"
    with harness.ProcessGroup(out) as group:
        sims = [f"tcp://127.0.0.1:{harness.free_port()}" for _ in range(n_streams)]
        if shared:
            cfg = out / "run.yaml"
            cfg.write_text(json.dumps({  # JSON is YAML
                "streams": [{"uri": f"zmq+{ep}", "id": f"bench{i}"} for i, ep in enumerate(sims)],
                **({"inject": {"delay_ms": s.inject_delay_ms}} if s.inject_delay_ms else {})}))
            shared_worker = group.spawn("run", harness.medstream_cmd(
                "--log-level", "WARNING", "run", "--config", str(cfg), "--model", str(s.model_path),
                *_run_flags(s), "--publish", shared_pub,
                "--summary", str(out / "run_summary.json")))
        for i in range(n_streams):
            tag = f"{i}" if n_streams > 1 else ""
            sim_ep, pub_ep = sims[i], (shared_pub if shared else f"tcp://127.0.0.1:{harness.free_port()}")
            if shared:
                worker = shared_worker
            elif engine == "medstream":
                argv = ["--log-level", "WARNING", "run", "--source", f"zmq+{sim_ep}", "--model", str(s.model_path),
                        *_run_flags(s), "--publish", pub_ep,
                        "--summary", str(out / f"run{tag}_summary.json"), "--source-id", f"bench{tag}"]
                if s.inject_delay_ms:
                    cfg = out / f"run{tag}.yaml"
                    cfg.write_text(json.dumps({"inject": {"delay_ms": s.inject_delay_ms}}))  # JSON is YAML
                    argv += ["--config", str(cfg)]
                worker = group.spawn(f"run{tag}", harness.medstream_cmd(*argv))
            elif engine == "relay":
                worker = group.spawn(f"relay{tag}", harness.module_cmd(
                    "medstream.benchmarks.relay", "--model", str(s.model_path), "--source", sim_ep, "--publish", pub_ep,
                    "--summary", str(out / f"relay{tag}_summary.json")))
            else:
                argv = ["--model", str(s.model_path), "--source", sim_ep, "--publish", pub_ep,
                        "--threads", str(s.threads), "--summary", str(out / f"naive{tag}_summary.json"),
                        *(["--backend", s.backend, "--precision", s.precision] if s.backend == "openvino" else [])]
                if s.naive_delay_ms:
                    argv += ["--delay-ms", str(s.naive_delay_ms)]
                worker = group.spawn(f"naive{tag}", harness.module_cmd("medstream.benchmarks.naive_loop", *argv))
            ready = out / f"subscriber{tag}.ready"
            ready.unlink(missing_ok=True)
            sub = group.spawn(f"subscriber{tag}", harness.module_cmd(
                "medstream.benchmarks.subscriber", "--connect", pub_ep, "--out", str(out / f"subscriber{tag}.json"),
                "--interval-ms", f"{interval_ms:.6f}", "--warmup-s", str(s.warmup_s), "--ready-file", str(ready),
                "--idle-exit-s", "2.0", "--max-s", str(s.duration_s * 3 + s.drain_timeout_s + 120),
                *(["--stream", f"bench{i}"] if shared else [])))
            lanes.append({"tag": tag, "worker": worker, "sub": sub, "ready": ready, "sim_ep": sim_ep})
        for lane in lanes:
            harness.wait_for_file(lane["ready"], 90, [lane["worker"], lane["sub"]])
        for lane in lanes:
            lane["sim"] = group.spawn(f"simulate{lane['tag']}", harness.medstream_cmd(
                "--log-level", "WARNING", "simulate", "--kind", s.sim_kind, "--rate", f"{rate:.4f}",
                "--publish", lane["sim_ep"], "--frames", str(frames), "--width", str(w), "--height", str(h),
                "--wait-subscribers", "1", "--wait-timeout", "90",
                # The phantom's clock stays at its clinical rate whatever the send rate (fluoroscopy's
                # phantom accepts only pulse rates), so every rate replays the same scene.
                "--motion-fps", str(30.0 if s.sim_kind == "ultrasound" else 15.0),
                # Pre-rendered frames: the simulator must not take CPU from the model under test.
                "--preload", "300"))
        deadline = time.monotonic() + s.duration_s + 120  # model load + the stream itself
        for lane in lanes:
            code = lane["sim"].wait(max(1.0, deadline - time.monotonic()))
            if code is None:
                raise harness.HarnessError(f"simulator {lane['sim'].name} did not finish {frames} frames in time; "
                                           f"logs in {out}")
            if code != 0:
                raise harness.HarnessError(f"simulator {lane['sim'].name} failed (exit code {code}); its log "
                                           f"{lane['sim'].log_path}:\n{lane['sim'].log_tail()}")
        # Drain: the subscriber exits 2 s after its last overlay; the naive loop may have a backlog.
        drain_deadline = time.monotonic() + (s.drain_timeout_s if engine != "naive"
                                             else s.drain_timeout_s + s.duration_s * s.overload_factor)
        unfinished = []
        for lane in lanes:
            if lane["sub"].wait(max(1.0, drain_deadline - time.monotonic())) is None:
                unfinished.append(lane["sub"].name)
        resources = group.resources()
    # leaving the group sent SIGTERM to run/naive (summary written) and to any subscriber still waiting
    if shared:
        _split_shared_summary(out, n_streams)
    per_stream = []
    for lane in lanes:
        per_stream.append(_lane_result(s, out, lane["tag"], engine, rate, frames, interval_ms, resources,
                                       lane["sim"].log_path, lane["sub"].name in unfinished))
    return per_stream[0] if n_streams == 1 else _merge_streams(name, per_stream, rate)


def _split_shared_summary(out: Path, n_streams: int) -> None:
    """One multi-stream run's summary as one ``run<i>_summary.json`` per stream (what each lane reads)."""
    from medstream.runtime.files import write_json_atomic

    path = out / "run_summary.json"
    if not path.is_file():
        return
    summary = json.loads(path.read_text())
    for i, lane in enumerate(summary.get("streams", [])[:n_streams]):
        write_json_atomic(out / f"run{i}_summary.json", lane)


def _lane_result(s: Settings, out: Path, tag: str, engine: str, rate: float, frames: int, interval_ms: float,
                 resources: dict[str, Any], sim_log: Path, cut_short: bool) -> dict[str, Any]:
    sub_path = out / f"subscriber{tag}.json"
    if not sub_path.is_file():
        raise harness.HarnessError(f"the measuring subscriber wrote no result ({sub_path}); see its log in {out}")
    sub = json.loads(sub_path.read_text())
    worker = f"run{tag}" if engine == "medstream" else f"{engine}{tag}"
    summary_path = out / f"{worker}_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    m = re.search(r"sent (\d+) frames", sim_log.read_text(errors="replace")) if sim_log.is_file() else None
    sent = int(m.group(1)) if m else None
    notes = [f"warm-up: overlays arriving in the first {s.warmup_s:g} s excluded ({sub['received'] - sub['measured']} of "
             f"{sub['received']})", f"source {rate:.1f} fps for {s.duration_s:g} s ({frames} frames)"]
    if engine == "medstream" and summary:
        accounting = _accounting(summary)
        drops = summary["counters"]["dropped"]
    elif summary:
        dropped = summary.get("dropped_total", 0)
        accounting = {"received": summary["received"], "processed": summary["processed"], "dropped_total": dropped,
                      "exact": summary["received"] == summary["processed"] + dropped, "seq_gaps": summary.get("seq_gaps"),
                      "unprocessed_at_stop": (sent or 0) - summary["processed"] - dropped}
        drops = summary.get("dropped", {})
    else:
        accounting, drops = None, {}
        notes.append(f"{worker} wrote no summary (killed?)")
    if accounting is not None:
        accounting["sent_by_source"] = sent
        accounting["overlays_at_subscriber"] = sub["received"]
    if cut_short:
        notes.append(f"stopped after the drain timeout ({s.drain_timeout_s:g} s): frames were still queued")
    cap = capacity(s)
    return _result(
        "", latency_ms=sub["age_ms"], latency_ms_co=sub.get("age_ms_co"), stages_ms=sub["stages_ms"],
        throughput_fps=sub["throughput_fps"], rate_fps=rate, capacity_fps=cap, drops=drops, accounting=accounting,
        resources={k[:-len(tag)] if tag and k.endswith(tag) else k: v for k, v in resources.items()
                   if not tag or k.endswith(tag)},
        timeline=sub["timeline"], cdf=sub["cdf"], engine=engine, seq_gaps=sub.get("seq_gaps"),
        histograms=sub.get("histograms"),
        out_of_order=sub.get("out_of_order"), notes=notes)


def _merge_streams(name: str, lanes: list[dict[str, Any]], rate: float) -> dict[str, Any]:
    """All streams' figures, plus the worst stream as the headline."""
    worst = max(lanes, key=lambda r: r["latency_ms"].get("p99", 0.0))
    merged = dict(worst)
    merged["scenario"] = name
    merged["streams"] = [{k: v for k, v in r.items() if k not in ("timeline", "cdf")} for r in lanes]
    merged["throughput_fps"] = sum(r["throughput_fps"] or 0.0 for r in lanes)
    merged["notes"] = worst["notes"] + [f"{len(lanes)} streams at {rate:.1f} fps each; headline = the worst stream's p99"]
    return merged


def glass(s: Settings) -> dict[str, Any]:
    r = stream(s, "glass", under_rate(s))
    r["scenario"] = "glass"
    return r


def transport(s: Settings) -> dict[str, Any]:
    """The glass layout with ``benchmarks/relay.py`` in place of the runtime: no model, no postprocessing.
    What the ZeroMQ hops and process wake-ups alone cost on this machine (the floor under glass - floor)."""
    r = stream(s, "transport", under_rate(s), engine="relay")
    r["scenario"] = "transport"
    return r


def overload(s: Settings) -> dict[str, Any]:
    r = stream(s, "overload", over_rate(s))
    r["scenario"] = "overload"
    return r


def naive(s: Settings) -> dict[str, Any]:
    """The naive loop under capacity and in overload (same frames, rate, subscriber as glass/overload).

    Returns the under-capacity run with the overload run nested as ``overload`` (the report shows
    them as ``naive`` and ``naive_overload``).
    """
    under = stream(s, "naive", under_rate(s), engine="naive")
    under["scenario"] = "naive"
    over = stream(s, "naive_overload", over_rate(s), engine="naive")
    over["scenario"] = "naive_overload"
    under["overload"] = over
    return under


def streams(s: Settings) -> dict[str, Any]:
    n = max(1, s.streams)
    rate = s.rate if s.rate else min(s.glass_fraction * capacity(s) / n, s.max_rate)
    r = stream(s, "streams", rate, n_streams=n)
    r["scenario"] = "streams"
    return r


def igtl(s: Settings) -> dict[str, Any]:
    """OpenIGTLink glass to glass beside ZeroMQ at 256x256 and 1024x768 (:mod:`medstream.benchmarks.igtl_glass`)."""
    from medstream.benchmarks.igtl_glass import igtl as run

    return run(s)


RUNNERS = {"floor": floor, "transport": transport, "pipeline": pipeline, "glass": glass, "overload": overload, "naive": naive, "streams": streams, "igtl": igtl}


#: The folders ``stream`` writes under ``out_dir`` (cleared at the start of a run).
_FOLDERS = ("transport", "glass", "overload", "naive", "naive_overload", "streams", "igtl")


def _run_once(s: Settings, names: list[str]) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for name in sorted(names, key=SCENARIOS.index):
        log.info("bench: scenario %s (model %s, %g s%s)", name, s.model, s.duration_s,
                 f", {s.round_tag}" if s.round_tag else "")
        r = RUNNERS[name](s)
        if name == "naive":
            results["naive"] = r
            results["naive_overload"] = r.pop("overload")
        else:
            results[name] = r
    if "floor" not in results and "floor" in s.cache:
        results["floor"] = s.cache["floor"]  # the short floor run that gave the capacity
    return results


def run_scenarios(s: Settings, names: list[str]) -> dict[str, dict[str, Any]]:
    """Run ``names`` in order (floor first), ``s.rounds`` times, returning ``{name: result}``.

    With several rounds (``benchmarks.pooling`` says why), every round runs the whole list, floor
    included and first, at the rates the first round's floor gave; each scenario's rounds are then
    pooled, capacity is recomputed from the pooled floor, and ``rounds`` in the floor's result keeps
    every round's p50 and p99 of every scenario.
    """
    # One scenario's logs and samples, never a mix of this run's and an older one's; only the scenarios of this run
    # (`medstream bench igtl` into the default folder must not delete the glass or naive logs a report links to).
    this_run = set(names) | ({"naive_overload"} if "naive" in names else set())
    for folder in _FOLDERS:
        if folder in this_run:
            shutil.rmtree(s.out_dir / folder, ignore_errors=True)
    if s.rounds <= 1:
        return _run_once(s, names)
    names = list(dict.fromkeys(["floor", *names]))
    rounds: list[dict[str, dict[str, Any]]] = []
    for k in range(1, s.rounds + 1):
        s.round_tag = f"round{k}"
        s.cache.pop("floor", None)
        rounds.append(_run_once(s, names))
        if s.fixed_capacity is None:
            s.fixed_capacity = capacity(s)  # from round 1's floor: same rates in every round
    s.round_tag = ""
    pooled = {name: pooling.pool(name, [r[name] for r in rounds]) for name in rounds[0]}
    cap = 1000.0 / (pooled["floor"]["latency_ms"]["p50"] + sum(s.inject_delay_ms.values()))
    for r in pooled.values():
        r["capacity_fps"] = cap
        r["notes"].insert(0, f"rates from round 1's floor ({s.fixed_capacity:.1f}/s capacity); capacity shown and "
                             f"judged: the pooled floor's ({cap:.1f}/s)")
    pooled["floor"]["rounds"] = [{"round": k, **{name: pooling.round_figures(r[name]) for name in r}}
                                 for k, r in enumerate(rounds, 1)]
    s.cache["floor"] = pooled["floor"]
    return pooled


def stage_sum(stages: dict[str, Any], key: str = "p50") -> float:
    return float(np.sum([stages.get(k, {}).get(key, 0.0) for k in ("preprocess", "infer", "postprocess")]))


__all__ = ["DEFAULT_SCENARIOS", "SCENARIOS", "STAGES", "Settings", "capacity", "default_threads", "run_scenarios"]
