"""Facts about this machine, gathered in one place: call :func:`machine_facts`.

``medstream doctor``, the benchmark report's environment section and the telemetry sampler's static
facts all read them from here, so a Jetson, a GPU or a library version is detected one way only.

What is gathered: CPU model, architecture, logical and usable cores and the instruction-set flags
that change inference speed (AVX2, AVX-512, VNNI, AMX on x86; NEON/ASIMD, dot product on Arm);
memory; NVIDIA GPUs and driver (NVML, else ``nvidia-smi``); CUDA through the one CUDA layer
(:mod:`medstream.runtime.gpu.cuda`); TensorRT (full, lean or absent, DLA cores); whether libnvinfer
loads; ONNX Runtime and its providers; CuPy; on a Jetson the model, L4T release, power mode and
clocks; Python, platform and medstream versions.

Every probe is best effort and never raises: a missing package, driver or tool is reported as such
(with the reason), because ``doctor`` is what people run when something is missing.

Caching: :func:`machine_facts` caches per ``root`` for the life of the process (the full gather
imports TensorRT and queries NVML: ~0.1-1 s); pass ``refresh=True`` to gather again (e.g. after a
driver was loaded). :func:`cpu_facts` and :func:`is_jetson` are cheap file reads, cached too.
Nothing here decides which backend to use: that judgment belongs to the backends
(:func:`medstream.runtime.backends.choose_backend`) and ``doctor`` composes the two in the CLI.
This module imports only the CUDA layer below it (``gpu``), never a backend.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import glob
import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

# The CPU flags that matter for inference speed (ONNX Runtime's MLAS and oneDNN pick kernels by them).
INFERENCE_CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                       "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
                       # Arm (Jetson): /proc/cpuinfo "Features"
                       "asimd", "asimddp", "asimdhp", "sve", "sve2", "i8mm", "bf16")


@dataclass(frozen=True)
class CpuFacts:
    model: str
    architecture: str
    cores: int | None
    usable_cores: int
    flags: tuple[str, ...] = ()  # the subset of INFERENCE_CPU_FLAGS this CPU has

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def amx(self) -> bool:
        return "amx_tile" in self.flags


@dataclass(frozen=True)
class GpuFacts:
    index: int
    name: str
    memory_mib: int
    sm_clock_mhz: int | None = None  # at gather time (it moves with load and power caps)


@dataclass(frozen=True)
class GpuReport:
    """NVIDIA GPUs and driver as NVML (or ``nvidia-smi``) sees them; ``source`` None: none found."""

    source: str | None
    driver: str | None
    gpus: tuple[GpuFacts, ...] = ()
    note: str | None = None


@dataclass(frozen=True)
class CudaDevice:
    index: int
    name: str
    compute_capability: str
    total_memory_bytes: int
    integrated: bool  # True on Jetson: host and device share DRAM
    can_map_host_memory: bool
    cuda_driver_version: str
    cuda_runtime_version: str


@dataclass(frozen=True)
class CudaFacts:
    cuda_python: str | None
    driver_version: str | None
    device_count: int = 0
    devices: tuple[CudaDevice, ...] = ()
    note: str | None = None


@dataclass(frozen=True)
class TensorRTFacts:
    full: str | None
    lean: str | None
    status: str
    libs_present: bool  # libnvinfer loads (ONNX Runtime lists its TensorRT EP even when it does not)
    dla_cores: int | None = None
    dla_note: str | None = None


@dataclass(frozen=True)
class OnnxRuntimeFacts:
    version: str | None
    providers: tuple[str, ...] = ()
    device: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class JetsonFacts:
    model: str | None
    l4t_release: str | None
    power_mode: str | None
    power_mode_raw: str | None
    note: str | None
    cpu_freq_khz: dict[str, str | None] = field(default_factory=dict)
    gpu_freq_hz: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True)
class MachineFacts:
    """Everything :func:`machine_facts` gathers; :meth:`to_dict` for JSON (``doctor --json``, bench reports)."""

    medstream: str
    python: str
    platform: str
    hostname: str
    cpu: CpuFacts
    memory_gib: float | None
    gpu: GpuReport
    cuda: CudaFacts
    tensorrt: TensorRTFacts
    onnxruntime: OnnxRuntimeFacts
    cupy: str | None
    jetson: JetsonFacts | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -------------------------------------------------------------------------------------------- helpers
def _run(cmd: list[str], timeout: float = 5.0) -> str | None:
    """stdout of a tool, or None when it is absent, fails or hangs."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _read(path: Path) -> str | None:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return path.read_text(errors="replace").strip()
    return None


