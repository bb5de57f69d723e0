"""List the third-party software (SOUP, IEC 62304) medstream depends on, from the installed environment.

For each package: name, version, licence (``License-Expression``, else ``License``, else the licence
classifiers), why medstream uses it (a short hand-kept note for direct dependencies; the others are
``transitive (via X)``) and a flag for licences that need a decision: copyleft (GPL, LGPL, AGPL),
proprietary, or unknown. Optional extras are listed with their extra; ``jetson-stats`` (AGPL-3.0) is
always listed and flagged, installed or not. Development tools (the ``dev`` extra) are not shipped and
not listed. ``medstream soup --out docs/SOUP.md`` regenerates the committed list.
"""

from __future__ import annotations

import json
import re
from collections import deque
from importlib import metadata
from typing import Any

HELP = "list third-party software with versions and licences (SOUP, IEC 62304)"

#: Why each direct dependency is there (keep in step with pyproject.toml).
PURPOSE: dict[str, str] = {
    "numpy": "arrays for frames, masks and tensors",
    "pyzmq": "ZeroMQ transport (frames in, overlays and status out), CURVE encryption",
    "onnx": "reading/writing model files and their embedded contract",
    "onnxruntime": "CPU inference engine",
    "openvino": "CPU inference engine on Intel x86-64: bf16 and INT8 (openvino extra; auto picks it when installed)",
    "opencv-python-headless": "image resize/colour conversion, contours, video and capture-card input",
    "pydantic": "validated run configuration",
    "pyyaml": "YAML config files",
    "hdrhistogram": "latency percentiles",
    "prometheus-client": "metrics endpoint",
    "psutil": "process telemetry (RSS, fds, threads), soak test",
    "tqdm": "progress bars in training/calibration tools",
    "torch": "training the reference models (train extra, not needed to run)",
    "onnxslim": "graph simplification before quantization (calibrate extra)",
    "cuda-python": "CUDA memory, streams and events for GPU backends",
    "nvidia-ml-py": "GPU telemetry (NVML)",
    "onnxruntime-gpu": "ONNX Runtime with CUDA",
    "tensorrt": "TensorRT builder and runtime",
    "tensorrt-lean-cu13": "TensorRT lean runtime (prebuilt engines only)",
    "jetson-stats": "Jetson telemetry (jtop); AGPL-3.0, kept optional",
    "matplotlib": "benchmark figures (bench extra)",
    "hypothesis": "wire-format fuzzing (fuzz extra)",
    "starlette": "web view: HTTP routes and WebSockets (web extra)",
    "uvicorn": "web view: the ASGI server, TLS (web extra)",
    "websockets": "web view: WebSocket protocol for uvicorn (web extra)",
    "pyigtl": "OpenIGTLink messages for igtl:// in and out, PLUS and 3D Slicer (igtl extra)",
    "pycocotools": "COCO detection AP (AP@0.5, AP@0.5:0.95) in evaluate and the INT8 gate (eval extra)",
    "tritonclient": "client of a remote Triton Inference Server: --backend triton, medstream triton-repo (triton extra)",
    "selenium": "browser test of the web view (dev extra, not shipped)",
}
#: Licences declared upstream, used when a package is not installed here.
KNOWN_LICENCES = {"jetson-stats": "AGPL-3.0-only", "tensorrt": "Proprietary (NVIDIA)", "nvidia-ml-py": "BSD-3-Clause",
                  "onnxruntime-gpu": "MIT", "torch": "BSD-3-Clause"}
#: Listed (and flagged) even when pyproject stops naming them: the reason they are optional.
ALWAYS_LISTED = {"jetson-stats": "jetson"}
EXCLUDED_EXTRAS = {"dev"}

_CLASSIFIER_SPDX = {
    "MIT License": "MIT", "BSD License": "BSD", "Apache Software License": "Apache-2.0",
    "GNU General Public License v3 (GPLv3)": "GPL-3.0", "GNU Affero General Public License v3": "AGPL-3.0",
    "GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0", "Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "Python Software Foundation License": "PSF-2.0", "ISC License (ISCL)": "ISC",
}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def licence_of(meta: Any) -> str:
    """The best short licence text from package metadata ("" when none is declared)."""
    expr = meta.get("License-Expression")
    if expr:
        return expr.strip()
    text = (meta.get("License") or "").strip()
    classifiers = [c.split("::")[-1].strip() for c in (meta.get_all("Classifier") or []) if c.startswith("License ::")]
    if text and len(text) <= 80 and "\n" not in text and text.upper() not in ("UNKNOWN", "NONE"):
        return text
    if classifiers:
        return " AND ".join(_CLASSIFIER_SPDX.get(c, c) for c in classifiers)
    if text:  # a whole licence text pasted into the field: name it by its first line
        return text.splitlines()[0][:80]
    return ""


def licence_flag(licence: str) -> str:
    """Why a licence needs attention ("" if it is permissive)."""
    up = licence.upper()
    if not licence:
        return "UNKNOWN licence: check the project"
    if "AGPL" in up or "AFFERO" in up:
        return "AGPL: network copyleft, keep out of shipped builds"
    if "LGPL" in up or "LESSER GENERAL" in up:
        return "LGPL: dynamic linking only, ship source offer"
    if "GPL" in up or "GENERAL PUBLIC" in up:
        return "GPL: copyleft, must not be linked into the product"
    if "PROPRIETARY" in up or "OTHER/PROPRIETARY" in up:
        return "proprietary: check the vendor licence terms"
    return ""


