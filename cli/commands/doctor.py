"""Report what this machine can run: CPU, GPU and driver, CUDA, TensorRT (full, lean or absent),
ONNX Runtime and its providers, CuPy, DLA cores, the Jetson model and power mode, and which backend
``--backend auto`` picks here and why.

The facts come from :func:`medstream.runtime.machine.machine_facts` (the one place they are
gathered); the backend judgments (``auto``'s choice, whether ONNX Runtime's CUDA path can start)
come from the backends package. This command composes the two: the runtime's ``gpu`` package stays
below the backends and imports none of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HELP = "show GPU/driver/CUDA/TensorRT/ONNX Runtime/OpenVINO facts and which backend 'auto' picks"


def add_arguments(p) -> None:
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def jetson_info(root: str | Path = "/") -> dict[str, Any] | None:
    """Jetson model, L4T release and power mode as a dict; ``None`` when this is not a Jetson."""
    from dataclasses import asdict

    from medstream.runtime.machine import jetson_facts

    facts = jetson_facts(root)
    return asdict(facts) if facts is not None else None


def auto_backend() -> dict[str, str]:
    """The backend ``--backend auto`` picks here, where it runs and why (the runtime's own choice)."""
    from medstream.runtime.backends import choose_backend
    from medstream.runtime.backends.ort_cuda import cuda_ep_available

    name, why = choose_backend("auto")
    if name == "onnxruntime":
        ok, ort_why = cuda_ep_available()
        path = "GPU (CUDA execution provider, IO binding, CUDA graphs)" if ok else "CPU"
        return {"backend": name, "runs_on": path, "reason": f"{why}; onnxruntime: {ort_why}"}
    if name == "openvino":
        return {"backend": name, "runs_on": "CPU (OpenVINO)", "reason": why}
    return {"backend": name, "runs_on": "GPU", "reason": why}


def machine_report(root: str | Path = "/") -> dict[str, Any]:
    """The machine's facts as a dict, plus the backend judgments ``doctor`` prints."""
    from medstream.runtime.backends.ort_cuda import cuda_ep_available
    from medstream.runtime.machine import machine_facts

    report = machine_facts(root).to_dict()
    ok, why = cuda_ep_available()
    report["onnxruntime"].update({"cuda_path": ok, "cuda_path_reason": why,
                                  "tensorrt_libs": report["tensorrt"]["libs_present"]})
    report["auto"] = auto_backend()
    from medstream.runtime.backends.openvino_backend import openvino_facts

    report["openvino"] = openvino_facts()
    return report


def format_report(r: dict[str, Any]) -> str:
    """The report as aligned text for a terminal."""
    lines = [f"medstream {r['medstream']}  python {r['python']}  {r['platform']}"]
    cpu = r["cpu"]
    flags = f"; {' '.join(cpu['flags'])}" if cpu.get("flags") else ""
    lines.append(f"CPU         {cpu['model']} ({cpu['architecture']}), {cpu['usable_cores']}/{cpu['cores']} cores "
                 f"usable{flags}")
    gpu = r["gpu"]
    if gpu["gpus"]:
        for g in gpu["gpus"]:
            lines.append(f"GPU {g['index']}       {g['name']}, {g['memory_mib']} MiB, driver {gpu['driver']} "
                         f"(via {gpu['source']})")
    else:
        lines.append(f"GPU         none ({gpu.get('note') or ''})")
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
    ov = r.get("openvino") or {}
    if ov.get("version"):
        lines.append(f"OpenVINO    {ov['version'].split('-')[0]}, devices: {', '.join(ov['devices'])}; {ov['accelerators']}")
    else:
        lines.append(f"OpenVINO    {ov.get('note') or 'not installed'}")
    lines.append(f"CuPy        {r['cupy'] or 'not installed (GPU pre/postprocessing off)'}")
    j = r["jetson"]
    if j:
        lines.append(f"Jetson      {j['model']}, {j['l4t_release']}, power mode {j['power_mode'] or 'unknown'}")
    a = r["auto"]
    lines.append(f"auto ->     {a['backend']} on {a['runs_on']}: {a['reason']}")
    return "\n".join(lines)


def main(args) -> int:
    report = machine_report()
    print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
    return 0