def package_version(dist: str) -> str | None:
    """Installed version of a distribution (``"onnxruntime-gpu"``), ``None`` when not installed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _module_version(module: str) -> str | None:
    try:
        return str(__import__(module).__version__)
    except Exception:
        return None


# ------------------------------------------------------------------------------------------- probes
@functools.lru_cache(maxsize=8)
def cpu_facts(root: str | Path = "/") -> CpuFacts:
    """CPU model, cores (all and usable by this process) and inference-relevant flags."""
    model = platform.processor() or platform.machine()
    flags: set[str] = set()
    text = _read(Path(root) / "proc" / "cpuinfo") or ""
    found_model = False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if not found_model and key in ("model name", "hardware"):
            model, found_model = value.strip(), True
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return CpuFacts(model=model, architecture=platform.machine(), cores=os.cpu_count(), usable_cores=usable,
                    flags=tuple(f for f in INFERENCE_CPU_FLAGS if f in flags))


def gpu_report() -> GpuReport:
    """GPUs and driver via NVML (nvidia-ml-py) when installed, else nvidia-smi, else none."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            gpus = []
            for i in range(pynvml.nvmlDeviceGetCount()):
                h = pynvml.nvmlDeviceGetHandleByIndex(i)
                name = pynvml.nvmlDeviceGetName(h)
                mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                clock = None
                with contextlib.suppress(Exception):  # NVML_ERROR_NOT_SUPPORTED on some boards
                    clock = int(pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM))
                gpus.append(GpuFacts(i, name.decode() if isinstance(name, bytes) else str(name), int(mem.total) >> 20,
                                     clock))
            return GpuReport("nvml", driver.decode() if isinstance(driver, bytes) else str(driver), tuple(gpus))
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # not installed, or no driver: fall through to nvidia-smi
        nvml_error = f"{type(exc).__name__}: {exc}"
    out = _run(["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total,clocks.sm",
                "--format=csv,noheader,nounits"])
    if out:
        gpus, driver = [], None
        for line in out.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 4:
                clock = int(float(parts[4])) if len(parts) > 4 and parts[4].replace(".", "", 1).isdigit() else None
                gpus.append(GpuFacts(int(parts[0]), parts[1], int(float(parts[3])), clock))
                driver = parts[2]
        return GpuReport("nvidia-smi", driver, tuple(gpus))
    smi = "absent" if not shutil.which("nvidia-smi") else "failed"
    return GpuReport(None, None, (), f"no NVIDIA GPU found (NVML: {nvml_error}; nvidia-smi: {smi})")


def cuda_facts() -> CudaFacts:
    """cuda-python version, driver CUDA version and devices, through the one CUDA layer."""
    from medstream.runtime.gpu import cuda

    version = cuda.bindings_version()
    if version is None:
        return CudaFacts(None, None, note="cuda-python not installed (pip install 'medstream[gpu]')")
    try:
        n = cuda.device_count()
        devices = tuple(CudaDevice(**cuda.device_info(i)) for i in range(n))
        return CudaFacts(version, cuda.driver_version(), n, devices)
    except Exception as exc:
        return CudaFacts(version, cuda.driver_version(), note=f"CUDA query failed: {exc}")


def tensorrt_libs_present() -> bool:
    """Whether libnvinfer can be loaded (ORT lists its TensorRT EP even when the libraries are missing)."""
    for name in ("libnvinfer.so.11", "libnvinfer.so.10", "libnvinfer.so"):
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return ctypes.util.find_library("nvinfer") is not None


def tensorrt_facts(cuda_devices: int) -> TensorRTFacts:
    full = lean = None
    trt: Any = None
    with contextlib.suppress(ImportError):
        import tensorrt

        full, trt = tensorrt.__version__, tensorrt
    with contextlib.suppress(ImportError):
        import tensorrt_lean

        lean, trt = tensorrt_lean.__version__, trt or tensorrt_lean
    status = ("full (build + run)" if full else "lean (run version-compatible engines only)" if lean else "absent")
    dla_cores = dla_note = None
    if trt is not None and cuda_devices > 0:  # a TensorRT runtime needs a CUDA device to exist
        try:
            dla_cores = int(trt.Runtime(trt.Logger(trt.Logger.ERROR)).num_DLA_cores)
        except Exception as exc:
            dla_note = f"could not query DLA cores: {exc}"
    return TensorRTFacts(full, lean, status, tensorrt_libs_present(), dla_cores, dla_note)


