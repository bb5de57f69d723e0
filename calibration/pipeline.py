"""``medstream calibrate`` end to end: frames -> statistics (once) -> QDQ files -> TensorRT checks -> gate.

:func:`calibrate` is what the command runs. For each attempt it quantizes from the one set of
statistics, checks the TensorRT file with :mod:`~medstream.calibration.validator` (an illegal file is
a bug and stops everything), and scores both INT8 files with :class:`~medstream.calibration.gate.Gate`.

``--auto`` remedies, tried in this order, keeping the first attempt that passes:

1. the other calibration methods (same statistics: no new pass over the data);
2. the first and last weighted layers in float (the input conv and the classifier conv);
3. also the layers that hurt most, the worst 1, then 2, then 4. A layer's harm is measured leave-one-out
   on a few held-out frames: the FP32-vs-INT8 argmax agreement gained by keeping just that layer in
   float (:meth:`_Run.sensitivity`). Comparing intermediate tensors is cheaper but misleads: a head
   whose logits share a large offset shows a tiny *relative* error while its argmax is destroyed;

4. twice the calibration frames (a new statistics pass), with the best configuration so far.

Outputs are written only for an attempt that passes: ``M.int8.onnx`` (TensorRT), ``M.int8-cpu.onnx``
(ONNX Runtime CPU), ``M.calib.cache`` (TensorRT 8.x-10.x ``trtexec --calib``) and
``M.int8.report.json``; the report is written whatever the verdict.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medstream.calibration import quantize as q
from medstream.calibration.cache import CalibrationCache, default_cache_dir, file_sha256
from medstream.calibration.data import CalibrationData, default_eval_uri
from medstream.calibration.gate import (
    DEFAULT_MAX_DICE_DROP,
    DEFAULT_MAX_OUTPUT_ERROR,
    EvalSet,
    Gate,
    GateReport,
    ModelRun,
)
from medstream.calibration.stats import DEFAULT_PERCENTILE, METHODS, ActivationStats, collect_statistics
from medstream.calibration.trt_cache import DEFAULT_TRT_VERSION, write_cache
from medstream.calibration.validator import validate_model
from medstream.runtime.contract import ModelContract
from medstream.runtime.errors import ConfigError, MedstreamError
from medstream.runtime.files import write_text_atomic
from medstream.runtime.models.loader import require_model_contract

log = logging.getLogger("medstream.calibration")


class CalibrationError(MedstreamError):
    """Calibration could not produce a valid INT8 model."""


#: What to do when a library fails inside a calibration stage (the stage names what was being done).
_STAGE_FIXES = {
    "preparing the model": "check that the model runs in ONNX Runtime ('medstream inspect MODEL' shows its graph)",
    "collecting statistics": "check that --data frames fit the model's input (size, channels) and that the model "
                             "runs in ONNX Runtime ('medstream run --model MODEL' on a few frames)",
    "quantizing": "leave the named node in float with --exclude NODE (or --keep-first-last-float), or try "
                  "--method minmax; if it persists, report it with the model",
    "scoring the accuracy gate": "check the contract against the model's outputs (medstream inspect MODEL) and that "
                                 "--eval-data holds frames with masks of the model's classes",
}


@contextmanager
def _stage(what: str, model: Path | str) -> Iterator[None]:
    """Turn any non-medstream exception raised while doing ``what`` into a :class:`CalibrationError`.

    The quantizer and ONNX Runtime raise ``ValueError``/``RuntimeError``/``KeyError`` on graphs they cannot
    handle (e.g. "Quantization parameters are not specified for param ..."): the user gets the model,
    the stage, the library's message and a way out, never a traceback. Medstream's own errors pass as they are.
    """
    try:
        yield
    except MedstreamError:
        raise
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - the point: whatever the library raises
        message = " ".join(str(exc).split())[:400] or "(no message)"
        log.debug("calibration stage %r failed", what, exc_info=True)
        raise CalibrationError(f"calibrating {model} failed while {what}: {type(exc).__name__}: {message}",
                               _STAGE_FIXES.get(what, "report it with the model")) from None


@dataclass
class CalibrateRequest:
    """Everything ``medstream calibrate`` was asked (see ``cli/commands/calibrate.py`` for each option)."""

    model: Path
    data: list[str]
    out: Path
    method: str | None = None
    frames: int = 200
    max_dice_drop: float = DEFAULT_MAX_DICE_DROP
    max_output_error: float = DEFAULT_MAX_OUTPUT_ERROR  # relative L2 of the raw outputs, INT8 vs FP32
    eval_data: str | None = None
    eval_frames: int = 300
    auto: bool = False
    exclude: list[str] = field(default_factory=list)
    keep_first_last_float: bool = False
    cache_dir: Path | None = None
    use_cache: bool = True
    cpu_variant: bool = True
    trt_cache: bool = True
    trt_version: str = DEFAULT_TRT_VERSION
    percentile: float = DEFAULT_PERCENTILE
    contract_overrides: dict[str, Any] | None = None
    roi: tuple[int, int, int, int] | None = None
    latency_runs: int = 50
    latency_threads: int = 2
    threads: int | None = None
    progress: bool = True


@dataclass
class Attempt:
    """One quantization tried: its configuration, files (in the work folder) and gate verdict."""

    label: str
    remedy: str
    method: str
    frames: int
    exclude: list[str]
    gate: GateReport
    trt_path: Path
    cpu_path: Path | None
    ranges: dict[str, tuple[float, float]]

    @property
    def passed(self) -> bool:
        return self.gate.passed

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "remedy": self.remedy, "method": self.method, "frames": self.frames,
                "exclude": self.exclude, "passed": self.passed, "worst_drop_points": self.gate.worst_drop_points,
                "gate": self.gate.to_dict()}


@dataclass
class CalibrationResult:
    """The outcome: every attempt, the one kept (or ``None``), files written, latency."""

    request: CalibrateRequest
    contract: ModelContract
    attempts: list[Attempt]
    chosen: Attempt | None
    frames_used: int
    frames_skipped: int
    eval_uri: str
    eval_frames: int
    cache: dict[str, Any]
    outputs: dict[str, str] = field(default_factory=dict)
    latency_ms: dict[str, Any] = field(default_factory=dict)
    advice: list[str] = field(default_factory=list)
    sensitivity: list[dict[str, Any]] | None = None

    @property
    def passed(self) -> bool:
        return self.chosen is not None

    def best(self) -> Attempt | None:
        return min(self.attempts, key=lambda a: a.gate.worst_drop_points) if self.attempts else None

    def to_dict(self) -> dict[str, Any]:
        chosen = self.chosen
        best = self.best()
        return {
            "model": str(self.request.model), "model_id": self.contract.model_id,
            "data": ", ".join(self.request.data), "frames_used": self.frames_used, "frames_skipped": self.frames_skipped,
            "eval_data": self.eval_uri, "eval_frames": self.eval_frames, "max_dice_drop": self.request.max_dice_drop,
            "passed": self.passed, "cache": self.cache,
            "attempts": [a.to_dict() for a in self.attempts],
            "chosen": chosen.to_dict() if chosen else None,
            "best": best.to_dict() if best and not chosen else None,
            "auto_choice": chosen.label if chosen and self.request.auto and chosen.remedy != "initial" else None,
            "outputs": self.outputs, "latency_ms": self.latency_ms, "advice": self.advice,
            "layer_sensitivity": self.sensitivity,
        }


class _Run:
    """State of one ``calibrate`` call: work folder, cache, statistics per frame count, gate."""

    def __init__(self, req: CalibrateRequest, contract: ModelContract, workdir: Path, data: CalibrationData | None) -> None:
        self.req = req
        self.contract = contract
        self.workdir = workdir
        with _stage("preparing the model", req.model):
            self.prepared = q.prepare_model(req.model, workdir)
        self.model_sha = file_sha256(req.model)
        root = (req.cache_dir or default_cache_dir()) if req.use_cache else None
        self.cache = CalibrationCache(root)
        self.data = data
        self.stats: dict[int, ActivationStats] = {}
        self.keys: dict[int, str] = {}
        self.cache_info: dict[str, Any] = {"dir": str(root) if root else None, "stats_hit": False, "stats_key": None}
        self.frames_skipped = 0
        self.counter = 0
        self.gate: Gate | None = None
        self.sensitivity_report: list[dict[str, Any]] | None = None

    # ---- statistics, once per frame count
    def statistics(self, frames: int) -> ActivationStats:
        if frames in self.stats:
            return self.stats[frames]
        data = self.data if self.data is not None and self.data.frames == frames else CalibrationData(
            self.req.data, frames, self.contract, roi=self.req.roi)
        if self.data is None:
            self.data = data
        key = CalibrationCache.stats_key(f"{self.model_sha}+{q.PREPARE_FORMAT}", data.description)
        stats = self.cache.load_stats(key) if data.cacheable else None
        if stats is not None:
            log.info("calibration statistics for %d frames found in the cache (%s)", stats.frames,
                     self.cache.stats_path(key))
            self.cache_info.update(stats_hit=True, stats_key=key)
        else:
            with _stage("collecting statistics", self.req.model):
                stats = collect_statistics(self.prepared, self.contract.input.name, data.inputs(), total=frames,
                                           progress=self.req.progress, threads=self.req.threads)
            self.frames_skipped += data.skipped
            if stats.frames == 0:
                raise ConfigError(f"no calibration frames could be read from {data.label()}",
                                  "check --data: a synthetic:// URI, a folder of images/.npy, or a video file")
            if data.cacheable:
                self.cache.save_stats(key, stats)
            self.cache_info.update(stats_key=key)
        self.stats[frames] = stats
        self.keys[frames] = key
        return stats

    # ---- ranges and files
    def ranges_json(self, method: str, frames: int) -> tuple[Path, dict[str, tuple[float, float]], int]:
        """The ranges of ``method`` as ORT's calibration-cache JSON (cached), the ranges, the frames behind them."""
        stats = self.statistics(frames)
        ranges = stats.ranges(method, self.req.percentile)
        key = CalibrationCache.ranges_key(self.keys[frames], method, self.req.percentile)
        path = self.cache.ranges_path(key) if self.cache.root else None
        if path is None:
            path = self.workdir / f"ranges-{key}.json"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            q.write_ranges(ranges, method, path)
        return path, ranges, stats.frames

    def quantize(self, method: str, frames: int, exclude: list[str], variant: str) -> Path:
        ranges_json, _, _ = self.ranges_json(method, frames)
        self.counter += 1
        suffix = ".int8.onnx" if variant == "tensorrt" else ".int8-cpu.onnx"
        with _stage("quantizing", self.req.model):
            path = q.quantize_variant(self.prepared, ranges_json, method, self.workdir / f"a{self.counter}{suffix}",
                                      variant, exclude)
        if variant == "tensorrt":
            violations = validate_model(path)
            if violations and all(v.rule == "no_qdq" for v in violations):
                raise ConfigError(f"nothing of {self.req.model} is left to quantize with {len(exclude)} layer(s) in float",
                                  "exclude fewer layers (--exclude / --keep-first-last-float)")
            if violations:
                raise CalibrationError(
                    f"the TensorRT INT8 file made for {self.req.model} breaks TensorRT's Q/DQ rules: "
                    + "; ".join(str(v) for v in violations[:5]),
                    "this is a medstream bug: please report it with the model; no file was written")
        return path

    # ---- one attempt
    def attempt(self, label: str, remedy: str, method: str, frames: int, exclude: list[str]) -> Attempt:
        _, ranges, used = self.ranges_json(method, frames)
        trt = self.quantize(method, frames, exclude, "tensorrt")
        cpu = self.quantize(method, frames, exclude, "cpu") if self.req.cpu_variant else None
        assert self.gate is not None
        report = self.gate.new_report()
        with _stage("scoring the accuracy gate", self.req.model):
            report.variants.append(self.gate.score(trt, "int8"))
            if cpu is not None:
                report.variants.append(self.gate.score(cpu, "int8-cpu"))
        result = Attempt(label=label, remedy=remedy, method=method, frames=used, exclude=list(exclude),
                         gate=report, trt_path=trt, cpu_path=cpu, ranges=ranges)
        log.info("attempt %s: %s (worst %s drop %.2f points)", label, "pass" if result.passed else "FAIL",
                 report.metric, report.worst_drop_points)
        return result

    # ---- which layers hurt
    def sensitivity(self, method: str, frames: int, exclude: list[str], n_frames: int = 4) -> list[dict[str, Any]]:
        """Weighted layers ranked by the argmax agreement (with FP32) gained by keeping each one in float.

        Leave-one-out on ``n_frames`` held-out frames: one extra quantization and a few inferences
        per layer, so it runs only when the gate has failed.
        """
        assert self.gate is not None
        subset = EvalSet(uri=self.gate.data.uri, inputs=self.gate.data.inputs[:n_frames],
                         truths=self.gate.data.truths[:n_frames])
        ref = ModelRun(self.prepared, self.contract, subset, self.req.threads)

        def harm(path: Path) -> tuple[float, float]:
            run = ModelRun(path, self.contract, subset, self.req.threads, keep_outputs=False, reference=ref)
            return 1.0 - run.agree / max(run.pixels, 1), run.sum_abs / max(run.values, 1)

        base = harm(self.quantize(method, frames, exclude, "tensorrt"))
        layers = [n for n in q.weighted_layers(self.prepared) if n not in exclude]
        ranked = []
        for name in layers:
            try:
                dis, err = harm(self.quantize(method, frames, [*exclude, name], "tensorrt"))
            except ConfigError:  # nothing left to quantize without it
                continue
            ranked.append({"layer": name, "agreement_gain": base[0] - dis, "logit_error_gain": base[1] - err})
        ranked.sort(key=lambda r: (r["agreement_gain"], r["logit_error_gain"]), reverse=True)
        return ranked


