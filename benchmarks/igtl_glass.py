"""The ``igtl`` scenario: glass to glass over OpenIGTLink beside the same chain over ZeroMQ (issue 15).

Two chains per frame size (256x256 and 1024x768, 8-bit grey), each three processes on this host:

* OpenIGTLink: ``medstream simulate --publish igtl://`` (a PLUS-like server: IMAGE messages with spacing,
  matrix and the capture time) -> ``medstream run --source igtl://... --publish tcp://... --publish igtl://...``
  -> ``benchmarks/igtl_receiver.py`` (a Slicer-like client: reads each label map IMAGE and its JSON STRING);
* ZeroMQ: ``medstream simulate --publish tcp://`` -> ``medstream run --source zmq+tcp://... --publish tcp://...``
  -> ``benchmarks/subscriber.py``.

Both measure the age at arrival (arrival - capture, wall clock) of every overlay; the **added cost** of
OpenIGTLink is the difference of the two chains' p50 (and p99) at the same size and rate. Frames go at a
fixed rate (``--rate``, default 15 fps: under the model's capacity on one thread, so nothing queues and
the difference is the transport, not the model).

``python -m medstream.benchmarks.igtl_glass --codec`` prints only the in-process costs per message (pack
and CRC at the sender, CRC check and decode in medstream, label map and pack in the sink, decode at the
receiver), the numbers behind "pyigtl is fast enough".
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from medstream.benchmarks import harness

SIZES = ((256, 256), (768, 1024))  # (height, width)
DEFAULT_RATE = 15.0


# ------------------------------------------------------------------------------------------ codec
def codec_ms(sizes=SIZES, reps: int = 40) -> dict[str, dict[str, float]]:
    """Median milliseconds per message of each OpenIGTLink step, in this process (no sockets)."""
    from medstream.runtime.frame import Overlay
    from medstream.runtime.frame_publisher import phantom_geometry
    from medstream.runtime.igtl import messages as igtl
    from medstream.runtime.sinks.igtl_sink import label_map, overlay_json

    out: dict[str, dict[str, float]] = {}
    rng = np.random.default_rng(0)
    for h, w in sizes:
        for comps in (1, 3):
            shape = (h, w) if comps == 1 else (h, w, 3)
            image = rng.integers(0, 255, shape, dtype=np.uint8)
            geo = phantom_geometry(w, h)
            t = time.time_ns()
            mask = (rng.random((256, 256)) > 0.9).astype(np.uint8)
            ov = Overlay(seq=1, t_capture_ns=t, source_id="b", model_id="m", class_names=("bg", "a"),
                         class_colors=((0, 0, 0), (255, 0, 0)), mask=mask, frame_size=(h, w), areas_px={"a": 10},
                         geometry=geo)
            timings: dict[str, list[float]] = {"sender_pack": [], "source_crc_decode": [], "sink_label_map_pack": [],
                                               "receiver_crc_decode": []}
            for _ in range(reps):
                t0 = time.perf_counter()
                raw = igtl.image_message(image, geo, "Image_Reference", t)
                t1 = time.perf_counter()
                header = igtl.parse_header(raw[:igtl.HEADER_SIZE])
                body = bytearray(raw[igtl.HEADER_SIZE:])
                igtl.check_body(header, body)
                igtl.model_pixels(igtl.decode_image(header, body).pixels)
                t2 = time.perf_counter()
                if comps == 1:
                    lm = igtl.image_message(label_map(ov), geo, "Prediction", t)
                    igtl.string_message(igtl.dumps(overlay_json(ov, {})), "PredictionInfo", t)
                    t3 = time.perf_counter()
                    lh = igtl.parse_header(lm[:igtl.HEADER_SIZE])
                    lb = bytearray(lm[igtl.HEADER_SIZE:])
                    igtl.check_body(lh, lb)
                    igtl.decode_image(lh, lb)
                    t4 = time.perf_counter()
                    timings["sink_label_map_pack"].append((t3 - t2) * 1e3)
                    timings["receiver_crc_decode"].append((t4 - t3) * 1e3)
                timings["sender_pack"].append((t1 - t0) * 1e3)
                timings["source_crc_decode"].append((t2 - t1) * 1e3)
            key = f"{w}x{h}" + ("" if comps == 1 else " rgb")
            out[key] = {k: round(statistics.median(v), 3) for k, v in timings.items() if v}
            out[key]["message_bytes"] = len(raw)
    out["crc_native"] = {"crcmod_c_extension": float(igtl.crc_is_native())}
    return out


# ------------------------------------------------------------------------------------------ chains
def chain(s: Any, transport: str, hw: tuple[int, int], rate: float) -> dict[str, Any]:
    """One simulate -> run -> receiver chain over ``transport`` ("igtl" or "zmq"); the receiver's figures."""
    h, w = hw
    out = s.out_dir / "igtl" / s.round_tag / f"{transport}_{w}x{h}"
    out.mkdir(parents=True, exist_ok=True)
    frames = max(1, int(round(rate * s.duration_s)))
    sim_port, pub_port, igtl_port = harness.free_port(), harness.free_port(), harness.free_port()
    pub = f"tcp://127.0.0.1:{pub_port}"
    if transport == "igtl":
        sim_ep = f"igtl://127.0.0.1:{sim_port}"
        source = f"igtl://127.0.0.1:{sim_port}?device=Image_Reference"
        publish = ["--publish", pub, "--publish", f"igtl://127.0.0.1:{igtl_port}"]
    else:
        sim_ep = f"tcp://127.0.0.1:{sim_port}"
        source = f"zmq+{sim_ep}"
        publish = ["--publish", pub]
    ready = out / "receiver.ready"
    ready.unlink(missing_ok=True)
    result_path = out / "receiver.json"
    with harness.ProcessGroup(out) as group:
        run = group.spawn("run", harness.medstream_cmd(
            "--log-level", "WARNING", "run", "--source", source, "--model", str(s.model_path), "--backend", "onnxruntime",
            "--threads", str(s.threads), *publish, "--summary", str(out / "run_summary.json"), "--source-id", "bench"))
        common = ["--out", str(result_path), "--interval-ms", f"{1000.0 / rate:.6f}", "--warmup-s", str(s.warmup_s),
                  "--ready-file", str(ready), "--idle-exit-s", "2.0", "--max-s", str(s.duration_s * 3 + 150)]
        if transport == "igtl":
            receiver = group.spawn("receiver", harness.module_cmd(
                "medstream.benchmarks.igtl_receiver", "--connect", f"igtl://127.0.0.1:{igtl_port}", *common))
        else:
            receiver = group.spawn("receiver", harness.module_cmd("medstream.benchmarks.subscriber", "--connect", pub,
                                                                  *common))
        harness.wait_for_file(ready, 90, [run, receiver])
        sim = group.spawn("simulate", harness.medstream_cmd(
            "--log-level", "WARNING", "simulate", "--kind", s.sim_kind, "--rate", f"{rate:.4f}", "--publish", sim_ep,
            "--frames", str(frames), "--width", str(w), "--height", str(h), "--wait-subscribers", "1",
            "--wait-timeout", "90", "--motion-fps", "30", "--preload", "60" if w * h > 300_000 else "300"))
        code = sim.wait(s.duration_s + 150)
        if code != 0:
            raise harness.HarnessError(f"simulator failed or hung (exit code {code}); log {sim.log_path}:\n"
                                       f"{sim.log_tail()}")
        if receiver.wait(s.drain_timeout_s) is None:
            receiver.stop()
    if not result_path.is_file():
        raise harness.HarnessError(f"the {transport} receiver wrote no result; logs in {out}")
    res = json.loads(result_path.read_text())
    summary_path = out / "run_summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    c = summary["counters"] if summary else {}
    stages = res.get("stages_ms") or {}
    return {"transport": transport, "size": f"{w}x{h}", "rate_fps": rate, "frames": frames,
            "age_ms": res["age_ms"], "ingress_ms": stages.get("ingress", {}), "wire_out_ms": stages.get("wire_out", {}),
            "infer_ms": stages.get("infer", {}), "stages_ms": stages, "histograms": res.get("histograms"), "throughput_fps": res.get("throughput_fps"),
            "received_by_receiver": res.get("received"), "cdf": res.get("cdf", []), "timeline": res.get("timeline", []),
            "accounting": {"received": c.get("received"), "processed": c.get("processed"),
                           "dropped_total": c.get("dropped_total"), "dropped": c.get("dropped"),
                           "exact": bool(c) and c["received"] == c["processed"] + c["dropped_total"]},
            "resources": group.resources()}


