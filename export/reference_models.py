"""Train and export both bundled reference models, reproducibly, in under 20 minutes on 2 CPU cores.

Usage::

    python -m medstream.export.reference_models --out runtime/models
    python -m medstream.export.reference_models --out /tmp/models --only fluoroscopy

For each of ``ultrasound`` (vessel + needle) and ``fluoroscopy`` (guidewire/catheter) this trains the
U-Net of :mod:`medstream.export.unet` on phantom seeds ``0 .. train_seeds-1`` with the fixed recipe
below (fixed seed, fixed step count, 2 threads), exports it through the same path as
``medstream export`` (checker, onnxslim, contract, proof against PyTorch), writes
``<kind>_unet.onnx`` and ``<kind>_unet.train.json`` (loss, validation Dice per evaluation step, wall
time), and scores the file on held-out phantom seeds (>= 10000) with the runtime's evaluation oracle.

With the same torch version, thread count and CPU a rerun gives the same weights (only the export
date and git commit in the contract's provenance change the file hash); on another CPU the kernels
sum in another order, so the weights, and the Dice scores, differ in their last digits.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from medstream.export.tasks import TaskTrainConfig
from medstream.export.train import TrainConfig

#: The recipe of each reference model. Changing it changes the bundled models: retrain, re-measure,
#: update runtime/models/README.md.
RECIPES: dict[str, TrainConfig] = {
    "ultrasound": TrainConfig(kind="ultrasound", seed=0, train_seeds=160, frames_per_seed=12, steps=800,
                              full_frame_steps=100, eval_every=200, val_frames_per_seed=6),
    "fluoroscopy": TrainConfig(kind="fluoroscopy", seed=1, train_seeds=160, frames_per_seed=12, steps=800,
                               full_frame_steps=100, eval_every=200, val_frames_per_seed=6),
}

#: The classification and detection reference models (issue 13), by bundled name: small networks at 128x128
#: trained on the same phantom, labels from its truth masks by a rule of :mod:`medstream.runtime.task_truth`.
TASK_RECIPES: dict[str, TaskTrainConfig] = {
    "needle-classifier": TaskTrainConfig(task="classification", truth_rule="needle-presence", seed=2, steps=1200,
                                         eval_every=300),
    "ultrasound-detector": TaskTrainConfig(task="detection", truth_rule="vessel-needle-boxes", seed=3, steps=2000,
                                           eval_every=500),
}
#: Bundled file stem of each task model.
TASK_FILES = {"needle-classifier": "needle_classifier", "ultrasound-detector": "ultrasound_detector"}
TASK_EVAL_URI = "synthetic://ultrasound?seed=10000&scenes=10"

REPRODUCE = "python -m medstream.export.reference_models --out runtime/models"
EVAL_URI = "synthetic://{kind}?seed=10000"


def recipe(kind: str) -> TrainConfig:
    """A fresh copy of the reference recipe for ``kind``."""
    import copy

    from medstream.runtime.errors import ConfigError

    if kind not in RECIPES:
        raise ConfigError(f"no reference recipe for {kind!r}", f"use one of: {', '.join(RECIPES)}")
    return copy.deepcopy(RECIPES[kind])


def build(kind: str, out_dir: Path, eval_frames: int = 60, say=print) -> dict:
    """Train, export and evaluate one reference model; returns a summary for the console."""
    from medstream.export.train import export_trained, train, wall_clock_text
    from medstream.runtime.evaluation import evaluate_model

    config = recipe(kind)
    t0 = time.perf_counter()
    result = train(config, progress=lambda s: say(f"[{kind}] {s}"))
    path = out_dir / f"{kind}_unet.onnx"
    _, record = export_trained(result, path, model_id=f"{kind}_unet",
                               extra_provenance={"recipe": f"{REPRODUCE} (medstream.export.reference_models.RECIPES"
                                                           f"['{kind}'])"},
                               progress=lambda s: say(f"[{kind}] {s}"))
    summary = {"kind": kind, "path": str(path), "train": wall_clock_text(result.train_seconds),
               "total": wall_clock_text(time.perf_counter() - t0), "parameters": result.parameters}
    if eval_frames > 0:
        uri = EVAL_URI.format(kind=kind)
        report = evaluate_model(path, uri, eval_frames, intra_op_threads=config.threads)
        say(report.to_table())
        summary["held_out"] = {c.name: c.dice for c in report.classes}
        summary["mean_foreground_dice"] = report.mean_foreground_dice
        record["held_out_evaluation"] = {"data": uri, "frames": report.frames, "dice": summary["held_out"],
                                         "mean_foreground_dice": report.mean_foreground_dice,
                                         "command": f"medstream evaluate --model {kind} --data '{uri}' --frames {eval_frames}"}
    record["build_seconds"] = round(time.perf_counter() - t0, 1)
    log_path = path.with_name(path.stem + ".train.json")
    log_path.write_text(json.dumps(record, indent=2) + "\n")
    say(f"[{kind}] done: {summary}")
    return summary


def build_task(name: str, out_dir: Path, eval_frames: int = 300, say=print) -> dict:
    """Train, export (with proof) and evaluate one classification/detection reference model."""
    import copy

    from medstream.export.tasks import export_task_model, train_task
    from medstream.export.train import wall_clock_text
    from medstream.runtime.evaluation import evaluate_model

    config = copy.deepcopy(TASK_RECIPES[name])
    t0 = time.perf_counter()
    result = train_task(config, progress=lambda s: say(f"[{name}] {s}"))
    path = out_dir / f"{TASK_FILES[name]}.onnx"
    record = export_task_model(result, path, model_id=TASK_FILES[name],
                               extra_provenance={"recipe": f"{REPRODUCE} --only {name} (medstream.export."
                                                           f"reference_models.TASK_RECIPES['{name}'])"},
                               progress=lambda s: say(f"[{name}] {s}"))
    summary = {"name": name, "path": str(path), "train": wall_clock_text(result.train_seconds),
               "parameters": result.parameters}
    if eval_frames > 0:
        report = evaluate_model(path, TASK_EVAL_URI, eval_frames, intra_op_threads=config.threads)
        say(report.to_table())
        summary["held_out"] = report.headline_metrics()
        record["held_out_evaluation"] = {"data": TASK_EVAL_URI, "frames": report.frames, **summary["held_out"],
                                         "command": f"medstream evaluate --model {name} --data '{TASK_EVAL_URI}' "
                                                    f"--frames {eval_frames}"}
    record["build_seconds"] = round(time.perf_counter() - t0, 1)
    path.with_name(path.stem + ".train.json").write_text(json.dumps(record, indent=2) + "\n")
    summary["total"] = wall_clock_text(time.perf_counter() - t0)
    say(f"[{name}] done: {summary}")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medstream.export.reference_models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (runtime/models for the bundled files)")
    parser.add_argument("--only", choices=sorted(RECIPES) + sorted(TASK_RECIPES), action="append",
                        help="build only this model (repeatable)")
    parser.add_argument("--eval-frames", type=int, default=60, help="held-out frames scored after each export (0: skip)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    from medstream.runtime.errors import MedstreamError

    try:
        for kind in args.only or list(RECIPES) + list(TASK_RECIPES):
            if kind in TASK_RECIPES:
                build_task(kind, out, args.eval_frames, say=lambda s: print(s, flush=True))
            else:
                build(kind, out, args.eval_frames, say=lambda s: print(s, flush=True))
    except MedstreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from medstream.runtime.models import write_checksums

    print(f"checksums: {write_checksums(out)} (the loader refuses a bundled file that does not match)", flush=True)
    print(f"all done in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
