"""Compare two benchmark reports: ratios B / A per scenario (``medstream bench --compare A.json B.json``).

A ratio below 1 means B is faster (latency) or, for throughput, lower. Useful before/after a change,
across machines, or ONNX Runtime vs TensorRT.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medstream.runtime.errors import ConfigError

FIELDS = ("p50", "p90", "p99", "p99.9", "max", "tail", "flatness")


def load(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"benchmark report {p} does not exist", "give the report.json written by medstream bench")
    try:
        data = json.loads(p.read_text())
    except ValueError as exc:
        raise ConfigError(f"benchmark report {p} is not valid JSON: {exc}", "give the report.json written by medstream bench") from None
    if not isinstance(data, dict) or "scenarios" not in data:
        raise ConfigError(f"{p} is not a medstream bench report (no 'scenarios')", "give the report.json written by medstream bench")
    return data


def ratios(a: dict[str, Any], b: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """``{scenario: {field: b/a}}`` for every scenario present in both."""
    out: dict[str, dict[str, float | None]] = {}
    for name, ra in a["scenarios"].items():
        rb = b["scenarios"].get(name)
        if rb is None:
            continue
        la, lb = ra.get("latency_ms") or {}, rb.get("latency_ms") or {}
        row: dict[str, float | None] = {}
        for f in FIELDS:
            va, vb = la.get(f), lb.get(f)
            row[f] = (vb / va) if va and vb is not None else None
        ta, tb = ra.get("throughput_fps"), rb.get("throughput_fps")
        row["throughput"] = (tb / ta) if ta and tb is not None else None
        out[name] = row
    return out


def format_ratios(a_path: str | Path, b_path: str | Path) -> str:
    """A plain-text table of B/A ratios (what the CLI prints)."""
    a, b = load(a_path), load(b_path)
    table = ratios(a, b)
    cols = (*FIELDS, "throughput")
    lines = [f"ratios B/A  (A = {a_path}, B = {b_path}); < 1: B has lower latency",
             f"{'scenario':<16}" + "".join(f"{c:>11}" for c in cols)]
    for name, row in table.items():
        lines.append(f"{name:<16}" + "".join(f"{row[c]:>10.2f}x" if row[c] is not None else f"{'-':>11}" for c in cols))
    if not table:
        lines.append("(no scenario in common)")
    return "\n".join(lines)