def onnxruntime_facts() -> OnnxRuntimeFacts:
    try:
        import onnxruntime as ort
    except ImportError:
        return OnnxRuntimeFacts(None, note="onnxruntime not installed")
    return OnnxRuntimeFacts(ort.__version__, tuple(ort.get_available_providers()), ort.get_device())


@functools.lru_cache(maxsize=8)
def is_jetson(root: str | Path = "/") -> bool:
    """An NVIDIA Jetson: ``/etc/nv_tegra_release`` exists or the device-tree model names a Jetson."""
    root = Path(root)
    if (root / "etc" / "nv_tegra_release").exists():
        return True
    return "jetson" in _device_tree_model(root).lower()


def _device_tree_model(root: Path) -> str:
    with contextlib.suppress(OSError):
        return (root / "proc" / "device-tree" / "model").read_bytes().rstrip(b"\x00").decode(errors="replace").strip()
    return ""


def jetson_facts(root: str | Path = "/") -> JetsonFacts | None:
    """Jetson model, L4T release, power mode and clocks (they change latency 2-3x); ``None`` elsewhere."""
    root = Path(root)
    if not is_jetson(root):
        return None
    release = (_read(root / "etc" / "nv_tegra_release") or "").splitlines()
    power = _run(["nvpmodel", "-q"]) if root == Path("/") else None
    mode = None
    for line in (power or "").splitlines():
        if "power mode" in line.lower():
            mode = line.split(":", 1)[-1].strip()
    sysfs = root / "sys" / "devices"
    cpu_freq = {Path(p).parts[-3]: _read(Path(p)) for p in sorted(glob.glob(str(sysfs / "system/cpu/cpu*/cpufreq/scaling_cur_freq")))}
    gpu_freq = {p: _read(Path(p)) for p in sorted(glob.glob(str(sysfs / "*gpu*/devfreq/*/cur_freq"))
                                                  + glob.glob(str(sysfs / "platform/*gpu*/devfreq/*/cur_freq")))}
    return JetsonFacts(model=_device_tree_model(root) or None, l4t_release=release[0].strip() if release else None,
                       power_mode=mode, power_mode_raw=power,
                       note=None if power else "nvpmodel not found or not permitted",
                       cpu_freq_khz=cpu_freq, gpu_freq_hz=gpu_freq)


def _memory_gib() -> float | None:
    with contextlib.suppress(Exception):
        import psutil

        return round(psutil.virtual_memory().total / 2**30, 1)
    return None


def gather(root: str | Path = "/") -> MachineFacts:
    """Probe everything now (uncached); prefer :func:`machine_facts`."""
    from medstream.runtime.version import __version__

    cuda = cuda_facts()
    return MachineFacts(
        medstream=__version__, python=platform.python_version(), platform=platform.platform(),
        hostname=platform.node(), cpu=cpu_facts(root), memory_gib=_memory_gib(), gpu=gpu_report(), cuda=cuda,
        tensorrt=tensorrt_facts(cuda.device_count), onnxruntime=onnxruntime_facts(), cupy=_module_version("cupy"),
        jetson=jetson_facts(root))


_CACHE: dict[str, MachineFacts] = {}


def machine_facts(root: str | Path = "/", *, refresh: bool = False) -> MachineFacts:
    """The machine's facts, gathered once per process (``refresh=True`` to gather again).

    ``root``: the filesystem root that ``/proc`` and ``/etc`` are read under (tests point it at a fake tree).
    """
    key = str(root)
    if refresh or key not in _CACHE:
        if refresh:
            cpu_facts.cache_clear()
            is_jetson.cache_clear()
        _CACHE[key] = gather(root)
    return _CACHE[key]


__all__ = ["CpuFacts", "CudaDevice", "CudaFacts", "GpuFacts", "GpuReport", "JetsonFacts", "MachineFacts",
           "OnnxRuntimeFacts", "TensorRTFacts", "cpu_facts", "cuda_facts", "gather", "gpu_report", "is_jetson",
           "jetson_facts", "machine_facts", "onnxruntime_facts", "package_version", "tensorrt_facts",
           "tensorrt_libs_present"]
