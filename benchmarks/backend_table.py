"""The CPU backends side by side: ONNX Runtime FP32/INT8, OpenVINO FP32/BF16/INT8, in one run.

::

    python -m medstream.benchmarks.backend_table [--model ultrasound] [--rounds 20] [--runs 10]
        [--frames 300] [--threads N] [--out benchmarks/results/backends.json] [--results-md]

For each row: the floor (one inference on one preprocessed phantom frame, ``backend.last_compute_ms``),
measured in interleaved rounds (each round runs every row ``--runs`` times in turn, so every row sees the
same minutes of a machine whose speed drifts by tens of percent within a minute); p50/p99 over all
samples pooled and the median of the per-round medians; and the accuracy on held-out phantom frames
(``evaluate_model`` on ``synthetic://<kind>?seed=10000&scenes=10``, the calibration gate's eval set):
Dice per class and its drop against ONNX Runtime FP32 in Dice points (the gate: <= 1 point per class),
plus the share of pixels whose class differs from ONNX Runtime FP32's mask on the same frames.

Writes the JSON (default ``benchmarks/results/backends.json``) and prints the markdown table; with
``--results-md`` it also replaces the backend section of benchmarks/RESULTS.md (between the markers below;
``medstream bench --results-md`` keeps that section when it rewrites the rest).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medstream.runtime.files import write_json_atomic, write_text_atomic

RESULTS = Path(__file__).resolve().parent / "results"
RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
BEGIN, END = "<!-- BEGIN backend table (benchmarks/backend_table.py) -->", "<!-- END backend table -->"

#: (row label, backend, precision); INT8 rows run the calibrated M.int8.onnx (ONNX Runtime: its U8S8 twin).
ROWS: tuple[tuple[str, str, str], ...] = (
    ("ONNX Runtime FP32", "onnxruntime", "fp32"),
    ("ONNX Runtime INT8", "onnxruntime", "int8"),
    ("OpenVINO FP32", "openvino", "fp32"),
    ("OpenVINO BF16", "openvino", "bf16"),
    ("OpenVINO INT8", "openvino", "int8"),
    ("OpenVINO INT8, U8S8 twin", "openvino", "int8-cpu"),
)


def int8_file(model: Path) -> Path:
    return model.with_name(f"{model.name[:-len('.onnx')]}.int8.onnx")


def load_row(model: Path, backend: str, precision: str, threads: int):
    """``(LoadedModel, backend)`` for one row, activated; ``None`` when the row cannot run here (with why)."""
    from medstream.runtime.backends import load_backend
    from medstream.runtime.models import int8_cpu_variant
    from medstream.runtime.models.loader import load_model

    if backend == "onnxruntime":
        path = int8_file(model) if precision == "int8" else model
        loaded = load_model(path, backend="onnxruntime")
        return loaded, load_backend(loaded, intra_op_threads=threads).activate()
    if precision == "int8-cpu":  # the U8S8 twin, named directly (the loader gives OpenVINO the S8S8 file)
        loaded = load_model(int8_cpu_variant(int8_file(model)), backend="openvino")
        return loaded, load_backend(loaded, precision="int8", threads=threads).activate()
    loaded = load_model(model, backend="openvino", precision=precision)
    return loaded, load_backend(loaded, precision=precision, threads=threads).activate()


def measure(model: Path, rounds: int, runs: int, frames: int, threads: int) -> dict[str, Any]:
    from medstream.runtime.evaluation import evaluate_model
    from medstream.runtime.models import int8_cpu_variant
    from medstream.runtime.models.loader import read_model_contract
    from medstream.runtime.phantom import make_phantom
    from medstream.runtime.postprocess import Postprocessor
    from medstream.runtime.sources import read_labelled_frames

    contract = read_model_contract(model)
    kind = "fluoroscopy" if contract.modality == "fluoroscopy" else "ultrasound"
    image, _ = make_phantom(kind, fps=30, height=contract.input.height, width=contract.input.width, seed=0).render(0)
    rows: list[dict[str, Any]] = []
    runners = []
    for label, backend, precision in ROWS:
        row: dict[str, Any] = {"row": label, "backend": backend, "precision": precision}
        try:
            loaded, runner = load_row(model, backend, precision, threads)
        except Exception as exc:  # a row this machine cannot run (no bf16, no OpenVINO): said, not hidden
            row["skipped"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            continue
        row.update({"file": loaded.run_path.name, "variant": loaded.variant, "ran_as": runner.precision})
        x = {contract.input.name: runner.make_preprocessor()(image, "gray").copy()}
        for _ in range(10):
            runner.infer(x)
        rows.append(row)
        runners.append((row, runner, x, []))
    round_medians: dict[str, list[float]] = {r["row"]: [] for r, *_ in runners}
    for _ in range(rounds):
        for row, runner, x, samples in runners:
            block = []
            for _ in range(runs):
                runner.infer(x)
                block.append(runner.last_compute_ms)
            samples.extend(block)
            round_medians[row["row"]].append(float(np.median(block)))
    for row, runner, _, samples in runners:
        row["floor_ms"] = {"p50": round(float(np.percentile(samples, 50)), 2),
                           "p99": round(float(np.percentile(samples, 99)), 2),
                           "median_of_round_medians": round(statistics.median(round_medians[row["row"]]), 2),
                           "samples": len(samples)}
        row["describe"] = {k: v for k, v in runner.describe().items() if k not in ("model",)}
        runner.deactivate()
    # accuracy: every row on the same held-out frames, scored against the truth and against ORT FP32's masks
    data = f"synthetic://{kind}?seed=10000&scenes=10"
    held_out = list(read_labelled_frames(data, frames))
    post = Postprocessor(contract)
    masks: dict[str, list[np.ndarray]] = {}
    for row in rows:
        if "skipped" in row:
            continue
        path = int8_file(model) if row["backend"] == "onnxruntime" and row["precision"] == "int8" else model
        opts: dict[str, Any] = {"intra_op_threads": threads}
        if row["backend"] == "openvino":
            opts = {"threads": threads, "precision": row["precision"].replace("int8-cpu", "int8")}
            path = {"int8": int8_file(model), "int8-cpu": int8_cpu_variant(int8_file(model))}.get(row["precision"], model)
        report = evaluate_model(path, data, frames, backend=row["backend"], **opts)
        row["dice"] = {c.name: (round(c.dice, 4) if c.dice is not None else None) for c in report.classes}
        row["mean_foreground_dice"] = report.mean_foreground_dice
        loaded, runner = load_row(model, row["backend"], row["precision"], threads)
        pre = runner.make_preprocessor()
        with runner:
            masks[row["row"]] = [post.class_map(runner.infer({contract.input.name: pre(f.image, f.color_order)})).copy()
                                 for f in held_out]
    ref = rows[0]
    for row in rows:
        if "dice" not in row or "dice" not in ref:
            continue
        row["dice_drop_points"] = {k: (round(100 * (ref["dice"][k] - v), 3) if v is not None and ref["dice"][k] is not None
                                       else None) for k, v in row["dice"].items()}
        drops = [d for k, d in row["dice_drop_points"].items() if d is not None and k != contract.classes[0].name]
        row["worst_drop_points"] = round(max(drops), 3) if drops else 0.0
        row["gate_passed"] = row["worst_drop_points"] <= 1.0
        diff = [float(np.mean(a != b)) for a, b in zip(masks[row["row"]], masks[ref["row"]], strict=True)]
        row["pixels_differing_from_ort_fp32"] = round(float(np.mean(diff)), 6)
        row["frames_identical_to_ort_fp32"] = int(sum(d == 0.0 for d in diff))
        if "floor_ms" in row and "floor_ms" in ref:
            row["speedup_vs_ort_fp32"] = round(ref["floor_ms"]["median_of_round_medians"]
                                               / row["floor_ms"]["median_of_round_medians"], 2)
    return {"model": model.name, "eval_data": data, "eval_frames": frames, "rounds": rounds, "runs_per_round": runs,
            "threads": threads, "rows": rows}


def environment() -> dict[str, Any]:
    from medstream.runtime.machine import cpu_facts, package_version

    cpu = cpu_facts()
    return {"cpu": cpu.model, "usable_cores": cpu.usable_cores, "flags": list(cpu.flags),
            "python": platform.python_version(), "onnxruntime": package_version("onnxruntime"),
            "openvino": package_version("openvino"), "when": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def markdown(results: list[dict[str, Any]], env: dict[str, Any], command: str) -> str:
    lines = [BEGIN, "", "## CPU backends side by side", "",
             f"Generated by `{command}` on {env['when']}: {env['cpu']}, {env['usable_cores']} usable cores "
             f"({', '.join(f for f in env['flags'] if 'avx512' in f or 'amx' in f or 'vnni' in f)}), Python "
             f"{env['python']}, onnxruntime {env['onnxruntime']}, openvino {env['openvino']}. Floor = one inference "
             "on one preprocessed phantom frame, rows interleaved in rounds; Dice on held-out phantom frames "
             "(drop in Dice points against ONNX Runtime FP32; the gate allows 1 point per class). "
             "INT8 rows run the calibrated `M.int8.onnx` (ONNX Runtime: its U8S8 twin `M.int8-cpu.onnx`).", ""]
    for res in results:
        lines += [f"### {res['model']} ({res['threads']} threads, {res['rounds']} rounds x {res['runs_per_round']} "
                  f"runs, {res['eval_frames']} held-out frames)", "",
                  "| backend | file run | floor p50 | floor p99 | median of rounds | vs ORT FP32 | Dice per class "
                  "| worst drop (points) | gate | pixels differing from ORT FP32 |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in res["rows"]:
            if "skipped" in r:
                lines.append(f"| {r['row']} | not run here: {r['skipped'][:120]} | | | | | | | | |")
                continue
            f = r["floor_ms"]
            dice = ", ".join(f"{k} {v:.4f}" for k, v in r.get("dice", {}).items() if v is not None)
            lines.append(f"| {r['row']} | `{r['file']}` ({r['ran_as']}) | {f['p50']:.2f} | {f['p99']:.2f} | "
                         f"{f['median_of_round_medians']:.2f} | {r.get('speedup_vs_ort_fp32', 1.0):.2f}x | {dice} | "
                         f"{r.get('worst_drop_points', 0.0):.2f} | {'pass' if r.get('gate_passed', True) else 'FAIL'} | "
                         f"{100 * r.get('pixels_differing_from_ort_fp32', 0.0):.3f} % |")
        lines.append("")
    lines.append(END)
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str) -> str:
    """``text`` with its backend section replaced by ``section`` (appended when it has none)."""
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        return head + section.rstrip("\n") + tail
    return text.rstrip("\n") + "\n\n" + section


def main(argv: Sequence[str] | None = None) -> int:
    from medstream.runtime.backends.onnxruntime_backend import default_threads
    from medstream.runtime.models.loader import resolve_model_file

    p = argparse.ArgumentParser(prog="python -m medstream.benchmarks.backend_table", description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", help="bundled name or .onnx with an M.int8.onnx beside it "
                   "(repeat; default ultrasound)")
    p.add_argument("--rounds", type=int, default=20, help="interleaved rounds (default 20)")
    p.add_argument("--runs", type=int, default=10, help="inferences per row per round (default 10)")
    p.add_argument("--frames", type=int, default=300, help="held-out frames for Dice (default 300)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: every usable core)")
    p.add_argument("--out", default=str(RESULTS / "backends.json"))
    p.add_argument("--results-md", action="store_true", help="also replace the backend section of benchmarks/RESULTS.md")
    args = p.parse_args(argv)
    threads = args.threads or default_threads()
    given = list(argv) if argv is not None else sys.argv[1:]
    command = " ".join(["python -m medstream.benchmarks.backend_table", *given])
    env = environment()
    t0 = time.perf_counter()
    results = [measure(resolve_model_file(m), args.rounds, args.runs, args.frames, threads)
               for m in (args.model or ["ultrasound"])]
    write_json_atomic(args.out, {"command": command, "environment": env, "results": results,
                                 "seconds": round(time.perf_counter() - t0, 1)})
    md = markdown(results, env, command)
    print(md)
    print(f"wrote {args.out}")
    if args.results_md:
        text = RESULTS_MD.read_text(encoding="utf-8") if RESULTS_MD.is_file() else "# Benchmark results\n"
        write_text_atomic(RESULTS_MD, replace_section(text, md))
        print(f"wrote the backend section of {RESULTS_MD}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