def _label(method: str, frames: int, exclude: list[str], note: str = "") -> str:
    text = f"{method}, {frames} frames"
    if note:
        text += f", {note}"
    elif exclude:
        text += f", {len(exclude)} layer(s) in float"
    return text


def calibrate(req: CalibrateRequest, data: CalibrationData | None = None) -> CalibrationResult:
    """Quantize ``req.model`` as asked, gate it, and write the outputs of the attempt that passes.

    Every failure is a :class:`~medstream.runtime.errors.MedstreamError` naming the model and the way
    out (library exceptions are wrapped per stage by :func:`_stage`); no traceback reaches the user.

    Parameters
    ----------
    req
        The request.
    data
        Calibration frames to use instead of building them from ``req.data`` (tests pass one to
        count reads).
    """
    with _stage("running the calibration", req.model):
        return _calibrate(req, data)


def _calibrate(req: CalibrateRequest, data: CalibrationData | None) -> CalibrationResult:
    method = req.method or q.DEFAULT_METHOD
    if method not in METHODS:
        raise ConfigError(f"unknown calibration method {method!r}", f"use one of: {', '.join(METHODS)}")
    contract = require_model_contract(Path(req.model), req.contract_overrides, "calibrate")
    if contract.task not in ("segmentation", "classification", "detection"):
        raise ConfigError(f"model {req.model} is a {contract.task} model; the accuracy gate scores segmentation, "
                          "classification and detection", "calibrate a model of one of those tasks")
    eval_uri = req.eval_data or default_eval_uri(req.data, req.eval_frames)
    if eval_uri is None:
        raise ConfigError("the accuracy gate needs held-out frames with ground truth, and --data is not synthetic",
                          "pass --eval-data (synthetic://..., or a folder of frames with masks) and --eval-frames")
    req.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".medstream-calibrate-", dir=req.out.parent) as tmp:
        run = _Run(req, contract, Path(tmp), data)
        known = set(q.node_names(run.prepared))
        unknown = [n for n in req.exclude if n not in known]
        if unknown:
            raise ConfigError(f"--exclude names node(s) the model does not have: {', '.join(unknown)}",
                              "use node names as `medstream calibrate` reports them (or from Netron)")
        first_last = q.first_last_layers(run.prepared, contract.primary_output.name)
        # A detector's or keypoint model's decoding after its last convolution stays in float (q.decode_tail).
        tail = q.decode_tail(run.prepared, contract.primary_output.name) \
            if contract.task in ("detection", "keypoints") else []
        base_exclude = list(dict.fromkeys(req.exclude + tail + (first_last if req.keep_first_last_float else [])))
        run.statistics(req.frames)  # the one statistics pass (or the cache), before the slower gate setup
        with _stage("scoring the accuracy gate", req.model):
            eval_set = EvalSet.load(contract, eval_uri, req.eval_frames, roi=req.roi)
            run.gate = Gate(run.prepared, contract, eval_set, req.max_dice_drop, threads=req.threads,
                            max_output_error=req.max_output_error)

        note = "first/last layers in float" if req.keep_first_last_float and not req.exclude else ""
        if tail and not req.exclude:
            note = "decoding after the last convolution in float" + (f"; {note}" if note else "")
        attempts = [run.attempt(_label(method, req.frames, base_exclude, note), "initial", method, req.frames,
                                base_exclude)]
        if not attempts[-1].passed and req.auto:
            _auto(run, attempts, method, first_last, base_exclude)
        chosen = next((a for a in attempts if a.passed), None)
        result = CalibrationResult(
            request=req, contract=contract, attempts=attempts, chosen=chosen,
            frames_used=(chosen or attempts[0]).frames, frames_skipped=run.frames_skipped, eval_uri=eval_uri,
            eval_frames=eval_set.frames, cache=run.cache_info)
        if chosen is None:
            if run.sensitivity_report is None:
                best = min(attempts, key=lambda a: a.gate.worst_drop_points)
                run.sensitivity_report = run.sensitivity(best.method, req.frames, best.exclude)[:10]
            result.sensitivity = run.sensitivity_report
            result.advice = _advice(req, method, run.sensitivity_report)
        else:
            _write_outputs(run, result, chosen, True)  # a contract is always known here (read_model_contract)
            if req.latency_runs > 0:
                result.latency_ms = _latency(run, chosen, eval_set)
        _write_report(req, result)
    return result


