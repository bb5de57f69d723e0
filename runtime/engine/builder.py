"""ONNX to TensorRT engine, with the full ``tensorrt`` package (the lean runtime cannot build).

What differs between TensorRT versions, and how this module handles it:

* **TensorRT 10**: networks are weakly typed by default; fp16 and int8 are builder flags
  (``BuilderFlag.FP16``/``INT8``). int8 comes from the calibration step's QDQ model (explicit
  quantization), so no calibrator is needed: with Q/DQ nodes present TensorRT uses their scales.
* **TensorRT 11**: every network is strongly typed and the precision flags are gone. fp16 means
  converting the ONNX to fp16 first (:mod:`medstream.runtime.engine.fp16`); int8 is the QDQ model
  as is. ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` is still accepted (and ignored) in 11, so
  it is set whenever no precision flag is used (fp32, and every build on 11).

Also: optimization profiles from the model contract for dynamic axes
(:mod:`medstream.runtime.engine.profiles`); a persisted timing cache (rebuilds after a driver
update take seconds, not minutes); DLA with GPU fallback on Jetson (TensorRT 10, and 11.4.1+ on
AGX Orin); and an ``IProgressMonitor`` that logs each build phase, so a 10-minute Jetson build never
looks hung.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medstream.runtime.contract import ModelContract
from medstream.runtime.engine.profiles import ProfileShapes, is_dynamic, profile_from_contract
from medstream.runtime.errors import ConfigError, MedstreamError, ModelLoadError
from medstream.runtime.files import write_bytes_atomic

log = logging.getLogger("medstream.engine")


class BuilderUnavailable(MedstreamError):
    """The full TensorRT package (with the builder) is not installed."""


def require_builder() -> Any:
    """Import the full ``tensorrt`` package or explain, for each platform, how to get it."""
    try:
        import tensorrt as trt
    except ImportError:
        lean = ""
        try:
            import tensorrt_lean

            lean = (f" Only the lean runtime (tensorrt_lean {tensorrt_lean.__version__}) is installed: it runs "
                    "version-compatible engines but cannot build them.")
        except ImportError:
            pass
        raise BuilderUnavailable(
            "building a TensorRT engine needs the full TensorRT Python package ('import tensorrt' fails)." + lean,
            "x86-64 with an NVIDIA GPU: pip install 'medstream[tensorrt]' (TensorRT 10 or 11 from PyPI); "
            "Jetson: install JetPack 6 (TensorRT 10; 'sudo apt install python3-libnvinfer') and use its Python; "
            "or build on a machine with the same GPU and TensorRT and copy the .engine with its .json manifest",
        ) from None
    return trt


def trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


@dataclass
class BuildOptions:
    precision: str = "fp32"
    dla_core: int | None = None
    workspace_mb: int | None = None
    timing_cache: Path | None = None
    version_compatible: bool = False  # needed for engines the lean runtime (tensorrt_lean) will load
    max_batch: int = 4
    builder_optimization_level: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class ProgressLog:
    """The logic of the build progress monitor, independent of TensorRT (so it is testable anywhere).

    TensorRT calls ``phase_start``/``step_complete``/``phase_finish`` from its build threads; phases
    nest (``parent_phase``). Top-level phases and their finish are always logged; steps at most every
    ``interval_s`` seconds per phase, with the step count and elapsed time.
    """

    def __init__(self, logger: logging.Logger | None = None, interval_s: float = 2.0) -> None:
        self._log = logger or log
        self._interval = interval_s
        self._lock = threading.Lock()
        self._phases: dict[str, dict[str, Any]] = {}
        self._start = time.monotonic()
        self.cancelled = False
        self.lines: list[str] = []

    def _emit(self, text: str) -> None:
        line = f"[build {time.monotonic() - self._start:6.1f}s] {text}"
        self.lines.append(line)
        self._log.info("%s", line)

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        with self._lock:
            depth = self._phases[parent_phase]["depth"] + 1 if parent_phase in self._phases else 0
            self._phases[phase_name] = {"steps": int(num_steps), "depth": depth, "t0": time.monotonic(),
                                        "last": float("-inf")}  # the first step is always logged
            if depth <= 1:
                self._emit(f"{'  ' * depth}{phase_name}: started ({num_steps} steps)")

    def step_complete(self, phase_name: str, step: int) -> bool:
        with self._lock:
            info = self._phases.get(phase_name)
            now = time.monotonic()
            if info is not None and now - info["last"] >= self._interval:
                info["last"] = now
                self._emit(f"{'  ' * info['depth']}{phase_name}: step {step + 1}/{info['steps']}")
            return not self.cancelled  # False asks TensorRT to cancel the build

    def phase_finish(self, phase_name: str) -> None:
        with self._lock:
            info = self._phases.pop(phase_name, None)
            if info is not None and info["depth"] <= 1:
                self._emit(f"{'  ' * info['depth']}{phase_name}: done in {time.monotonic() - info['t0']:.1f}s")


def make_progress_monitor(trt: Any, logger: logging.Logger | None = None) -> Any:
    """A ``trt.IProgressMonitor`` subclass instance that logs through :class:`ProgressLog`."""

    class _Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)  # pybind11 trampolines need the base initialised
            self.progress = ProgressLog(logger)

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.progress.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name, step):
            return self.progress.step_complete(phase_name, step)

        def phase_finish(self, phase_name):
            self.progress.phase_finish(phase_name)

    return _Monitor()


def _parse(trt: Any, network: Any, logger: Any, onnx_path: Path) -> None:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise ModelLoadError(f"TensorRT's ONNX parser rejected {onnx_path}: {'; '.join(errors)[:600]}",
                             "check the opset and operators (medstream export uses opset 17); try "
                             "'polygraphy inspect model' for details")


def build_engine(onnx_path: str | Path, contract: ModelContract, options: BuildOptions | None = None,
                 logger: logging.Logger | None = None) -> tuple[bytes, dict[str, Any]]:
    """Build a serialized engine; returns ``(engine bytes, build facts for the manifest)``.

    Raises
    ------
    BuilderUnavailable
        No full TensorRT here.
    ConfigError
        A precision/DLA request this TensorRT or model cannot honour (int8 without Q/DQ nodes, DLA
        core that does not exist...).
    ModelLoadError
        The parser or the builder failed.
    """
    import onnx

    from medstream.runtime.engine.fp16 import convert_file_to_fp16, has_qdq

    trt = require_builder()
    opts = options or BuildOptions()
    onnx_path = Path(onnx_path)
    major = trt_major(trt)
    if opts.precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"unknown precision {opts.precision!r}", "use fp32, fp16 or int8")
    quantized = has_qdq(onnx.load(str(onnx_path), load_external_data=False))
    if opts.precision == "int8" and not quantized:
        raise ConfigError(f"--precision int8 needs a QDQ model, and {onnx_path} has no QuantizeLinear/"
                          "DequantizeLinear nodes",
                          "make one with 'medstream calibrate --model ...' and build from its output")
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    facts: dict[str, Any] = {"tensorrt_version": str(trt.__version__), "precision": opts.precision,
                             "version_compatible": opts.version_compatible, "dla_core": opts.dla_core}
    with tempfile.TemporaryDirectory(prefix="medstream-build-") as tmp:
        source = onnx_path
        precision_flags: list[str] = []
        if opts.precision == "fp16":
            if major >= 11:
                # TensorRT 11: strongly typed only; the fp16 types must be in the graph itself.
                source = convert_file_to_fp16(onnx_path, Path(tmp) / "model_fp16.onnx")
                facts["fp16_via"] = "onnx conversion (strongly typed)"
            else:
                precision_flags = ["FP16"]  # TensorRT 10: weakly typed, builder may pick fp16 kernels
                facts["fp16_via"] = "BuilderFlag.FP16"
        elif opts.precision == "int8" and major < 11:
            precision_flags = ["INT8", "FP16"]  # TensorRT 10: Q/DQ scales; FP16 for the unquantized layers
        flags = 0
        if not precision_flags and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # 10.x opt-in, 11.x always on
        network = builder.create_network(flags)
        _parse(trt, network, trt_logger, source)
        config = builder.create_builder_config()
        for name in precision_flags:
            config.set_flag(getattr(trt.BuilderFlag, name))
        if opts.workspace_mb:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_mb) << 20)
        if opts.builder_optimization_level is not None:
            config.builder_optimization_level = int(opts.builder_optimization_level)
        if opts.version_compatible:
            config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        monitor = None
        if hasattr(config, "progress_monitor"):  # TensorRT >= 10.0
            monitor = make_progress_monitor(trt, logger)
            config.progress_monitor = monitor
        facts["profiles"] = _add_profiles(trt, builder, network, config, contract, opts)
        if opts.dla_core is not None:
            _configure_dla(trt, builder, config, opts.dla_core)
        cache = _load_timing_cache(config, opts.timing_cache)
        log.info("building TensorRT %s engine for %s (%s%s); first builds take minutes, progress follows",
                 trt.__version__, onnx_path.name, opts.precision,
                 f", DLA core {opts.dla_core}" if opts.dla_core is not None else "")
        t0 = time.monotonic()
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ModelLoadError(f"TensorRT could not build an engine for {onnx_path} ({opts.precision})",
                                 "run with --log-level DEBUG for TensorRT's messages; try --precision fp32")
        facts["build_seconds"] = round(time.monotonic() - t0, 1)
        _save_timing_cache(config, cache, opts.timing_cache)
        facts["timing_cache"] = str(opts.timing_cache) if opts.timing_cache else None
        return bytes(memoryview(serialized)), facts


def _add_profiles(trt: Any, builder: Any, network: Any, config: Any, contract: ModelContract,
                  opts: BuildOptions) -> list[dict[str, Any]]:
    shapes: list[ProfileShapes] = []
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tuple(int(d) for d in tensor.shape)
        if not is_dynamic(dims):
            continue
        if tensor.name != contract.input.name:
            raise ConfigError(f"network input {tensor.name!r} is dynamic {dims} but the contract describes only "
                              f"{contract.input.name!r}", "fix contract.input.name or export with fixed shapes")
        shapes.append(profile_from_contract(contract, dims, max_batch=opts.max_batch))
    if shapes:
        profile = builder.create_optimization_profile()
        for p in shapes:
            profile.set_shape(p.name, p.min, p.opt, p.max)
            log.info("optimization profile %s: min %s opt %s max %s", p.name, p.min, p.opt, p.max)
        config.add_optimization_profile(profile)
    return [{"name": p.name, **p.as_dict()} for p in shapes]


def _configure_dla(trt: Any, builder: Any, config: Any, core: int) -> None:
    cores = int(getattr(builder, "num_DLA_cores", 0))
    if core < 0 or core >= cores:
        raise ConfigError(f"DLA core {core} asked for, but this device has {cores} DLA core(s) "
                          f"(TensorRT {trt.__version__})",
                          "omit --dla (GPU only); DLA exists on Jetson AGX/NX Orin and Xavier, with TensorRT 10 "
                          "or 11.4.1+ (AGX Orin)")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = int(core)
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers DLA cannot run go to the GPU instead of failing


def _load_timing_cache(config: Any, path: Path | None) -> Any:
    data = b""
    if path is not None and Path(path).is_file():
        data = Path(path).read_bytes()
        log.info("using timing cache %s (%d bytes)", path, len(data))
    cache = config.create_timing_cache(data)
    # ignore_mismatch=False: a cache from another device/TensorRT is ignored rather than trusted.
    if not config.set_timing_cache(cache, False):
        log.warning("timing cache %s does not match this TensorRT/GPU; starting a fresh one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache


def _save_timing_cache(config: Any, cache: Any, path: Path | None) -> None:
    if path is None:
        return
    current = config.get_timing_cache() or cache
    write_bytes_atomic(path, bytes(memoryview(current.serialize())))  # a half-written cache is worse than none


# Builder-side TensorRT API used above, checked by the contract test where full tensorrt imports.
USED_BUILDER_API: dict[str, tuple[str, ...]] = {
    "Builder": ("create_network", "create_builder_config", "create_optimization_profile",
                "build_serialized_network", "num_DLA_cores"),
    "IBuilderConfig": ("set_flag", "set_memory_pool_limit", "create_timing_cache", "set_timing_cache",
                       "get_timing_cache", "add_optimization_profile", "default_device_type", "DLA_core",
                       "progress_monitor"),
    "IOptimizationProfile": ("set_shape",),
    "OnnxParser": ("parse_from_file", "num_errors", "get_error"),
    "ITimingCache": ("serialize",),
    "IProgressMonitor": ("phase_start", "step_complete", "phase_finish"),
}
