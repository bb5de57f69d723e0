"""What each output decoder costs per frame (issue 13): postprocessing ms, p50 and p90, on this machine.

::

    python -m medstream.benchmarks.decoder_cost [--runs 300] [--out benchmarks/results]

Times :func:`medstream.runtime.decoders.make_decoder`'s decoder on one frame's outputs per task, as the
pipeline calls it (``decoder(outputs, frame_size, roi)``, everything the overlay needs: mask, contours,
areas, boxes, points, heatmap and confidence), single thread. The segmentation rows use the bundled
ultrasound U-Net's real output on a phantom frame and also time the v1 path (class map + contours +
areas, no confidence) so the cost of confidence is visible. The other rows use outputs of the usual
sizes (a YOLOv8 head ``[1, 84, 8400]`` for 80 classes at 640x640, a YOLOv5 head ``[1, 25200, 85]``, ...)
filled with seeded random numbers shaped like real ones (a few confident clusters, a sea of low scores).
Prints a table and writes ``decoder_cost.json``.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medstream.runtime.contract import resolve_contract
from medstream.runtime.decoders import make_decoder
from medstream.runtime.files import write_json_atomic


def _time(fn: Callable[[], Any], runs: int) -> dict[str, float]:
    for _ in range(10):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    p50, p90 = np.percentile(samples, (50, 90))
    return {"p50_ms": round(float(p50), 4), "p90_ms": round(float(p90), 4), "runs": runs}


def _contract(task: str, outputs: list[dict], classes: int, size: tuple[int, int], **extra: Any):
    return resolve_contract(None, {"model_id": f"bench-{task}", "task": task,
                                   "input": {"name": "x", "height": size[0], "width": size[1], **extra.pop("input", {})},
                                   "outputs": outputs, "classes": [{"name": f"c{i}"} for i in range(classes)], **extra},
                            "bench")


def _yolo_scores(rng: np.random.Generator, anchors: int, classes: int) -> np.ndarray:
    scores = rng.beta(0.3, 30, (anchors, classes)).astype(np.float32)  # mostly ~0.01
    hot = rng.choice(anchors, 60, replace=False)
    scores[hot, rng.integers(0, classes, 60)] = rng.uniform(0.5, 0.95, 60)
    return scores


def _yolo_boxes(rng: np.random.Generator, anchors: int, size: int = 640) -> np.ndarray:
    return np.concatenate([rng.uniform(0, size, (anchors, 2)), rng.uniform(8, 200, (anchors, 2))], 1).astype(np.float32)


def _smooth_logits(rng: np.random.Generator, channels: int, size: int = 256) -> np.ndarray:
    """Logit maps with blob-shaped regions (blurred noise): what a segmenter's output looks like, where white
    noise would make thousands of one-pixel contours no model produces."""
    import cv2

    planes = []
    for _ in range(channels):
        z = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 8)
        planes.append((z / z.std() * 4 - 3).astype(np.float32))
    return np.stack(planes)[None]


def cases(rng: np.random.Generator) -> list[tuple[str, Any, dict[str, Any], tuple[int, int]]]:
    """``(name, decoder, outputs, frame_size)`` per task."""
    from medstream.runtime.backends import load_backend
    from medstream.runtime.models.loader import load_model
    from medstream.runtime.phantom import make_phantom

    loaded = load_model("ultrasound", backend="onnxruntime")
    backend = load_backend(loaded, intra_op_threads=1).activate()
    c = loaded.contract
    image, _ = make_phantom("ultrasound", fps=30, height=c.input.height, width=c.input.width, seed=0).render(0)
    unet = {k: v.copy() for k, v in backend.infer({c.input.name: backend.make_preprocessor()(image, "gray")}).items()}
    backend.deactivate()
    out: list[tuple[str, Any, dict[str, Any], tuple[int, int]]] = [
        ("segmentation softmax (bundled U-Net 3x256x256)", make_decoder(c), unet, (256, 256))]
    logit_map = _smooth_logits(rng, 1)
    out.append(("segmentation sigmoid binary 1x256x256",
                make_decoder(_contract("segmentation", [{"name": "y", "activation": "sigmoid"}], 2, (256, 256))),
                {"y": logit_map}, (256, 256)))
    out.append(("segmentation sigmoid multi-label 3x256x256",
                make_decoder(_contract("segmentation", [{"name": "y", "activation": "sigmoid"}], 4, (256, 256))),
                {"y": _smooth_logits(rng, 3)}, (256, 256)))
    out.append(("classification [1,14]", make_decoder(_contract("classification", [{"name": "y"}], 14, (224, 288))),
                {"y": rng.normal(0, 2, (1, 14)).astype(np.float32)}, (576, 720)))
    out.append(("classification [1,14] + CAM [1,14,7,9]",
                make_decoder(_contract("classification", [{"name": "y"}, {"name": "cam", "kind": "heatmap"}], 14,
                                       (224, 288))),
                {"y": rng.normal(0, 2, (1, 14)).astype(np.float32),
                 "cam": rng.random((1, 14, 7, 9)).astype(np.float32)}, (576, 720)))
    head8 = np.concatenate([_yolo_boxes(rng, 8400), _yolo_scores(rng, 8400, 80)], 1).T[None].copy()
    out.append(("detection YOLOv8 [1,84,8400] letterbox 1280x720",
                make_decoder(_contract("detection", [{"name": "y", "kind": "yolov8"}], 80, (640, 640),
                                       input={"resize": "letterbox", "channels": 3, "color_order": "rgb"})),
                {"y": head8}, (720, 1280)))
    s5 = _yolo_scores(rng, 25200, 80)
    obj = s5.max(axis=1, keepdims=True)
    head5 = np.concatenate([_yolo_boxes(rng, 25200), obj, s5 / np.maximum(obj, 1e-6)], 1)[None].astype(np.float32)
    out.append(("detection YOLOv5 [1,25200,85] letterbox 1280x720",
                make_decoder(_contract("detection", [{"name": "y", "kind": "yolov5"}], 80, (640, 640),
                                       input={"resize": "letterbox", "channels": 3, "color_order": "rgb"})),
                {"y": head5}, (720, 1280)))
    e2e = _contract("detection", [{"name": "b", "kind": "boxes"}, {"name": "s", "kind": "scores"},
                                  {"name": "l", "kind": "labels"}], 80, (640, 640))
    xy = rng.uniform(0, 500, (1, 100, 2))
    out.append(("detection end-to-end [1,100,4]", make_decoder(e2e),
                {"b": np.concatenate([xy, xy + 60], 2).astype(np.float32),
                 "s": np.sort(rng.random((1, 100)))[:, ::-1].astype(np.float32),
                 "l": rng.integers(0, 80, (1, 100))}, (720, 1280)))
    out.append(("keypoints [1,2,64,64] + heatmap",
                make_decoder(_contract("keypoints", [{"name": "y"}], 2, (256, 256), decode={"heatmap": True})),
                {"y": rng.normal(-4, 2, (1, 2, 64, 64)).astype(np.float32)}, (256, 256)))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m medstream.benchmarks.decoder_cost", description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    rows = []
    todo = cases(rng)
    seg_name, seg, seg_out, seg_size = todo[0]
    post = seg.post

    def v1_path() -> None:  # what the pipeline did before decoders: class map, contours, areas
        mask = post.class_map(seg_out)
        post.contours(mask, seg_size)
        post.areas(mask)

    rows.append({"case": "segmentation softmax, v1 path (no confidence)", **_time(v1_path, args.runs)})
    for name, decoder, outputs, frame_size in todo:
        rows.append({"case": name, **_time(lambda d=decoder, o=outputs, f=frame_size: d(o, f, None), args.runs)})
    width = max(len(r["case"]) for r in rows)
    print(f"{'case':<{width}}  p50 ms   p90 ms")
    for r in rows:
        print(f"{r['case']:<{width}}  {r['p50_ms']:7.3f}  {r['p90_ms']:7.3f}")
    result = {"benchmark": "decoder_cost", "command": "python -m medstream.benchmarks.decoder_cost "
              f"--runs {args.runs}", "machine": {"platform": platform.platform(), "processor": platform.processor(),
                                                "python": platform.python_version()},
              "threads": "single (the pipeline's worker thread)", "cases": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "decoder_cost.json", result)
    print(f"wrote {out / 'decoder_cost.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