def _auto(run: _Run, attempts: list[Attempt], method: str, first_last: list[str], base: list[str]) -> None:
    req = run.req
    # (1) the other methods, on the same statistics
    for other in (m for m in METHODS if m != method):
        attempts.append(run.attempt(_label(other, req.frames, base), "method", other, req.frames, base))
        if attempts[-1].passed:
            return
    best = min(attempts, key=lambda a: a.gate.worst_drop_points)
    # (2) first and last layers in float
    exclude = list(dict.fromkeys(base + first_last))
    if exclude != base:
        attempts.append(run.attempt(_label(best.method, req.frames, exclude, "first/last layers in float"),
                                    "first_last", best.method, req.frames, exclude))
        if attempts[-1].passed:
            return
    # (3) also the layers that hurt most, measured leave-one-out
    previous = attempts[-1] if exclude != base else best
    exclude = previous.exclude
    ranked = run.sensitivity(previous.method, req.frames, exclude)
    run.sensitivity_report = ranked[:10]
    worst = [r["layer"] for r in ranked if r["agreement_gain"] > 0 or r["logit_error_gain"] > 0]
    tried: set[tuple[str, ...]] = set()
    for k in (1, 2, 4):
        extra = worst[:k]
        if not extra or tuple(extra) in tried:
            break
        tried.add(tuple(extra))
        names = list(dict.fromkeys(exclude + extra))
        note = ("first/last + " if previous.remedy == "first_last" else "") + \
            f"{len(extra)} worst layer(s) in float: {', '.join(extra)}"
        attempts.append(run.attempt(_label(previous.method, req.frames, names, note), "nodes", previous.method,
                                    req.frames, names))
        if attempts[-1].passed:
            return
    # (4) more calibration frames, with the best configuration so far
    best = min(attempts, key=lambda a: a.gate.worst_drop_points)
    more = req.frames * 2
    attempt = run.attempt(_label(best.method, more, best.exclude, f"{more} frames" +
                                 (f", {len(best.exclude)} layer(s) in float" if best.exclude else "")),
                          "frames", best.method, more, best.exclude)
    if attempt.frames > best.frames:
        attempts.append(attempt)
    else:
        log.info("--auto: no more calibration frames available than the %d used", best.frames)


