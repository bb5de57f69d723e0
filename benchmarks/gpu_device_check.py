"""GPU device check: the reference models through the ONNX Runtime CUDA path with GPU pre/postprocessing.

Made to run ONCE on the lent GPU machine (see benchmarks/run_gpu_check.sh for the exact call
sequence); everything it needs to decide is in its output. For each model and frame size it

1. renders phantom frames (the stream the models were trained on) and computes the CPU reference
   masks (ONNX Runtime CPU + :class:`Preprocessor` + :class:`Postprocessor`: the production CPU path);
2. runs each GPU variant (fp32 + CUDA graph, fp32 without graph, fp16 ONNX + CUDA graph) through
   ``OrtCudaBackend`` with ``GpuPreprocessor``/``GpuPostprocessor`` and checks the masks against the
   CPU ones (pixel agreement, %);
3. times, per frame: GPU compute (CUDA events), end-to-end in-process latency (uint8 frame on the
   host -> uint8 mask on the host, no extra synchronisation), and in a second, synchronised pass the
   share of each stage (upload + preprocess, inference, argmax + download);
4. prints a table last and writes ``gpu_check.json`` and ``gpu_check.md`` under ``--out`` with the
   card, driver and versions. Target: end-to-end within 0.5 ms of compute at 256x256.

Imports (what the device machine must have): numpy, onnx, onnxruntime-gpu, cupy, cuda-python
(cuda.bindings, through medstream.runtime.gpu.cuda), opencv (cv2), pydantic (+ pydantic_core,
annotated_types, typing_extensions, typing_inspection; the model contract); optional nvidia-ml-py.
NOT needed: pyzmq, pyyaml, hdrhistogram, prometheus_client, psutil, tqdm, torch. The medstream modules
imported (runtime.contract, preprocess, postprocess, backends.*, gpu.*, engine.fp16, phantom, models)
pull in none of those. When medstream is not installed, the script maps this checkout's folders
onto the ``medstream`` namespace itself (no pip install needed on the device).

``--dry-run`` validates arguments, the import chain and the models, runs the CPU reference on a few
frames, reports which GPU pieces are missing, and exits 0: that is what runs in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _bootstrap_medstream() -> None:
    """Make ``import medstream.runtime`` work from this checkout without installing it."""
    try:
        import medstream.runtime  # noqa: F401
        return
    except ImportError:
        pass
    shim = Path(tempfile.mkdtemp(prefix="medstream-shim-")) / "medstream"
    shim.mkdir()
    for folder in ("runtime", "benchmarks", "export", "calibration", "cli"):
        if (REPO / folder).is_dir():
            os.symlink(REPO / folder, shim / folder)
    sys.path.insert(0, str(shim.parent))


_bootstrap_medstream()

import numpy as np  # noqa: E402

from medstream.runtime.contract import ModelContract, read_contract  # noqa: E402
from medstream.runtime.postprocess import Postprocessor  # noqa: E402
from medstream.runtime.preprocess import Preprocessor  # noqa: E402

DEFAULT_MODELS = ("ultrasound", "fluoroscopy")
VARIANTS = {
    "fp32+graph": {"precision": "fp32", "cuda_graph": True},
    "fp32": {"precision": "fp32", "cuda_graph": False},
    "fp16+graph": {"precision": "fp16", "cuda_graph": True},
}


# ------------------------------------------------------------------------------------------ facts
def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(), "host": platform.node()}
    for mod in ("numpy", "onnx", "onnxruntime", "cupy", "cv2", "pydantic"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as exc:
            env[mod] = f"missing ({type(exc).__name__})"
    try:
        import cuda.bindings

        env["cuda_bindings"] = cuda.bindings.__version__
    except Exception as exc:
        env["cuda_bindings"] = f"missing ({type(exc).__name__})"
    try:
        import onnxruntime as ort

        env["ort_providers"] = ort.get_available_providers()
    except Exception:
        env["ort_providers"] = []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        env["nvidia_smi"] = out.stdout.strip() or out.stderr.strip()
    except Exception as exc:
        env["nvidia_smi"] = f"unavailable ({type(exc).__name__})"
    try:
        from medstream.runtime.gpu.cuda import device_count, device_info

        env["cuda_devices"] = [device_info(i) for i in range(device_count())]
    except Exception as exc:
        env["cuda_devices"] = f"unavailable ({exc})"
    return env


def gpu_missing() -> list[str]:
    missing = []
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            missing.append("onnxruntime-gpu (this onnxruntime has no CUDAExecutionProvider)")
    except ImportError:
        missing.append("onnxruntime")
    for mod, what in (("cupy", "cupy (GPU pre/postprocessing)"), ("cuda.bindings", "cuda-python")):
        try:
            __import__(mod)
        except ImportError:
            missing.append(what)
    from medstream.runtime.gpu.cuda import device_count

    if not missing and device_count() == 0:
        missing.append("a CUDA device (none visible)")
    return missing


# ------------------------------------------------------------------------------------------ inputs
def resolve_models(names: list[str]) -> list[Path]:
    from medstream.runtime.models import bundled_model_path

    return [Path(bundled_model_path(n)) for n in names]


def phantom_for(contract: ModelContract, path: Path, size: tuple[int, int]):
    from medstream.runtime.phantom import make_phantom

    text = f"{contract.modality} {contract.model_id} {path.name}".lower()
    kind = "fluoroscopy" if "fluoro" in text else "ultrasound"
    return kind, make_phantom(kind, height=size[0], width=size[1], seed=7)


def render_frames(phantom, n: int) -> list[np.ndarray]:
    return [np.ascontiguousarray(phantom.render(i)[0]) for i in range(n)]


def cpu_reference(path: Path, contract: ModelContract, frames: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    from medstream.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    pre, post = Preprocessor(contract), Postprocessor(contract)
    masks, times = [], []
    with OnnxRuntimeBackend(str(path), contract, providers=["CPUExecutionProvider"]) as backend:
        for img in frames:
            t0 = time.perf_counter_ns()
            out = backend.infer({contract.input.name: pre(img)})
            masks.append(post.class_map(out).copy())
            times.append((time.perf_counter_ns() - t0) / 1e6)
    return masks, float(np.median(times))


# ------------------------------------------------------------------------------------------ GPU runs
def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, np.float64), q)) if values else float("nan")


def run_variant(model_path: Path, contract: ModelContract, variant: str, frames: list[np.ndarray],
                ref_masks: list[np.ndarray], warmup: int, tmp: Path) -> dict[str, Any]:
    from medstream.runtime.backends.ort_cuda import OrtCudaBackend

    cfg = VARIANTS[variant]
    path = model_path
    if cfg["precision"] == "fp16":
        from medstream.runtime.engine.fp16 import convert_file_to_fp16

        path = convert_file_to_fp16(model_path, tmp / f"{model_path.stem}_fp16.onnx")
    backend = OrtCudaBackend(str(path), contract, cuda_graph=cfg["cuda_graph"])
    t_start = time.perf_counter()
    backend.activate()
    activate_s = time.perf_counter() - t_start
    pre, post = backend.make_preprocessor(), backend.make_postprocessor()
    name = contract.input.name
    stream = backend.stream

    def one(img: np.ndarray) -> np.ndarray:
        x = pre(img)
        out = backend.infer({name: x})
        return post.class_map(out)

    for i in range(warmup):
        one(frames[i % len(frames)])
    # Pass 1: as production runs it (no extra synchronisation), end-to-end and GPU compute per frame.
    e2e, compute, agree = [], [], []
    for i, img in enumerate(frames):
        t0 = time.perf_counter_ns()
        mask = one(img)
        e2e.append((time.perf_counter_ns() - t0) / 1e6)
        compute.append(backend.last_compute_ms)
        if i < len(ref_masks):
            agree.append(float(np.mean(mask == ref_masks[i])))
    # Pass 2: synchronised after each stage, for the share of each stage.
    stages: dict[str, list[float]] = {"upload+preprocess": [], "inference": [], "argmax+download": []}
    for img in frames:
        t0 = time.perf_counter_ns()
        x = pre(img)
        stream.synchronize()
        t1 = time.perf_counter_ns()
        out = backend.infer({name: x})
        stream.synchronize()
        t2 = time.perf_counter_ns()
        post.class_map(out)
        t3 = time.perf_counter_ns()
        stages["upload+preprocess"].append((t1 - t0) / 1e6)
        stages["inference"].append((t2 - t1) / 1e6)
        stages["argmax+download"].append((t3 - t2) / 1e6)
    total = sum(pct(v, 50) for v in stages.values())
    describe = backend.describe()
    backend.deactivate()
    return {
        "variant": variant, "ort_variant": describe.get("variant"), "providers": describe.get("providers"),
        "cuda_graph": describe.get("cuda_graph"), "shared_stream": describe.get("shared_stream"),
        "activate_s": round(activate_s, 2), "frames": len(frames),
        "e2e_ms": {"p50": pct(e2e, 50), "p99": pct(e2e, 99), "mean": float(np.mean(e2e))},
        "compute_ms": {"p50": pct(compute, 50), "p99": pct(compute, 99)},
        "overhead_ms_p50": pct(e2e, 50) - pct(compute, 50),
        "stages_ms_p50": {k: pct(v, 50) for k, v in stages.items()},
        "stage_share": {k: (pct(v, 50) / total if total else float("nan")) for k, v in stages.items()},
        "mask_agreement_pct": {"mean": 100 * float(np.mean(agree)) if agree else None,
                               "min_frame": 100 * float(np.min(agree)) if agree else None, "frames": len(agree)},
    }


# ------------------------------------------------------------------------------------------ report
def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = ["# GPU device check (ONNX Runtime CUDA EP + GPU pre/postprocessing)", "",
             f"- date (UTC): {result['date_utc']}", f"- card / driver: {env.get('nvidia_smi')}",
             f"- onnxruntime {env.get('onnxruntime')}, cupy {env.get('cupy')}, cuda-bindings {env.get('cuda_bindings')}, "
             f"opencv {env.get('cv2')}, numpy {env.get('numpy')}, python {env.get('python')}",
             f"- frames per run: {result['args']['frames']} (+{result['args']['warmup']} warm-up); mask agreement on "
             f"the first {result['args']['check_frames']} against the CPU path", "",
             "| model | frame | variant | e2e p50 | e2e p99 | compute p50 | e2e - compute | pre / infer / post share "
             "| mask agreement (min frame) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['frame']} | {r['variant']} | error: {r['error']} |||||||")
            continue
        s = r["stage_share"]
        a = r["mask_agreement_pct"]
        lines.append(
            f"| {r['model']} | {r['frame']} | {r['variant']} | {r['e2e_ms']['p50']:.3f} | {r['e2e_ms']['p99']:.3f} | "
            f"{r['compute_ms']['p50']:.3f} | {r['overhead_ms_p50']:.3f} | "
            f"{s['upload+preprocess']:.0%} / {s['inference']:.0%} / {s['argmax+download']:.0%} | "
            f"{a['mean']:.3f}% ({a['min_frame']:.3f}%) |")
    lines += ["", "CPU reference (ONNX Runtime CPU, this machine's cores), per frame p50:"]
    for k, v in result["cpu_reference_ms_p50"].items():
        lines.append(f"- {k}: {v:.2f} ms")
    lines += ["", "Times in ms. e2e = uint8 frame on the host to uint8 mask on the host, in process, no extra "
              "synchronisation; compute = ONNX Runtime's GPU time between CUDA events on the shared stream (wall "
              "time of run() when the stream could not be shared). Target: e2e - compute <= 0.5 ms at 256x256."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="output folder ($OUT on the device machine)")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="bundled names or ONNX paths")
    p.add_argument("--frames", type=int, default=300, help="timed frames per run")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--check-frames", type=int, default=50, help="frames compared with the CPU path")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0, 2.0],
                   help="frame size as a multiple of the model input (2.0 exercises the GPU area resize)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--min-agreement", type=float, default=99.0, help="fail (exit 1) below this mask agreement %%")
    p.add_argument("--dry-run", action="store_true", help="CPU only: validate arguments, imports and models")
    args = p.parse_args(argv)
    if args.frames < 1 or args.check_frames < 1 or args.warmup < 0:
        p.error("--frames and --check-frames must be >= 1, --warmup >= 0")
    if not args.dry_run and not args.out:
        p.error("--out is required (use $OUT on the device machine)")
    try:
        paths = resolve_models(args.models)
    except Exception as exc:
        print(f"model error: {exc}", file=sys.stderr)
        return 2
    contracts = {}
    for path in paths:
        contract = read_contract(path)
        if contract is None:
            print(f"model error: {path} carries no medstream contract", file=sys.stderr)
            return 2
        contracts[path] = contract
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "args": vars(args),
                              "environment": environment(), "runs": [], "cpu_reference_ms_p50": {}}
    missing = gpu_missing()
    if args.dry_run:
        for path, contract in contracts.items():
            kind, phantom = phantom_for(contract, path, (contract.input.height, contract.input.width))
            frames = render_frames(phantom, 3)
            masks, ms = cpu_reference(path, contract, frames)
            result["cpu_reference_ms_p50"][path.name] = ms
            print(f"dry run: {path.name} ({contract.model_id}, {kind} phantom, input {contract.input.height}x"
                  f"{contract.input.width}): CPU path ok, {ms:.1f} ms/frame, classes seen {sorted(int(c) for c in np.unique(masks[0]))}")
        print("dry run: GPU pieces missing here: " + (", ".join(missing) if missing else "none"))
        if out:
            (out / "gpu_check_dry_run.json").write_text(json.dumps(result, indent=2, default=str))
        return 0
    if missing:
        print("cannot run the GPU check, missing: " + ", ".join(missing), file=sys.stderr)
        if out:
            result["error"] = f"missing: {missing}"
            (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
        return 2
    worst = 100.0
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for path, contract in contracts.items():
            for scale in args.scales:
                size = (int(contract.input.height * scale), int(contract.input.width * scale))
                kind, phantom = phantom_for(contract, path, size)
                frames = render_frames(phantom, args.frames)
                check = frames[: args.check_frames]
                ref, cpu_ms = cpu_reference(path, contract, check)
                frame_label = f"{size[0]}x{size[1]}"
                result["cpu_reference_ms_p50"][f"{path.name} {frame_label}"] = cpu_ms
                for variant in args.variants:
                    label = {"model": path.name, "frame": frame_label}
                    try:
                        r = run_variant(path, contract, variant, frames, ref, args.warmup, Path(tmp))
                        r.update(label)
                        if variant.startswith("fp32"):
                            worst = min(worst, r["mask_agreement_pct"]["mean"])
                    except Exception as exc:
                        r = {**label, "variant": variant, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
                    result["runs"].append(r)
                    print(json.dumps(r, default=str), flush=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
    md = markdown(result)
    (out / "gpu_check.md").write_text(md)
    print(md)
    ok = worst >= args.min_agreement and not any("error" in r for r in result["runs"])
    print(f"RESULT: {'PASS' if ok else 'FAIL'} (worst fp32 mask agreement {worst:.3f}%, minimum {args.min_agreement}%)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
