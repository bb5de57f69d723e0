"""What a Triton round trip costs here, and what system shared memory saves: ``python -m
medstream.benchmarks.triton_roundtrip`` (docs/TRITON.md quotes its numbers).

A local CPU Triton (``benchmarks/triton_server.py``) serves two models made by ``medstream triton-repo
--backend python-onnxruntime`` from the bundled ultrasound U-Net: ``ultrasound_unet`` as written, and
``ultrasound_echo``, the same repository entry whose ``model.py`` answers zeros of the output's shape without
running the model, so its round trip is the transport alone (gRPC or HTTP, socket or shared memory: the
256 KiB input and 768 KiB output of one frame) plus Triton's scheduling. Each setting runs ``--n`` requests
through :class:`~medstream.runtime.backends.triton_backend.TritonBackend`, settings interleaved in rounds so
a machine whose speed drifts weighs on all alike; the local ONNX Runtime compute of the same frame is timed
the same way. Writes ``benchmarks/results/triton_roundtrip.json``.
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

import numpy as np

from medstream.benchmarks.triton_server import LocalTriton

ECHO = '''    def execute(self, requests):
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, self.inputs[0]).as_numpy()
            y = np.zeros((x.shape[0], 3, 256, 256), np.float32)
            out.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.outputs[0][0], y)]))
        return out

    def execute_model(self, requests):
'''


def _repo(folder: Path, model: str) -> Path:
    repo = folder / "repo"
    for name in ("ultrasound_unet", "ultrasound_echo"):
        subprocess.run([sys.executable, "-m", "medstream.cli.main", "--log-level", "WARNING", "triton-repo",
                        "--model", model, "--out", str(repo), "--backend", "python-onnxruntime", "--name", name,
                        "--force"], check=True, stdout=subprocess.DEVNULL)
    py = repo / "ultrasound_echo" / "1" / "model.py"
    py.write_text(py.read_text().replace("    def execute(self, requests):\n", ECHO, 1))
    return repo


def _percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"p50": round(float(np.percentile(a, 50)), 3), "p90": round(float(np.percentile(a, 90)), 3),
            "p99": round(float(np.percentile(a, 99)), 3), "n": len(ms)}


def main(argv: list[str] | None = None) -> int:
    from medstream.runtime.backends import load_backend
    from medstream.runtime.backends.triton_backend import TritonTarget
    from medstream.runtime.models.loader import load_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ultrasound")
    p.add_argument("--n", type=int, default=60, help="requests per setting and model (spread over --rounds)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "triton_roundtrip.json"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        repo = _repo(Path(tmp), args.model)
        with LocalTriton(repo, log_path=Path(tmp) / "tritonserver.log") as server:
            local = load_backend(load_model(args.model, backend="onnxruntime"))
            local.activate()
            x = {"image": np.random.default_rng(0).random((1, 1, 256, 256), dtype=np.float32)}
            settings = [(proto, shm, name) for name in ("ultrasound_echo", "ultrasound_unet")
                        for proto in ("grpc", "http") for shm in ("off", "system")]
            backends = {}
            for proto, shm, name in settings:
                url = server.grpc_url if proto == "grpc" else server.http_url
                b = load_backend(load_model(args.model, backend="triton",
                                            triton=TritonTarget(url=url, model=name, shared_memory=shm)),
                                 request_timeout_ms=10_000)
                b.activate()
                b.warm_up(5)
                backends[(proto, shm, name)] = b
            times: dict[str, list[float]] = {}
            per_round = max(1, args.n // args.rounds)
            for _ in range(args.rounds):
                for _ in range(per_round):
                    t = time.perf_counter()
                    local.infer(x)
                    times.setdefault("local onnxruntime (compute)", []).append((time.perf_counter() - t) * 1e3)
                for (proto, shm, name), b in backends.items():
                    key = f"{name} {proto} shm={shm}"
                    for _ in range(per_round):
                        t = time.perf_counter()
                        b.infer(x)
                        times.setdefault(key, []).append((time.perf_counter() - t) * 1e3)
            for b in backends.values():
                b.deactivate()
            local.deactivate()
    result = {"command": "python -m medstream.benchmarks.triton_roundtrip " + " ".join(argv or sys.argv[1:]),
              "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                          "os": platform.platform(), "load_average": os.getloadavg()}, "round_trip_ms": {k: _percentiles(v) for k, v in times.items()},
              "notes": ["ultrasound_echo: the model replaced by zeros of its output shape: transport + scheduling",
                        "server and client share the machine's cores (loopback)"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    width = max(len(k) for k in times)
    for key, fig in result["round_trip_ms"].items():
        print(f"{key:<{width}}  p50 {fig['p50']:8.2f}  p90 {fig['p90']:8.2f}  p99 {fig['p99']:8.2f} ms  (n {fig['n']})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
