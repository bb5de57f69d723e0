"""Pool the rounds of one scenario into one result.

Why rounds: on a shared or virtual machine the model's own speed drifts by tens of percent within a
minute (``python -m medstream.benchmarks.floor_drift`` on the 2-core development VM, machine otherwise
idle: two-second medians of the same inference between 20.1 and 32.1 ms within one minute;
benchmarks/results/floor_drift.json). A floor measured in one minute and a glass figure measured in
the next then compare the host's moods, not the runtime. So ``medstream bench --rounds N`` runs the
whole scenario list N times, each round starting with its floor, and pools each scenario's rounds: a
slow spell is spread over all of them, and the per-round figures stay in the report so the spread is
visible.

Pooling adds the rounds' HdrHistograms (each scenario writes them compressed under ``histograms``),
so a pooled p99 is the p99 of all measured samples, not an average of the rounds' p99s.
"""

from __future__ import annotations

from typing import Any

from medstream.benchmarks.subscriber import (
    cdf_points,
    decode_histogram,
    encode_histogram,
    figures,
    new_histogram,
)


def _added(encoded: list[str | None]) -> Any:
    if not encoded or any(e is None for e in encoded):
        return None
    total = new_histogram()
    for text in encoded:
        total.add(decode_histogram(text))
    return total


def _sum_dicts(dicts: list[dict[str, Any] | None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for d in dicts:
        for k, v in (d or {}).items():
            out[k] = out.get(k, 0) + v
    return out


def _accounting(rounds: list[dict[str, Any]]) -> dict[str, Any] | None:
    accs = [r.get("accounting") for r in rounds]
    if any(a is None for a in accs):
        return None
    out: dict[str, Any] = {}
    for a in accs:
        for k, v in a.items():
            if isinstance(v, bool):
                out[k] = out.get(k, True) and v
            elif isinstance(v, int | float):
                out[k] = out.get(k, 0) + v
            elif v is None:
                out.setdefault(k, None)
    return out


def _resources(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per process: the mean of the rounds' means, the max of their maxima."""
    out: dict[str, Any] = {}
    for proc in {p for r in rounds for p in (r.get("resources") or {})}:
        rows = [r["resources"][proc] for r in rounds if proc in (r.get("resources") or {})]
        merged: dict[str, Any] = {}
        for key in rows[0]:
            vals = [row[key] for row in rows if row.get(key) is not None]
            if not vals:
                merged[key] = None
            elif key.endswith("_max"):
                merged[key] = max(vals)
            elif key == "samples":
                merged[key] = sum(vals)
            else:
                merged[key] = round(sum(vals) / len(vals), 1)
        out[proc] = merged
    return out


def _timeline(rounds: list[dict[str, Any]], gap_s: float = 1.0) -> list[list[float]]:
    """The rounds' timelines end to end, each shifted to start ``gap_s`` after the previous one ended."""
    out: list[list[float]] = []
    offset = 0.0
    for r in rounds:
        tl = r.get("timeline") or []
        out += [[round(t + offset, 4), *rest] for t, *rest in tl]
        if tl:
            offset += tl[-1][0] + gap_s
    return out


def round_figures(r: dict[str, Any]) -> dict[str, Any]:
    lat = r.get("latency_ms") or {}
    return {"count": lat.get("count", 0), "p50": lat.get("p50"), "p99": lat.get("p99")}


def pool(name: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One result for ``rounds`` of scenario ``name`` (a single round comes back unchanged)."""
    if len(rounds) == 1:
        return rounds[0]
    hists = [r.get("histograms") or {} for r in rounds]
    age = _added([h.get("age") for h in hists])
    if age is None:
        raise ValueError(f"cannot pool the rounds of {name}: a round has no histogram")
    co = _added([h.get("age_co") for h in hists])
    stage_names = sorted({k for h in hists for k in (h.get("stages") or {})})
    stages = {k: _added([(h.get("stages") or {}).get(k) for h in hists if k in (h.get("stages") or {})])
              for k in stage_names}
    throughputs = [r["throughput_fps"] for r in rounds if r.get("throughput_fps") is not None]
    out = dict(rounds[-1])
    out.update(
        scenario=name,
        latency_ms=figures(age),
        latency_ms_co=figures(co) if co is not None else None,
        stages_ms={k: figures(h) for k, h in stages.items() if h is not None},
        throughput_fps=sum(throughputs) / len(throughputs) if throughputs else None,
        drops=_sum_dicts([r.get("drops") for r in rounds]),
        accounting=_accounting(rounds),
        resources=_resources(rounds),
        timeline=_timeline(rounds),
        cdf=cdf_points(age),
        histograms={"age": encode_histogram(age), "age_co": encode_histogram(co) if co is not None else None,
                    "stages": {k: encode_histogram(h) for k, h in stages.items() if h is not None}},
        rounds=[{"round": i, **round_figures(r)} for i, r in enumerate(rounds, 1)],
        notes=[f"pooled over {len(rounds)} rounds (figures from all rounds' samples; per-round figures under 'rounds')"]
        + [f"round {i}: {n}" for i, r in enumerate(rounds, 1) for n in r.get("notes", [])],
    )
    if rounds[0].get("streams"):
        # Each stream pooled over the rounds; the headline pools every round's worst stream.
        out["streams"] = [pool(name, [r["streams"][i] for r in rounds]) for i in range(len(rounds[0]["streams"]))]
        for lane in out["streams"]:
            lane.pop("timeline", None)
            lane.pop("cdf", None)
    if "runs" in rounds[0]:
        out["runs"] = sum(r.get("runs", 0) for r in rounds)
        out["warmup_runs"] = sum(r.get("warmup_runs", 0) for r in rounds)
    return out


__all__ = ["pool", "round_figures"]
