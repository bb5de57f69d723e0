"""Benchmark report: JSON with the full environment, a Markdown table and PNG plots.

A latency number without its machine is meaningless, so the JSON records CPU model, cores and flags, the
load average when the run started (a busy machine shows in the tail), GPU and driver when present,
library versions, ONNX Runtime threads, and on a Jetson the power mode and clocks.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from medstream.runtime.machine import MachineFacts, machine_facts, package_version

SCHEMA = "medstream.bench/1"
ORDER = ("floor", "transport", "pipeline", "glass", "overload", "naive", "naive_overload", "streams")
STAGE_COLUMNS = ("ingress", "queue", "preprocess", "infer", "compute", "postprocess", "wire_out", "total")

# Targets from issue 6 (shown on a quiet machine with the ultrasound reference model).
GLASS_P50_MARGIN_MS = 1.0
GLASS_P99_MARGIN_MS = 3.0
OVERLOAD_P99_FACTOR = 2.2
OVERLOAD_THROUGHPUT_FRACTION = 0.9


# ------------------------------------------------------------------------------------ environment
def _gpu_line(facts: MachineFacts) -> str | None:
    """One line per GPU: name, driver, memory, SM clock (``None`` without an NVIDIA GPU)."""
    if not facts.gpu.gpus:
        return None
    return "; ".join(f"{g.name}, driver {facts.gpu.driver}, {g.memory_mib} MiB"
                     + (f", SM {g.sm_clock_mhz} MHz" if g.sm_clock_mhz is not None else "") for g in facts.gpu.gpus)


def environment(threads: int | None = None) -> dict[str, Any]:
    """Everything about this machine that changes a latency figure.

    The machine's facts come from :func:`medstream.runtime.machine.machine_facts` (the one place
    they are gathered); what is added here belongs to this run: the load average at its start, the
    git commit, the versions of the libraries on the latency path and the ONNX Runtime threads.
    """
    import numpy
    import zmq

    from medstream.runtime.version import git_commit

    facts = machine_facts()
    cv2_version = None
    with contextlib.suppress(ImportError):
        import cv2

        cv2_version = cv2.__version__
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    jetson = asdict(facts.jetson) if facts.jetson is not None else None
    return {
        "hostname": facts.hostname,
        "os": facts.platform,
        "cpu_model": facts.cpu.model,
        "cpu_cores_logical": facts.cpu.cores,
        "cpu_cores_usable": facts.cpu.usable_cores,
        "cpu_flags": list(facts.cpu.flags),
        "memory_gb": facts.memory_gib,
        "load_average_at_start": [round(x, 2) for x in load] if load else None,
        "gpu": _gpu_line(facts),
        "jetson": jetson,
        "python": facts.python,
        "medstream": facts.medstream,
        "git_commit": git_commit(),
        "libraries": {"numpy": numpy.__version__, "onnxruntime": facts.onnxruntime.version,
                      "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(), "opencv": cv2_version,
                      "hdrhistogram": package_version("hdrhistogram"), "psutil": package_version("psutil"),
                      "matplotlib": package_version("matplotlib"),
                      "tensorrt": facts.tensorrt.full or facts.tensorrt.lean},
        "onnxruntime_providers": list(facts.onnxruntime.providers) if facts.onnxruntime.version else None,
        "onnxruntime_intra_op_threads": threads,
    }


# ---------------------------------------------------------------------------------------- targets
def _get(d: dict[str, Any] | None, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def evaluate_targets(scenarios: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured value, limit and verdict (``None``: not run)."""
    fl = _get(scenarios, "floor", "latency_ms") or {}
    gl = _get(scenarios, "glass", "latency_ms") or {}
    ov = scenarios.get("overload") or {}
    out = []

    def add(name: str, value: float | None, limit: float | None, ok: bool | None, unit: str = "ms") -> None:
        out.append({"target": name, "value": None if value is None else round(value, 3),
                    "limit": None if limit is None else round(limit, 3), "unit": unit, "pass": ok})

    if fl and gl and "p50" not in gl:  # no overlay arrived after warm-up: the target cannot be judged
        add("glass p50 - floor p50", None, GLASS_P50_MARGIN_MS, False)
    elif fl and gl:
        d50 = gl["p50"] - fl["p50"]
        d99 = gl["p99"] - fl["p99"]
        add("glass p50 - floor p50", d50, GLASS_P50_MARGIN_MS, d50 <= GLASS_P50_MARGIN_MS)
        add("glass p99 - floor p99", d99, GLASS_P99_MARGIN_MS, d99 <= GLASS_P99_MARGIN_MS)
    if fl and ov:
        p99 = ov["latency_ms"].get("p99")
        lim = OVERLOAD_P99_FACTOR * fl["p50"]
        add("overload p99 age", p99, lim, None if p99 is None else p99 <= lim)
        cap = ov.get("capacity_fps")
        thr = ov.get("throughput_fps")
        if cap and thr is not None:
            add("overload throughput / capacity", thr / cap, OVERLOAD_THROUGHPUT_FRACTION,
                thr / cap >= OVERLOAD_THROUGHPUT_FRACTION, unit="ratio")
        if ov.get("rate_fps") and cap and ov["rate_fps"] < 1.5 * cap:
            out[-1]["note"] = f"source {ov['rate_fps']:.0f} fps is under 1.5x capacity (capped): not a real overload"
    if ov.get("accounting"):
        a = ov["accounting"]
        add("overload received = processed + dropped", a["received"], a["processed"] + a["dropped_total"], bool(a["exact"]),
            unit="frames")
    return out


