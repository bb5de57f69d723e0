"""Device telemetry: GPU utilisation, memory, temperature, power and clocks; CPU and memory.

Sampled on a background thread every ``interval_s`` (default 1.5 s), never per frame: an NVML call
costs tens of microseconds to milliseconds, jtop talks to a socket, and none of that belongs on the
frame path. Readers (status message, Prometheus) get the latest sample, a plain dict.

Where the numbers come from, first that works:

* **NVML** (discrete NVIDIA GPUs; ``nvidia-ml-py``, extra ``[gpu]``, imported lazily).
* **jetson-stats** (``jtop``, extra ``[jetson]``; needs the ``jtop`` service running). Note its
  licence: **AGPL-3.0**; it is optional so the default install carries no AGPL code.
* **sysfs** on Jetson (best effort, no dependency): GPU load from ``/sys/devices/gpu.0/load`` and its
  JetPack 6 equivalents, GPU clock from devfreq, rail power from the INA3221 monitors, thermal zones.
* Always: CPU and memory through ``psutil``, and ``/sys/class/thermal`` zones where present.

Every reader is best effort: a missing file or a failing call leaves that value out, it never stops
sampling (a telemetry hiccup must never affect the stream).

Static facts (is this a Jetson, how many cores) come from :mod:`medstream.runtime.machine`, the one
place machine facts are gathered; this module samples only what changes.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from medstream.runtime.machine import cpu_facts, is_jetson
from medstream.runtime.observers import PipelineObserver

log = logging.getLogger("medstream.service.telemetry")

# GPU load files on Jetson (per-mille, 0..1000): JetPack 4/5 first, then JetPack 6 (Orin, OOT nvgpu).
_JETSON_GPU_LOAD = ("devices/gpu.0/load", "devices/platform/gpu.0/load", "devices/platform/17000000.ga10b/load",
                    "devices/platform/17000000.gv11b/load", "devices/platform/bus@0/17000000.gpu/load",
                    "devices/platform/17000000.gpu/load")
_JETSON_GPU_DEVFREQ = ("class/devfreq/17000000.ga10b", "class/devfreq/17000000.gv11b", "class/devfreq/57000000.gpu",
                       "class/devfreq/17000000.gpu", "devices/gpu.0/devfreq/gpu.0")


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _read_num(path: str | Path) -> float | None:
    text = _read(path)
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


# ----------------------------------------------------------------------------------------- readers
class PsutilReader:
    """CPU and memory of the host and of this process (always available)."""

    name = "psutil"

    def __init__(self) -> None:
        import psutil

        self._psutil = psutil
        self._proc = psutil.Process()
        self._cores = cpu_facts().cores
        psutil.cpu_percent(None)  # the first call primes the counters and returns 0
        self._proc.cpu_percent(None)

    def read(self) -> dict[str, Any]:
        ps = self._psutil
        vm = ps.virtual_memory()
        out: dict[str, Any] = {
            "cpu": {"util_pct": ps.cpu_percent(None), "count": self._cores},
            "memory": {"used_bytes": int(vm.total - vm.available), "total_bytes": int(vm.total)},
        }
        with contextlib.suppress(ps.Error):
            out["process"] = {"rss_bytes": int(self._proc.memory_info().rss), "cpu_pct": self._proc.cpu_percent(None)}
        return out


class ThermalZoneReader:
    """``/sys/class/thermal/thermal_zone*``: ``{type: celsius}`` (Jetson: CPU-therm, GPU-therm, tj...)."""

    name = "thermal"

    def __init__(self, sysfs: str = "/sys") -> None:
        self.zones = sorted(glob.glob(os.path.join(sysfs, "class/thermal/thermal_zone*")))

    def read(self) -> dict[str, Any]:
        temps: dict[str, float] = {}
        for zone in self.zones:
            kind, milli = _read(os.path.join(zone, "type")), _read_num(os.path.join(zone, "temp"))
            if kind and milli is not None and milli > -273000:
                temps[kind] = round(milli / 1000.0, 1)
        return {"thermal_c": temps} if temps else {}


class NvmlReader:
    """Discrete NVIDIA GPUs through NVML (``pynvml`` from ``nvidia-ml-py``)."""

    name = "nvml"

    def __init__(self) -> None:
        import pynvml  # optional extra [gpu]; ImportError means "not this reader"

        pynvml.nvmlInit()
        self._nv = pynvml
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        if not self._handles:
            raise RuntimeError("NVML sees no GPU")

    def _try(self, fn, *args):
        try:
            return fn(*args)
        except Exception:  # NVML_ERROR_NOT_SUPPORTED and friends: leave the value out
            return None

    def read(self) -> dict[str, Any]:
        nv = self._nv
        gpus = []
        for i, h in enumerate(self._handles):
            g: dict[str, Any] = {"index": i}
            name = self._try(nv.nvmlDeviceGetName, h)
            if name is not None:
                g["name"] = name.decode() if isinstance(name, bytes) else str(name)
            util = self._try(nv.nvmlDeviceGetUtilizationRates, h)
            if util is not None:
                g["util_pct"] = float(util.gpu)
            mem = self._try(nv.nvmlDeviceGetMemoryInfo, h)
            if mem is not None:
                g["mem_used_bytes"], g["mem_total_bytes"] = int(mem.used), int(mem.total)
            temp = self._try(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
            if temp is not None:
                g["temp_c"] = float(temp)
            power = self._try(nv.nvmlDeviceGetPowerUsage, h)  # milliwatts
            if power is not None:
                g["power_w"] = power / 1000.0
            clocks = {}
            for label, kind in (("graphics", nv.NVML_CLOCK_GRAPHICS), ("sm", nv.NVML_CLOCK_SM), ("mem", nv.NVML_CLOCK_MEM)):
                mhz = self._try(nv.nvmlDeviceGetClockInfo, h, kind)
                if mhz is not None:
                    clocks[label] = float(mhz)
            if clocks:
                g["clocks_mhz"] = clocks
            gpus.append(g)
        return {"gpus": gpus}

    def close(self) -> None:
        self._try(self._nv.nvmlShutdown)


class JtopReader:
    """Jetson through jetson-stats (``jtop``; AGPL-3.0, optional extra ``[jetson]``)."""

    name = "jtop"

    def __init__(self) -> None:
        from jtop import jtop  # optional; needs the jtop.service daemon

        self._jetson = jtop(interval=1.0)
        self._jetson.start()
        if not self._jetson.ok():
            raise RuntimeError("jtop service not answering")

    def read(self) -> dict[str, Any]:
        stats = dict(self._jetson.stats)
        g: dict[str, Any] = {"index": 0, "name": "jetson-igpu"}
        if "GPU" in stats:
            g["util_pct"] = float(stats["GPU"])
        temps = {k[5:]: float(v) for k, v in stats.items() if k.startswith("Temp ") and isinstance(v, int | float)}
        if "gpu" in temps:
            g["temp_c"] = temps["gpu"]
        if isinstance(stats.get("Power TOT"), int | float):
            g["power_w"] = stats["Power TOT"] / 1000.0
        out: dict[str, Any] = {"gpus": [g]}
        if temps:
            out["thermal_c"] = temps
        return out

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._jetson.close()


class JetsonSysfsReader:
    """Jetson through sysfs (no dependency; paths differ between JetPack releases, so best effort)."""

    name = "sysfs"

    def __init__(self, sysfs: str = "/sys") -> None:
        self.load = next((os.path.join(sysfs, p) for p in _JETSON_GPU_LOAD if os.path.exists(os.path.join(sysfs, p))), None)
        self.devfreq = next((os.path.join(sysfs, p) for p in _JETSON_GPU_DEVFREQ
                             if os.path.exists(os.path.join(sysfs, p, "cur_freq"))), None)
        # INA3221 power monitors: JetPack 5/6 hwmon (in*_label, in*_input mV, curr*_input mA),
        # JetPack 4 iio (rail_name_N, in_power N_input mW).
        self.hwmon = sorted(glob.glob(os.path.join(sysfs, "bus/i2c/drivers/ina3221*/*/hwmon/hwmon*")))
        self.iio = sorted(glob.glob(os.path.join(sysfs, "bus/i2c/drivers/ina3221x/*/iio:device*")))
        if self.load is None and not self.hwmon and not self.iio:
            raise RuntimeError("no Jetson GPU load or power files under " + sysfs)

    def _rails(self) -> dict[str, float]:
        rails: dict[str, float] = {}
        for hw in self.hwmon:
            for label_file in glob.glob(os.path.join(hw, "in*_label")):
                n = os.path.basename(label_file)[2:-6]
                label = _read(label_file)
                mv, ma = _read_num(os.path.join(hw, f"in{n}_input")), _read_num(os.path.join(hw, f"curr{n}_input"))
                if label and mv is not None and ma is not None:
                    rails[label] = round(mv * ma / 1e6, 3)
        for dev in self.iio:
            for name_file in glob.glob(os.path.join(dev, "rail_name_*")):
                n = name_file.rsplit("_", 1)[1]
                label, mw = _read(name_file), _read_num(os.path.join(dev, f"in_power{n}_input"))
                if label and mw is not None:
                    rails[label] = round(mw / 1000.0, 3)
        return rails

    def read(self) -> dict[str, Any]:
        g: dict[str, Any] = {"index": 0, "name": "jetson-igpu"}
        if self.load is not None:
            permille = _read_num(self.load)
            if permille is not None:
                g["util_pct"] = permille / 10.0
        if self.devfreq is not None:
            hz = _read_num(os.path.join(self.devfreq, "cur_freq"))
            if hz is not None:
                g["clocks_mhz"] = {"graphics": hz / 1e6}
        rails = self._rails()
        out: dict[str, Any] = {"gpus": [g]}
        if rails:
            out["power_rails_w"] = rails
            # VDD_IN (Orin) / POM_5V_IN (Xavier, Nano) is the whole module's input power.
            total = next((rails[k] for k in ("VDD_IN", "POM_5V_IN") if k in rails), None)
            if total is not None:
                g["power_w"] = total
        return out


def _jetson_readers_apply(sysfs: str = "/sys") -> bool:
    """A Jetson (machine facts), or a Jetson GPU load file under ``sysfs`` (a container that hides /etc)."""
    return is_jetson() or any(os.path.exists(os.path.join(sysfs, p)) for p in _JETSON_GPU_LOAD)


def default_readers(sysfs: str = "/sys") -> list[Any]:
    """The GPU reader that works here (NVML, then jtop/sysfs on a Jetson), plus psutil and thermal zones."""
    readers: list[Any] = []
    candidates = [NvmlReader]
    if _jetson_readers_apply(sysfs):
        candidates = [JtopReader, lambda: JetsonSysfsReader(sysfs)]
    for make in candidates:
        try:
            readers.append(make())
            break
        except Exception as exc:  # ImportError (extra not installed), no driver, no jtop service...
            log.debug("telemetry source %s unavailable: %r", getattr(make, "name", make), exc)
    try:
        readers.append(PsutilReader())
    except Exception as exc:
        log.debug("psutil unavailable: %r", exc)
    readers.append(ThermalZoneReader(sysfs))
    return readers


# ----------------------------------------------------------------------------------------- sampler
class TelemetrySampler:
    """Samples ``readers`` on a daemon thread; :meth:`latest` returns the newest sample (a copy).

    A sample: ``{"t_sample_ns", "sources": [...], "cpu", "memory", "process", "gpus": [...],
    "thermal_c", "power_rails_w"}`` (keys present only when a reader provides them).
    """

    def __init__(self, readers: list[Any] | None = None, interval_s: float = 1.5) -> None:
        self.readers = default_readers() if readers is None else readers
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._latest: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> dict[str, Any]:
        """Read every reader once (what the thread does each interval)."""
        out: dict[str, Any] = {"t_sample_ns": time.time_ns(), "sources": []}
        for r in self.readers:
            try:
                part = r.read()
            except Exception as exc:
                log.debug("telemetry reader %s failed: %r", r.name, exc)
                continue
            if part:
                out["sources"].append(r.name)
                for k, v in part.items():
                    if isinstance(v, dict) and isinstance(out.get(k), dict):
                        out[k] = {**out[k], **v}
                    else:
                        out.setdefault(k, v)
        with self._lock:
            self._latest = out
        return out

    def latest(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._latest)

    def start(self) -> TelemetrySampler:
        if self._thread is None:
            self.sample()
            self._thread = threading.Thread(target=self._loop, name="medstream-telemetry", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for r in self.readers:
            close = getattr(r, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()


class TelemetryObserver(PipelineObserver):
    """Owns the sampler for a pipeline's life; :meth:`telemetry` is what the status message carries."""

    def __init__(self, sampler: TelemetrySampler | None = None) -> None:
        self.sampler = (sampler or TelemetrySampler()).start()

    def telemetry(self) -> dict[str, Any]:
        return self.sampler.latest()

    def on_stop(self, summary: dict[str, Any]) -> None:
        self.sampler.close()
