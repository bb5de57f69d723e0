"""What this machine can run: the facts behind ``medstream doctor``.

Every probe is optional and never raises: a missing package, driver or tool is reported as such
(with the reason), because ``doctor`` is what people run when something is missing. The report ends
with the backend ``auto`` would pick and why, from the same :func:`choose_backend` the runtime uses.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def _run(cmd: list[str], timeout: float = 5.0) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_info(root: str | Path = "/") -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    cpuinfo = Path(root) / "proc" / "cpuinfo"
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware")):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 1
    return {"model": model, "architecture": platform.machine(), "cores": os.cpu_count(), "usable_cores": usable}


def gpu_info() -> dict[str, Any]:
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
                gpus.append({"index": i, "name": name.decode() if isinstance(name, bytes) else name,
                             "memory_mib": int(mem.total) >> 20})
            return {"source": "nvml", "driver": driver.decode() if isinstance(driver, bytes) else driver,
                    "gpus": gpus}
        finally:
            pynvml.nvmlShutdown()
    except Exception as exc:  # not installed, or no driver: fall through to nvidia-smi
        nvml_error = f"{type(exc).__name__}: {exc}"
    out = _run(["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total", "--format=csv,noheader,nounits"])
    if out:
        gpus, driver = [], None
        for line in out.splitlines():
            parts = [p.strip() for p in line.split(",")]
            if len(parts) >= 4:
                gpus.append({"index": int(parts[0]), "name": parts[1], "memory_mib": int(float(parts[3]))})
                driver = parts[2]
        return {"source": "nvidia-smi", "driver": driver, "gpus": gpus}
    return {"source": None, "driver": None, "gpus": [],
            "note": f"no NVIDIA GPU found (NVML: {nvml_error}; nvidia-smi: {'absent' if not shutil.which('nvidia-smi') else 'failed'})"}


def cuda_info() -> dict[str, Any]:
    info: dict[str, Any] = {"cuda_python": None, "driver_version": None, "device_count": 0, "devices": []}
    try:
        import cuda.bindings
        import cuda.bindings.runtime as rt

        info["cuda_python"] = getattr(cuda.bindings, "__version__", "?")
        err, v = rt.cudaDriverGetVersion()
        if int(err) == 0 and v:
            info["driver_version"] = f"{v // 1000}.{(v % 1000) // 10}"
        from medstream.runtime.gpu.cuda import device_count, device_info

        info["device_count"] = device_count()
        for i in range(info["device_count"]):
            info["devices"].append(device_info(i))
    except ImportError:
        info["note"] = "cuda-python not installed (pip install 'medstream[gpu]')"
    except Exception as exc:
        info["note"] = f"CUDA query failed: {exc}"
    return info


def tensorrt_info(cuda_devices: int) -> dict[str, Any]:
    info: dict[str, Any] = {"full": None, "lean": None, "dla_cores": None}
    trt = None
    try:
        import tensorrt

        info["full"] = tensorrt.__version__
        trt = tensorrt
    except ImportError:
        pass
    try:
        import tensorrt_lean

        info["lean"] = tensorrt_lean.__version__
        trt = trt or tensorrt_lean
    except ImportError:
        pass
    info["status"] = ("full (build + run)" if info["full"] else "lean (run version-compatible engines only)"
                      if info["lean"] else "absent")
    if trt is not None and cuda_devices > 0:  # a TensorRT runtime needs a CUDA device to exist
        try:
            runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
            info["dla_cores"] = int(runtime.num_DLA_cores)
        except Exception as exc:
            info["dla_note"] = f"could not query DLA cores: {exc}"
    return info


def onnxruntime_info() -> dict[str, Any]:
    try:
        import onnxruntime as ort
    except ImportError:
        return {"version": None, "providers": [], "note": "onnxruntime not installed"}
    from medstream.runtime.backends.ort_cuda import cuda_ep_available, tensorrt_libs_present

    ok, why = cuda_ep_available()
    return {"version": ort.__version__, "providers": list(ort.get_available_providers()), "device": ort.get_device(),
            "cuda_path": ok, "cuda_path_reason": why, "tensorrt_libs": tensorrt_libs_present()}


def jetson_info(root: str | Path = "/") -> dict[str, Any] | None:
    """Jetson model, L4T release and power mode; ``None`` when this is not a Jetson."""
    root = Path(root)
    release_file = root / "etc" / "nv_tegra_release"
    model_file = root / "proc" / "device-tree" / "model"
    release = model = None
    with contextlib.suppress(OSError, IndexError):
        release = release_file.read_text(errors="replace").splitlines()[0].strip()
    with contextlib.suppress(OSError):
        model = model_file.read_bytes().rstrip(b"\x00").decode(errors="replace").strip()
    if release is None and (model is None or "jetson" not in model.lower()):
        return None
    power = _run(["nvpmodel", "-q"])
    mode = None
    if power:
        for line in power.splitlines():
            if "power mode" in line.lower():
                mode = line.split(":", 1)[-1].strip()
    return {"model": model, "l4t_release": release, "power_mode": mode,
            "power_mode_raw": power, "note": None if power else "nvpmodel not found or not permitted"}


def auto_backend() -> dict[str, str]:
    from medstream.runtime.backends import choose_backend
    from medstream.runtime.backends.ort_cuda import cuda_ep_available

    name, why = choose_backend("auto")
    if name == "onnxruntime":
        ok, ort_why = cuda_ep_available()
        path = "GPU (CUDA execution provider, IO binding, CUDA graphs)" if ok else "CPU"
        return {"backend": name, "runs_on": path, "reason": f"{why}; onnxruntime: {ort_why}"}
    return {"backend": name, "runs_on": "GPU", "reason": why}


def machine_report(root: str | Path = "/") -> dict[str, Any]:
    from medstream.runtime.version import __version__

    cuda = cuda_info()
    return {
        "medstream": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_info(root),
        "gpu": gpu_info(),
        "cuda": cuda,
        "tensorrt": tensorrt_info(cuda["device_count"]),
        "onnxruntime": onnxruntime_info(),
        "cupy": _version_of("cupy"),
        "jetson": jetson_info(root),
        "auto": auto_backend(),
    }


def _version_of(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:
        return None


def format_report(r: dict[str, Any]) -> str:
    """The report as aligned text for a terminal."""
    lines = [f"medstream {r['medstream']}  python {r['python']}  {r['platform']}"]
    cpu = r["cpu"]
    lines.append(f"CPU         {cpu['model']} ({cpu['architecture']}), {cpu['usable_cores']}/{cpu['cores']} cores usable")
    gpu = r["gpu"]
    if gpu["gpus"]:
        for g in gpu["gpus"]:
            lines.append(f"GPU {g['index']}       {g['name']}, {g['memory_mib']} MiB, driver {gpu['driver']} "
                         f"(via {gpu['source']})")
    else:
        lines.append(f"GPU         none ({gpu.get('note', '')})")
    cuda = r["cuda"]
    lines.append(f"CUDA        cuda-python {cuda['cuda_python'] or 'not installed'}, driver API "
                 f"{cuda['driver_version'] or 'unavailable'}, {cuda['device_count']} device(s)"
                 + (f"  [{cuda['note']}]" if cuda.get("note") else ""))
    for d in cuda["devices"]:
        lines.append(f"            device {d['index']}: {d['name']} sm_{d['compute_capability'].replace('.', '')}"
                     f"{' (integrated)' if d['integrated'] else ''}")
    t = r["tensorrt"]
    versions = ", ".join(f"{k} {v}" for k, v in (("tensorrt", t["full"]), ("tensorrt_lean", t["lean"])) if v)
    lines.append(f"TensorRT    {t['status']}" + (f": {versions}" if versions else "")
                 + (f", DLA cores {t['dla_cores']}" if t.get("dla_cores") is not None else ""))
    o = r["onnxruntime"]
    lines.append(f"ONNX RT     {o.get('version') or 'not installed'}, providers: {', '.join(o.get('providers', []))}")
    lines.append(f"CuPy        {r['cupy'] or 'not installed (GPU pre/postprocessing off)'}")
    j = r["jetson"]
    if j:
        lines.append(f"Jetson      {j['model']}, {j['l4t_release']}, power mode {j['power_mode'] or 'unknown'}")
    a = r["auto"]
    lines.append(f"auto ->     {a['backend']} on {a['runs_on']}: {a['reason']}")
    return "\n".join(lines)