def glass_gap(scenarios: dict[str, Any]) -> dict[str, Any] | None:
    """Where ``glass p50 - floor p50`` goes, from measured figures only.

    ``transport``: the same three processes with a relay that does no work (two ZeroMQ hops, the wire
    format, the wake-ups): what no runtime on this host avoids. ``runtime work``: the p50s of the
    stages medstream adds (queue, preprocess, postprocess). ``inference in the stream``: glass's
    ``infer`` p50 minus the floor's p50 (cold caches and sleeping threads after the idle time between
    frames, other processes on the same cores). p50s do not add exactly; the rest is ``unexplained``.
    """
    fl = _get(scenarios, "floor", "latency_ms") or {}
    gl = scenarios.get("glass") or {}
    if not fl.get("p50") or not (gl.get("latency_ms") or {}).get("p50"):
        return None
    st = gl.get("stages_ms") or {}

    def p50(stage: str) -> float:
        return float((st.get(stage) or {}).get("p50") or 0.0)

    gap = gl["latency_ms"]["p50"] - fl["p50"]
    tr = _get(scenarios, "transport", "latency_ms", "p50")
    parts = {
        "transport (two hops, no work)": tr,
        "runtime work (queue + preprocess + postprocess)": p50("queue") + p50("preprocess") + p50("postprocess"),
        "inference in the stream - floor": p50("infer") - fl["p50"] if st.get("infer") else None,
    }
    known = sum(v for v in parts.values() if v is not None)
    return {"gap_p50_ms": round(gap, 3), "parts_ms": {k: None if v is None else round(v, 3) for k, v in parts.items()},
            "unexplained_ms": round(gap - known, 3)}


def naive_ratios(scenarios: dict[str, Any]) -> list[dict[str, Any]]:
    """naive / medstream for p50 and p99, under capacity and in overload."""
    rows = []
    for ms_name, nv_name in (("glass", "naive"), ("overload", "naive_overload")):
        a, b = _get(scenarios, ms_name, "latency_ms"), _get(scenarios, nv_name, "latency_ms")
        if not a or not b or not a.get("count") or not b.get("count"):
            continue
        rows.append({"condition": "under capacity" if ms_name == "glass" else "overload",
                     "medstream": ms_name, "naive": nv_name,
                     **{f"{p}_medstream": a[p] for p in ("p50", "p99")}, **{f"{p}_naive": b[p] for p in ("p50", "p99")},
                     **{f"{p}_ratio": (b[p] / a[p] if a[p] else None) for p in ("p50", "p99")}})
    return rows