def _advice(req: CalibrateRequest, method: str, sensitivity: list[dict[str, Any]] | None) -> list[str]:
    tips = []
    if not req.auto:
        tips.append("--auto (tries the remedies below in order)")
    tips.append(f"--method {' or '.join(m for m in METHODS if m != method)}")
    if not req.keep_first_last_float:
        tips.append("--keep-first-last-float")
    worst = [r["layer"] for r in (sensitivity or []) if r["agreement_gain"] > 0][:3]
    tips.append(f"--exclude {' '.join(worst)} (the layers that hurt most)" if worst
                else "--exclude NODE for layers that should stay float")
    tips.append(f"--frames {req.frames * 2} (or more varied --data)")
    return tips


def _write_outputs(run: _Run, result: CalibrationResult, chosen: Attempt, contract_known: bool) -> None:
    req = run.req
    contract = run.contract if contract_known else None
    meta = {"method": chosen.method, "frames": chosen.frames, "data": req.data, "excluded_nodes": chosen.exclude,
            "percentile": req.percentile if chosen.method == "percentile" else None,
            "eval_data": result.eval_uri, "eval_frames": result.eval_frames,
            "max_dice_drop_points": req.max_dice_drop, "worst_dice_drop_points": chosen.gate.worst_drop_points,
            "weights": "int8 symmetric per-channel", "source_model_sha256": run.model_sha}
    out = Path(req.out)
    q.stamp_metadata(chosen.trt_path, contract, {**meta, "variant": "tensorrt", "activations": "int8 symmetric"}, out)
    result.outputs["int8"] = str(out)
    if chosen.cpu_path is not None:
        cpu_out = q.cpu_variant_path(out)
        q.stamp_metadata(chosen.cpu_path, contract, {**meta, "variant": "cpu", "activations": "uint8 asymmetric"},
                         cpu_out)
        result.outputs["int8_cpu"] = str(cpu_out)
    if req.trt_cache:
        cache_out = q.sibling_path(out, ".calib.cache")
        write_cache(cache_out, q.amax_of(chosen.ranges), version=req.trt_version)
        result.outputs["trt_calib_cache"] = str(cache_out)


def _latency(run: _Run, chosen: Attempt, eval_set: EvalSet) -> dict[str, Any]:
    from medstream.calibration.report import measure_latencies

    req = run.req
    models: dict[str, Path] = {"fp32": run.prepared, "int8": chosen.trt_path}
    if chosen.cpu_path is not None:
        models["int8_cpu"] = chosen.cpu_path
    lat: dict[str, Any] = measure_latencies(models, run.contract.input.name, eval_set.inputs[0],
                                            runs=req.latency_runs, threads=req.latency_threads)
    return {"threads": req.latency_threads, "runs": req.latency_runs, **lat}


def _write_report(req: CalibrateRequest, result: CalibrationResult) -> None:
    path = q.sibling_path(req.out, ".int8.report.json")
    write_text_atomic(path, json.dumps(result.to_dict(), indent=2))
    result.outputs.setdefault("report", str(path))


__all__ = ["Attempt", "CalibrateRequest", "CalibrationError", "CalibrationResult", "calibrate"]