def _requirements(dist_name: str, extras: set[str] | None = None) -> list[tuple[str, str | None, set[str]]]:
    """``(name, extra, extras it asks of name)`` for what ``dist_name`` requires.

    ``extra`` is None for unconditional requirements, else the extra of ``dist_name`` that brings it. Only the
    extras in ``extras`` count (every extra the package provides when None, as for medstream itself): so
    ``tritonclient[grpc,http]`` lists grpcio and geventhttpclient, and a bare ``tritonclient`` would not.
    """
    from packaging.requirements import Requirement

    dist = metadata.distribution(dist_name)
    wanted = sorted(dist.metadata.get_all("Provides-Extra") or []) if extras is None else sorted(extras)
    out: list[tuple[str, str | None, set[str]]] = []
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.append((req.name, None, set(req.extras)))
            continue
        extra = next((e for e in wanted if req.marker.evaluate({"extra": e})), None)
        if extra is not None:
            out.append((req.name, extra, set(req.extras)))
    return out


def _installed(name: str) -> metadata.Distribution | None:
    try:
        return metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None


def collect(root: str = "medstream") -> list[dict[str, Any]]:
    """Direct dependencies of ``root`` (core and extras, minus dev tools) and everything they pull in."""
    rows: dict[str, dict[str, Any]] = {}
    asked: dict[str, set[str]] = {}  # extras some requirement asks of each package, e.g. tritonclient: grpc, http
    direct = [(n, e, x) for n, e, x in _requirements(root) if e not in EXCLUDED_EXTRAS]
    queue: deque[tuple[str, str]] = deque()
    for name, extra, extras in direct:
        key = _norm(name)
        asked.setdefault(key, set()).update(extras)
        if key in rows:
            continue
        rows[key] = {"name": name, "extra": extra, "purpose": PURPOSE.get(key, PURPOSE.get(name, "")), "direct": True}
        queue.append((name, name))
    while queue:  # breadth first: "via" names the first direct dependency that pulls a package in
        name, via = queue.popleft()
        if _installed(name) is None:
            continue
        for dep, _extra, extras in _requirements(name, asked.get(_norm(name), set())):
            key = _norm(dep)
            if _installed(dep) is None:
                continue
            new_extras = extras - asked.get(key, set())
            asked.setdefault(key, set()).update(extras)
            if key in rows:
                if new_extras:  # reached before without these extras: walk it again for what they add
                    queue.append((dep, via if not rows[key]["direct"] else dep))
                continue
            parent = rows[_norm(via)]
            rows[key] = {"name": dep, "extra": parent["extra"], "purpose": f"transitive (via {via})", "direct": False}
            queue.append((dep, via))
    for name, extra in ALWAYS_LISTED.items():
        rows.setdefault(_norm(name), {"name": name, "extra": extra, "purpose": PURPOSE.get(name, ""), "direct": True})
    out = []
    for row in rows.values():
        dist = _installed(row["name"])
        licence = licence_of(dist.metadata) if dist is not None else ""
        if not licence and _norm(row["name"]) in KNOWN_LICENCES:
            licence = KNOWN_LICENCES[_norm(row["name"])] + ("" if dist is not None else " (declared upstream)")
        out.append({
            "name": dist.metadata["Name"] if dist is not None else row["name"],
            "version": dist.version if dist is not None else "not installed",
            "licence": licence or "unknown",
            "flag": licence_flag(licence),
            "scope": "core" if row["extra"] is None else f"optional [{row['extra']}]",
            "purpose": row["purpose"],
        })
    out.sort(key=lambda r: (r["scope"] != "core", r["scope"], r["purpose"].startswith("transitive"), r["name"].lower()))
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    import platform

    flagged = [r for r in rows if r["flag"]]
    lines = [
        "# SOUP: software of unknown provenance (IEC 62304 section 8.1.2)", "",
        "Generated by `medstream soup --out docs/SOUP.md` from the installed environment "
        f"(Python {platform.python_version()}, {platform.machine()}); do not edit by hand, regenerate after "
        "changing dependencies. `core` is what `pip install medstream` installs; `optional [x]` comes with an "
        "extra; development tools (the `dev` extra) are not shipped and not listed.", "",
        "Items to decide on (licence flags):", "",
        *([f"- **{r['name']}** {r['version']} ({r['licence']}): {r['flag']}" for r in flagged] or ["- none"]), "",
        "Also note: `opencv-python-headless` wheels bundle FFmpeg (LGPL-2.1) as a shared library; "
        "`onnxruntime` and `tensorrt` wheels carry their own third-party notices.", "",
        "| package | version | licence | scope | purpose | flag |", "| --- | --- | --- | --- | --- | --- |",
        *[f"| {r['name']} | {r['version']} | {r['licence']} | {r['scope']} | {r['purpose']} | {r['flag']} |" for r in rows],
        "",
    ]
    return "\n".join(lines)


def add_arguments(p) -> None:
    p.add_argument("--out", default=None, help="write the markdown list here (e.g. docs/SOUP.md) instead of stdout")
    p.add_argument("--json", action="store_true", help="print JSON instead of markdown")


def main(args) -> int:
    rows = collect()
    text = json.dumps(rows, indent=2) if args.json else markdown(rows)
    if args.out:
        from medstream.runtime.files import write_text_atomic

        write_text_atomic(args.out, text + ("\n" if args.json else ""))
        print(f"wrote {len(rows)} packages to {args.out} ({sum(1 for r in rows if r['flag'])} flagged)")
    else:
        print(text)
    return 0
