"""Device telemetry: psutil for real; Jetson sysfs and NVML through stand-ins (this machine has
neither a Jetson nor an NVIDIA GPU, so those two tests fake the hardware and say so)."""

from __future__ import annotations

import sys
import time
import types
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from medstream.runtime.config import load_config
from medstream.runtime.service import make_observers
from medstream.runtime.service.metrics import MetricsObserver
from medstream.runtime.service.telemetry import (
    JetsonSysfsReader,
    NvmlReader,
    PsutilReader,
    TelemetryObserver,
    TelemetrySampler,
    ThermalZoneReader,
)
from medstream.runtime.stream import build_stream
from medstream.runtime.wire import decode_status, encode_status


def test_psutil_sampler_runs_in_the_background():
    sampler = TelemetrySampler([PsutilReader()], interval_s=0.05).start()
    try:
        first = sampler.latest()
        assert first["sources"] == ["psutil"]
        assert first["memory"]["total_bytes"] > 0 and first["cpu"]["count"] >= 1 and first["process"]["rss_bytes"] > 0
        time.sleep(0.3)
        assert sampler.latest()["t_sample_ns"] > first["t_sample_ns"]  # refreshed by the thread
    finally:
        sampler.close()


def test_a_failing_reader_is_left_out_not_fatal():
    class Broken:
        name = "broken"

        def read(self):
            raise OSError("device gone")

    sample = TelemetrySampler([Broken(), PsutilReader()]).sample()
    assert sample["sources"] == ["psutil"]


def _fake_jetson_sysfs(root):
    """A JetPack 6 (Orin) style sysfs tree. Fake: no Jetson here."""
    def put(rel, text):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + "\n")

    put("devices/platform/17000000.ga10b/load", "345")
    put("class/devfreq/17000000.ga10b/cur_freq", "918000000")
    hw = "bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
    put(f"{hw}/in1_label", "VDD_IN")
    put(f"{hw}/in1_input", "5000")
    put(f"{hw}/curr1_input", "1200")
    put(f"{hw}/in2_label", "VDD_CPU_GPU_CV")
    put(f"{hw}/in2_input", "5000")
    put(f"{hw}/curr2_input", "400")
    put("class/thermal/thermal_zone0/type", "gpu-thermal")
    put("class/thermal/thermal_zone0/temp", "45500")
    put("class/thermal/thermal_zone1/type", "cpu-thermal")
    put("class/thermal/thermal_zone1/temp", "47000")


def test_jetson_sysfs_reader_and_metrics(tmp_path):
    _fake_jetson_sysfs(tmp_path)
    sampler = TelemetrySampler([JetsonSysfsReader(str(tmp_path)), ThermalZoneReader(str(tmp_path))])
    sample = sampler.sample()
    gpu = sample["gpus"][0]
    assert gpu["util_pct"] == 34.5 and gpu["clocks_mhz"] == {"graphics": 918.0} and gpu["power_w"] == 6.0
    assert sample["power_rails_w"] == {"VDD_IN": 6.0, "VDD_CPU_GPU_CV": 2.0}
    assert sample["thermal_c"] == {"gpu-thermal": 45.5, "cpu-thermal": 47.0}
    metrics = MetricsObserver(0, telemetry=sampler)
    try:
        text = urllib.request.urlopen(metrics.url, timeout=5).read().decode()
    finally:
        metrics.close()
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in text_string_to_metric_families(text) for s in f.samples}
    lab = (("gpu", "0"), ("name", "jetson-igpu"))
    assert values[("medstream_gpu_utilization_ratio", lab)] == pytest.approx(0.345)
    assert values[("medstream_gpu_power_watts", lab)] == 6.0
    assert values[("medstream_gpu_clock_hertz", (("clock", "graphics"), *lab))] == 918e6
    assert values[("medstream_thermal_zone_celsius", (("zone", "gpu-thermal"),))] == 45.5
    assert values[("medstream_power_rail_watts", (("rail", "VDD_IN"),))] == 6.0


def test_nvml_reader(monkeypatch):
    """A stand-in ``pynvml`` module (fake: no NVIDIA GPU or driver here) with NVML's call shapes."""
    nv = types.SimpleNamespace(
        NVML_TEMPERATURE_GPU=0, NVML_CLOCK_GRAPHICS=0, NVML_CLOCK_SM=1, NVML_CLOCK_MEM=2,
        nvmlInit=lambda: None, nvmlShutdown=lambda: None, nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: f"h{i}",
        nvmlDeviceGetName=lambda h: b"NVIDIA RTX A2000",
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=42, memory=10),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=2 << 30, total=12 << 30, free=10 << 30),
        nvmlDeviceGetTemperature=lambda h, k: 61,
        nvmlDeviceGetPowerUsage=lambda h: 35_500,
        nvmlDeviceGetClockInfo=lambda h, k: {0: 1800, 1: 1800, 2: 7000}[k],
    )

    def not_supported(h):
        raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")

    nv.nvmlDeviceGetPowerUsage = not_supported  # many boards cannot report power: leave it out
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    g = NvmlReader().read()["gpus"][0]
    assert g == {"index": 0, "name": "NVIDIA RTX A2000", "util_pct": 42.0, "mem_used_bytes": 2 << 30,
                 "mem_total_bytes": 12 << 30, "temp_c": 61.0,
                 "clocks_mhz": {"graphics": 1800.0, "sm": 1800.0, "mem": 7000.0}}


def test_status_message_carries_device_telemetry(tiny_model, endpoint):
    cfg = load_config(None, {"source": "synthetic://ultrasound?fps=30", "model": str(tiny_model), "publish": endpoint,
                             "backend": "onnxruntime", "threads": 1})
    obs = TelemetryObserver(TelemetrySampler([PsutilReader()], interval_s=0.1))
    pipe = build_stream(cfg, observers=[obs], telemetry=obs.telemetry)
    plain = build_stream(cfg.model_copy(update={"publish": cfg.publish.model_copy(update={"endpoints": ["tcp://127.0.0.1:0"]})}))
    try:
        status = decode_status(encode_status({**pipe.status(), "seq": 0}))  # over the wire format
        assert status["device_telemetry"]["memory"]["total_bytes"] > 0
        assert "device_telemetry" not in plain.status()  # no service layer: status unchanged
    finally:
        obs.sampler.close()
        pipe.publisher.close()
        plain.publisher.close()


def test_make_observers():
    from medstream.runtime.config import RunConfig
    from medstream.runtime.service.notify import NotifyObserver

    obs = make_observers(RunConfig().service)
    try:
        assert [type(o) for o in obs] == [NotifyObserver, TelemetryObserver]
    finally:
        obs[1].sampler.close()
    obs = make_observers(RunConfig().service.model_copy(update={"metrics_port": 0}))
    try:
        assert isinstance(obs[2], MetricsObserver) and obs[2].host == "127.0.0.1"  # loopback by default
    finally:
        obs[1].sampler.close()
        obs[2].close()
