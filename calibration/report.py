"""What ``medstream calibrate`` prints and stores: the verdict, the numbers behind it, and latency.

:func:`measure_latencies` times models with ONNX Runtime on CPU exactly as the runtime creates its
sessions (:func:`medstream.runtime.backends.onnxruntime_backend.make_session`), median of ``runs``
calls after a warm-up, one session at a time, so INT8 and FP32 are compared on equal terms.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np


def measure_latencies(models: dict[str, str | Path], input_name: str, x: np.ndarray, runs: int = 50,
                      threads: int = 2, warmup: int = 5, rounds: int = 2) -> dict[str, float]:
    """Median wall time (ms) of one ``session.run`` per model, ONNX Runtime CPU with ``threads`` threads.

    One session is alive at a time: ONNX Runtime's intra-op threads spin after each run, and a second
    live session would run against them (measured here: FP32 57 ms interleaved per run against 20 ms
    alone). The runs are split into ``rounds`` passes over the models, so a burst of load from
    another process on a shared machine does not land on one model only.
    """
    import gc

    from medstream.runtime.backends.onnxruntime_backend import make_session

    feed = {input_name: x}
    times: dict[str, list[float]] = {k: [] for k in models}
    rounds = max(1, min(rounds, runs))
    for r in range(rounds):
        share = runs // rounds + (1 if r < runs % rounds else 0)
        for key, path in models.items():
            session = make_session(str(path), ["CPUExecutionProvider"], threads)
            for _ in range(warmup):
                session.run(None, feed)
            for _ in range(max(1, share)):
                t0 = time.perf_counter()
                session.run(None, feed)
                times[key].append((time.perf_counter() - t0) * 1e3)
            del session
            gc.collect()
    return {k: float(statistics.median(v)) for k, v in times.items()}


def measure_latency(model_path: str | Path, input_name: str, x: np.ndarray, runs: int = 50, threads: int = 2,
                    warmup: int = 5) -> float:
    """Median wall time (ms) of one ``session.run`` of one model (see :func:`measure_latencies`)."""
    return measure_latencies({"m": model_path}, input_name, x, runs, threads, warmup)["m"]


def _f(v: float | None, spec: str = "6.4f") -> str:
    return "   -  " if v is None else format(v, spec)


def _drop(v: float | None) -> str:
    return "   -  " if v is None else f"{v:+6.2f}"


def format_report(result: dict[str, Any]) -> str:
    """The human-readable report of a calibration result (the dict :meth:`CalibrationResult.to_dict` makes)."""
    lines = [
        f"model        {result['model']}",
        f"calibration  {result['frames_used']} frames from {result['data']}"
        + (" (statistics from cache)" if result["cache"].get("stats_hit") else ""),
    ]
    if result.get("frames_skipped"):
        lines.append(f"             {result['frames_skipped']} undecodable frames skipped")
    lines.append(f"evaluation   {result['eval_frames']} held-out frames from {result['eval_data']}")
    lines.append("")
    lines.append("attempts:")
    for a in result["attempts"]:
        verdict = "pass" if a["passed"] else "FAIL"
        worst = a.get("worst_drop_points")
        metric = a.get("gate", {}).get("metric", "Dice")
        lines.append(f"  [{verdict}] {a['label']}: worst {metric} drop "
                     f"{'-' if worst is None else f'{worst:.2f}'} points")
    chosen = result.get("chosen")
    if chosen is None:
        lines += ["", f"GATE FAILED: no attempt kept every class's metric drop within {result['max_dice_drop']} points "
                      "and the raw output error within its bound."]
        if result.get("layer_sensitivity"):
            lines.append("layers that hurt most (argmax agreement regained when kept in float): " + ", ".join(
                f"{r['layer']} +{100 * r['agreement_gain']:.2f}%" for r in result["layer_sensitivity"][:5]))
        if result.get("advice"):
            lines.append("try: " + "; ".join(result["advice"]))
        best = result.get("best")
        if best is not None:
            lines += ["", f"best attempt: {best['label']}"]
            lines += _gate_table(best["gate"])
        return "\n".join(lines)
    lines += ["", f"chosen       {chosen['label']}"]
    if result.get("auto_choice"):
        lines.append(f"--auto chose {result['auto_choice']}")
    if chosen["exclude"]:
        lines.append(f"float layers {', '.join(chosen['exclude'])}")
    lines += _gate_table(chosen["gate"])
    lat = result.get("latency_ms") or {}
    if lat:
        fp = lat.get("fp32")
        parts = [f"FP32 {fp:.1f} ms"]
        for key, label in (("int8", "INT8 S8S8 (TensorRT file)"), ("int8_cpu", "INT8 U8S8 (CPU file)")):
            if lat.get(key) is not None:
                parts.append(f"{label} {lat[key]:.1f} ms ({lat[key] / fp:.2f}x)")
        lines += ["", f"CPU latency  (ONNX Runtime, {lat['threads']} threads, median of {lat['runs']} runs): "
                  + ", ".join(parts)]
    lines += ["", "gate         PASSED" if result["passed"] else "gate         FAILED"]
    if result.get("outputs"):
        lines.append("written      " + "\n             ".join(result["outputs"].values()))
    return "\n".join(lines)


def _gate_table(gate: dict[str, Any]) -> list[str]:
    variants = gate["variants"]
    metric = gate.get("metric", "Dice")
    head = f"  {'class':<14}{'FP32 ' + metric:>10}"
    for v in variants:
        head += f"{v['variant'] + ' ' + metric:>16}{'drop':>8}"
    lines = ["", head]
    for i, name in enumerate(gate["classes"]):
        row = f"  {name:<14}{_f(gate['dice_fp32'][i]):>10}"
        for v in variants:
            row += f"{_f(v['dice'][i]):>16}{_drop(v['drop_points'][i]):>8}"
        lines.append(row)
    lines.append(f"  (drop in {metric} points, 1 point = 0.01; limit {gate['max_dice_drop']} points; raw output error "
                 f"limit {gate.get('max_output_error', '-')} relative L2)")
    for v in variants:
        lines.append(f"  {v['variant']}: argmax agreement {100 * v['argmax_agreement']:.3f}%, logit error max "
                     f"{v['logit_max_abs']:.4g} ({100 * v['logit_max_rel']:.2f}% of max |logit|), mean "
                     f"{v['logit_mean_abs']:.4g} ({100 * v['logit_mean_rel']:.2f}% of mean |logit|)"
                     f", relative L2 {v.get('output_rel_l2', 0.0):.4f}"
                     f" -> {'pass' if v['passed'] else 'FAIL: ' + '; '.join(v.get('reasons') or [])}")
    return lines


__all__ = ["format_report", "measure_latencies", "measure_latency"]