def _transport(r: dict[str, Any]) -> float:
    return float(r["ingress_ms"].get("p50", 0.0)) + float(r["wire_out_ms"].get("p50", 0.0))


def igtl(s: Any) -> dict[str, Any]:
    """The scenario: both transports at both sizes; headline = the OpenIGTLink chain at 256x256."""
    from medstream.benchmarks.scenarios import _result

    rate = s.rate or DEFAULT_RATE
    per_size: dict[str, Any] = {}
    headline = None
    for hw in SIZES:
        z = chain(s, "zmq", hw, rate)
        g = chain(s, "igtl", hw, rate)
        headline = headline or g
        added = {p: round(g["age_ms"].get(p, 0.0) - z["age_ms"].get(p, 0.0), 2) for p in ("p50", "p90", "p99")}
        keys = ("age_ms", "ingress_ms", "wire_out_ms", "infer_ms", "throughput_fps", "accounting", "received_by_receiver")
        per_size[g["size"]] = {
            "zmq": {k: z[k] for k in keys},
            "igtl": {k: g[k] for k in keys},
            "added_ms": added,
            # transport only (capture -> received + publish -> arrival): free of the model's time, which on a
            # shared machine swings more than the transport costs
            "added_transport_p50_ms": round(_transport(g) - _transport(z), 2),
        }
    codec = codec_ms()
    notes = [f"source {rate:g} fps for {s.duration_s:g} s per chain; warm-up {s.warmup_s:g} s excluded",
             "added = OpenIGTLink chain age minus ZeroMQ chain age at the same size and rate: " + "; ".join(
                 f"{k}: p50 {v['added_ms']['p50']:+.2f} ms, p99 {v['added_ms']['p99']:+.2f} ms, transport p50 "
                 f"{v['added_transport_p50_ms']:+.2f} ms" for k, v in per_size.items())]
    assert headline is not None
    return _result("igtl", latency_ms=headline["age_ms"], stages_ms=headline["stages_ms"], rate_fps=rate, throughput_fps=headline["throughput_fps"],
                   accounting=headline["accounting"], drops=headline["accounting"].get("dropped") or {},
                   histograms=headline["histograms"], cdf=headline["cdf"], timeline=headline["timeline"],
                   igtl={"sizes": per_size, "codec_ms": codec}, notes=notes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medstream.benchmarks.igtl_glass", description=__doc__.splitlines()[0])
    p.add_argument("--codec", action="store_true", help="only the in-process per-message costs")
    p.add_argument("--out", default=None, help="write the JSON here too")
    args = p.parse_args(argv)
    result = codec_ms()
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
