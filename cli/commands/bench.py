"""Measure latency: compute floor, in-process pipeline, glass-to-glass over ZeroMQ, overload, the naive
loop, concurrent streams. Writes report.json, report.md and PNG plots; see docs/BENCHMARKS.md.

Examples: ``medstream bench`` (all scenarios, ultrasound model), ``medstream bench glass overload
--duration 10``, ``medstream bench --model my.onnx``, ``medstream bench --compare A.json B.json``,
``medstream bench --results-md`` (both reference models; rewrites benchmarks/RESULTS.md).
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from pathlib import Path

from medstream.cli.commands._model_args import add_contract_arguments, model_with_contract

HELP = "benchmark latency (floor, pipeline, glass-to-glass, overload, naive loop, streams)"
RESULTS_MD_COMMAND = "medstream bench --results-md"


def add_arguments(p) -> None:
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                   help="floor transport pipeline glass overload naive streams (default: these), igtl (OpenIGTLink "
                        "vs ZeroMQ glass to glass at 256x256 and 1024x768: by name only)")
    p.add_argument("--model", default=None, help="ultrasound, fluoroscopy or a path to an ONNX file with a medstream contract")
    p.add_argument("--duration", type=float, default=15.0, help="seconds per scenario (default 15)")
    p.add_argument("--rate", type=float, default=None,
                   help="source fps under capacity (default 0.6 x capacity; capacity = 1000 / floor p50)")
    p.add_argument("--overload-rate", type=float, default=None, help="source fps for overload (default 2 x capacity)")
    p.add_argument("--streams", type=int, default=2, help="concurrent streams in the 'streams' scenario")
    p.add_argument("--threads", type=int, default=None,
                   help="inference threads for the floor, medstream run and the naive loop "
                        "(default: every usable core, as medstream run uses)")
    p.add_argument("--backend", default="onnxruntime",
                   choices=["onnxruntime", "openvino", "onnxruntime-cuda", "tensorrt", "auto", "triton"],
                   help="the backend every scenario runs (floor, pipeline, glass, overload, streams; the naive loop "
                        "too for onnxruntime and openvino); default onnxruntime. Results go to "
                        "benchmarks/results/<model>-<backend> unless it is onnxruntime")
    p.add_argument("--triton-url", default=None,
                   help="--backend triton: the server (default: a local CPU Triton on loopback, started for the run "
                        "from the nvidia-pytriton wheel with a python-onnxruntime repository; docs/TRITON.md)")
    p.add_argument("--triton-model", default=None, help="--backend triton: the model's name on the server")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "int8"],
                   help="OpenVINO precision (docs/CPU.md); default auto")
    p.add_argument("--rounds", type=int, default=3,
                   help="run the whole list this many times, each round floor first, and pool each scenario: on a "
                        "machine whose speed drifts, floor and the others must share the same minutes (default 3)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds excluded at the start of each scenario")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results/<model>)")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="print ratios B/A of two reports and exit")
    p.add_argument("--results-md", action="store_true",
                   help="run for both reference models (or --model) and regenerate benchmarks/RESULTS.md")
    add_contract_arguments(p)  # a model without a contract: benchmarked from a temporary copy with it embedded


def main(args) -> int:
    from medstream.runtime.errors import ConfigError

    if args.compare:
        from medstream.benchmarks.compare import format_ratios

        print(format_ratios(*args.compare))
        return 0
    from medstream.benchmarks import report as rep
    from medstream.benchmarks.scenarios import (
        DEFAULT_SCENARIOS,
        SCENARIOS,
        Settings,
        default_threads,
        run_scenarios,
    )
    from medstream.runtime.files import write_text_atomic
    from medstream.runtime.models.loader import resolve_model_file

    names = args.scenarios or list(DEFAULT_SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise ConfigError(f"unknown scenario(s) {unknown}", f"choose from: {' '.join(SCENARIOS)}")
    if args.rounds < 1:
        raise ConfigError(f"--rounds {args.rounds} must be at least 1", "give e.g. --rounds 3 (1: no pairing)")
    if args.duration <= args.warmup:
        raise ConfigError(f"--duration {args.duration} must be longer than --warmup {args.warmup}",
                          "give e.g. --duration 15 --warmup 2")
    models = [args.model] if args.model else (["ultrasound", "fluoroscopy"] if args.results_md else ["ultrasound"])
    results_root = Path(rep.__file__).resolve().parent / "results"
    command = "medstream " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else "medstream bench"
    threads = args.threads or default_threads()
    written = []
    for model in models:
        path = model_with_contract(resolve_model_file(model), args, "bench")
        tag = "" if args.backend == "onnxruntime" else f"-{args.backend}" + (
            f"-{args.precision}" if args.precision != "auto" else "")
        out = (Path(args.out) / (Path(model).stem if len(models) > 1 else "") if args.out
               else results_root / (Path(model).stem + tag))
        s = Settings(model=model, model_path=path, out_dir=out, duration_s=args.duration, rate=args.rate,
                     overload_rate=args.overload_rate, streams=args.streams, threads=threads, warmup_s=args.warmup,
                     rounds=args.rounds, backend=args.backend, precision=args.precision,
                     triton_url=args.triton_url, triton_model=args.triton_model)
        with _local_triton(s):  # backend triton without --triton-url: a local server for the run
            results = run_scenarios(s, names)
        settings = {"scenarios": names, "duration_s": s.duration_s, "warmup_s": s.warmup_s, "threads": threads,
                    "backend": s.backend, "precision": s.precision,
                    "threads_choice": "given" if args.threads else "default: every usable core", "rounds": s.rounds,
                    "rate": args.rate, "overload_rate": args.overload_rate, "streams": s.streams,
                    "glass_fraction": s.glass_fraction, "overload_factor": s.overload_factor, "max_rate": s.max_rate}
        report = rep.build_report(results, model=model, model_path=str(path), settings=settings, command=command)
        files = rep.write_report(report, out)
        written.append((report, out))
        print(rep.markdown(report))
        print(f"wrote {files['json']} and {files['markdown']}")
    if args.results_md:
        md_path = results_root.parent / "RESULTS.md"
        md = rep.results_markdown([(r, f"{_rel(o, md_path.parent)}/") for r, o in written], RESULTS_MD_COMMAND)
        # the sections other commands wrote (OpenIGTLink, CPU backends, Triton) are kept as they were
        old = md_path.read_text(encoding="utf-8") if md_path.is_file() else ""
        write_text_atomic(md_path, rep.keep_other_sections(old, md))
        print(f"wrote {md_path}")
    return 0


@contextlib.contextmanager
def _local_triton(s):
    """Backend triton without ``--triton-url``: serve the model from a local CPU Triton (loopback) for the run."""
    if s.backend != "triton" or s.triton_url:
        yield
        return
    import subprocess
    import tempfile

    from medstream.benchmarks.triton_server import LocalTriton

    with tempfile.TemporaryDirectory(prefix="medstream-bench-triton-") as tmp:  # no model copy in the results
        repo = Path(tmp) / "repo"
        subprocess.run([sys.executable, "-m", "medstream.cli.main", "--log-level", "WARNING", "triton-repo",
                        "--model", str(s.model_path), "--out", str(repo), "--backend", "python-onnxruntime"],
                       check=True, stdout=subprocess.DEVNULL)
        with LocalTriton(repo, log_path=Path(tmp) / "tritonserver.log") as server:
            s.triton_url = server.grpc_url
            yield


def _rel(path: Path, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(base.resolve()))
    except ValueError:
        return str(Path(path).resolve())