def build_report(scenarios: dict[str, Any], *, model: str, model_path: str, settings: dict[str, Any],
                 command: str, env: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "model": {"name": model, "path": model_path},
        "settings": settings,
        "environment": env or environment(settings.get("threads")),
        "scenarios": scenarios,
        "targets": evaluate_targets(scenarios),
        "naive_vs_medstream": naive_ratios(scenarios),
        "glass_gap": glass_gap(scenarios),
    }


# --------------------------------------------------------------------------------------- markdown
def _f(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _ordered(scenarios: dict[str, Any]) -> list[str]:
    return [k for k in ORDER if k in scenarios] + [k for k in scenarios if k not in ORDER]


def markdown(report: dict[str, Any], plots_prefix: str | None = None) -> str:
    """The report as Markdown: environment line, latency table, stage table, targets, naive ratios."""
    env = report["environment"]
    sc = report["scenarios"]
    lines = [
        f"### {report['model']['name']} (`{Path(report['model']['path']).name}`)",
        "",
        f"{env['cpu_model']}, {env['cpu_cores_usable']} usable cores, load average at start "
        f"{env.get('load_average_at_start')}; GPU: {env.get('gpu') or 'none'}; Python {env['python']}, onnxruntime "
        f"{env['libraries']['onnxruntime']}, numpy {env['libraries']['numpy']}, pyzmq {env['libraries']['pyzmq']} "
        f"(libzmq {env['libraries']['libzmq']}), OpenCV {env['libraries']['opencv']}; ONNX Runtime intra-op threads: "
        f"{env.get('onnxruntime_intra_op_threads')}; medstream {env['medstream']} ({env['git_commit']}). "
        f"Run {report['created']}, {report['settings'].get('duration_s')} s per scenario, warm-up "
        f"{report['settings'].get('warmup_s')} s excluded.",
        "",
        "Latency in ms (floor: one inference; pipeline: capture to overlay ready, in-process; others: age of the "
        "overlay at arrival in a separate subscriber process). tail = max - p95, flatness = p90 - p10.",
        "",
        "| scenario | source fps | p50 | p90 | p99 | p99.9 | max | tail | flatness | p99 (CO-corr.) | throughput /s | "
        "capacity /s | drops | CPU % (proc) | RSS MB (proc) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in _ordered(sc):
        r = sc[name]
        lat = r.get("latency_ms") or {}
        co = r.get("latency_ms_co") or {}
        drops = ", ".join(f"{k} {v}" for k, v in sorted((r.get("drops") or {}).items())) or "0"
        res = r.get("resources") or {}
        cpu = " / ".join(f"{k} {_f(v.get('cpu_pct_mean'), 0)}" for k, v in res.items())
        rss = " / ".join(f"{k} {_f(v.get('rss_mb_max'), 0)}" for k, v in res.items())
        lines.append("| " + " | ".join([
            name, _f(r.get("rate_fps"), 1), _f(lat.get("p50")), _f(lat.get("p90")), _f(lat.get("p99")),
            _f(lat.get("p99.9")), _f(lat.get("max")), _f(lat.get("tail")), _f(lat.get("flatness")),
            _f(co.get("p99")), _f(r.get("throughput_fps"), 1), _f(r.get("capacity_fps"), 1), drops, cpu or "-",
            rss or "-"]) + " |")
    lines += ["", "Per-stage p50 in ms (from each overlay's `stages_ms`; ingress = capture to received by the runtime, "
              "wire_out = published to arrival at the subscriber):", "",
              "| scenario | " + " | ".join(STAGE_COLUMNS) + " |", "|---" * (len(STAGE_COLUMNS) + 1) + "|"]
    for name in _ordered(sc):
        st = sc[name].get("stages_ms") or {}
        if st:
            lines.append(f"| {name} | " + " | ".join(_f((st.get(k) or {}).get("p50")) for k in STAGE_COLUMNS) + " |")
    acc = [(n, sc[n]["accounting"]) for n in _ordered(sc) if sc[n].get("accounting")]
    if acc:
        lines += ["", "Frame accounting (from the runtime's `--summary`; naive: its own counters):", "",
                  "| scenario | sent by source | received | processed | dropped | exact | overlays at subscriber |",
                  "|---|---|---|---|---|---|---|"]
        for n, a in acc:
            lines.append(f"| {n} | {_f(a.get('sent_by_source'))} | {a['received']} | {a['processed']} | "
                         f"{a['dropped_total']} | {a['exact']} | {_f(a.get('overlays_at_subscriber'))} |")
    if report.get("targets"):
        lines += ["", "Targets:", "", "| target | measured | limit | pass |", "|---|---|---|---|"]
        for t in report["targets"]:
            verdict = {True: "yes", False: "**no**", None: "-"}[t["pass"]]
            note = f" ({t['note']})" if t.get("note") else ""
            lines.append(f"| {t['target']} | {_f(t['value'], 3)} {t['unit']} | {_f(t['limit'], 3)} | {verdict}{note} |")
    rounds = (sc.get("floor") or {}).get("rounds") or []
    if rounds:
        lines += ["", "Round by round (every round ran the whole list, floor first; the tables above pool the "
                      "rounds):", "",
                  "| round | floor p50 | glass p50 | glass - floor p50 | floor p99 | glass p99 | glass - floor p99 | "
                  "naive p50 | overload p99 |", "|---|---|---|---|---|---|---|---|---|"]
        for r in rounds:
            fl, gl = r.get("floor") or {}, r.get("glass") or {}
            d50 = gl["p50"] - fl["p50"] if gl.get("p50") and fl.get("p50") else None
            d99 = gl["p99"] - fl["p99"] if gl.get("p99") and fl.get("p99") else None
            lines.append(f"| {r['round']} | {_f(fl.get('p50'))} | {_f(gl.get('p50'))} | {_f(d50)} | {_f(fl.get('p99'))} | "
                         f"{_f(gl.get('p99'))} | {_f(d99)} | {_f((r.get('naive') or {}).get('p50'))} | "
                         f"{_f((r.get('overload') or {}).get('p99'))} |")
    gap = report.get("glass_gap")
    if gap:
        lines += ["", f"Where glass p50 - floor p50 ({_f(gap['gap_p50_ms'])} ms) goes, p50s in ms:", "",
                  "| part | ms |", "|---|---|"]
        lines += [f"| {k} | {_f(v)} |" for k, v in gap["parts_ms"].items()]
        lines.append(f"| unexplained (p50s do not add exactly) | {_f(gap['unexplained_ms'])} |")
    if report.get("naive_vs_medstream"):
        lines += ["", "Naive loop vs medstream (same frames, rate and subscriber):", "",
                  "| condition | medstream p50 | naive p50 | ratio | medstream p99 | naive p99 | ratio |",
                  "|---|---|---|---|---|---|---|"]
        for row in report["naive_vs_medstream"]:
            lines.append(f"| {row['condition']} | {_f(row['p50_medstream'])} | {_f(row['p50_naive'])} | "
                         f"{_f(row['p50_ratio'], 1)}x | {_f(row['p99_medstream'])} | {_f(row['p99_naive'])} | "
                         f"{_f(row['p99_ratio'], 1)}x |")
    notes = [f"- {n}: {note}" for n in _ordered(sc) for note in sc[n].get("notes", [])]
    if notes:
        lines += ["", "Notes:", "", *notes]
    if plots_prefix is not None:
        lines += ["", f"![latency CDF]({plots_prefix}cdf.png) ![per-stage]({plots_prefix}stages.png) "
                      f"![latency over time]({plots_prefix}timeline.png)"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ plots
def plots(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """``cdf.png`` (all scenarios), ``stages.png`` (per-stage p50 bars), ``timeline.png`` (age over time)."""
    try:
        import matplotlib
    except ImportError:
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = report["scenarios"]
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    title = f"medstream bench: {report['model']['name']}"

    fig, ax = plt.subplots(figsize=(8, 5))
    for name in _ordered(sc):
        pts = sc[name].get("cdf") or []
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name)
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log)")
    ax.set_ylabel("fraction of overlays")
    ax.set_title(title + ": latency CDF")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    paths.append(out_dir / "cdf.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    names = [n for n in _ordered(sc) if sc[n].get("stages_ms")]
    fig, ax = plt.subplots(figsize=(9, 5))
    bottoms = [0.0] * len(names)
    for stage in ("ingress", "queue", "preprocess", "infer", "postprocess", "wire_out"):
        vals = [((sc[n]["stages_ms"].get(stage) or {}).get("p50") or 0.0) for n in names]
        ax.bar(names, vals, bottom=bottoms, label=stage)
        bottoms = [b + v for b, v in zip(bottoms, vals, strict=True)]
    ax.set_ylabel("p50 per stage (ms, stacked)")
    ax.set_title(title + ": where the time goes")
    ax.legend()
    paths.append(out_dir / "stages.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 5))
    for name in _ordered(sc):
        tl = sc[name].get("timeline") or []
        if tl and name != "floor":
            ax.plot([p[0] for p in tl], [p[1] for p in tl], ".", ms=2, label=name)
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the first overlay (warm-up included)")
    ax.set_ylabel("latency (ms, log)")
    ax.set_title(title + ": latency over time")
    ax.legend(markerscale=5)
    paths.append(out_dir / "timeline.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)
    return paths


def write_report(report: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """``report.json``, ``report.md`` and the PNGs into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1, default=str))
    pngs = plots(report, out_dir)
    (out_dir / "report.md").write_text(markdown(report, plots_prefix="" if pngs else None))
    return {"json": out_dir / "report.json", "markdown": out_dir / "report.md", **{p.stem: p for p in pngs}}


#: Everything after this line in ``benchmarks/RESULTS.md`` is written by other commands (OpenIGTLink, CPU backends,
#: Triton; each section names its own); ``medstream bench --results-md`` regenerates what is above it and keeps the rest.
KEPT_MARK = ("<!-- KEPT SECTIONS: below this line each section names the command that wrote it; "
             "`medstream bench --results-md` keeps them as they are -->")


def keep_other_sections(old: str, new: str) -> str:
    """``new`` (the regenerated reports) followed by what ``old`` holds after :data:`KEPT_MARK`.

    Why: the bench regenerates its own part of RESULTS.md, but the OpenIGTLink, CPU-backend and Triton sections come
    from other commands that take minutes and, for Triton, a server; a regeneration must not silently drop them.
    Without the mark in ``old`` nothing is kept (the file is new, or was written before the mark existed).
    """
    if KEPT_MARK not in old:
        return new
    return new.rstrip("\n") + "\n\n" + KEPT_MARK + old.partition(KEPT_MARK)[2]


def results_markdown(reports: list[tuple[dict[str, Any], str]], command: str) -> str:
    """``benchmarks/RESULTS.md``: every model's report, generated (never typed by hand)."""
    parts = [
        "# Benchmark results",
        "",
        f"<!-- GENERATED FILE: do not edit. Regenerate with: {command} -->",
        f"Generated by `{command}` on {reports[0][0]['created'] if reports else '-'}; do not edit by hand. "
        "What each scenario measures: docs/BENCHMARKS.md.",
        "",
    ]
    for report, prefix in reports:
        parts.append(markdown(report, plots_prefix=prefix))
    return "\n".join(parts)
