"""Run the streaming pipeline: frames in, overlays and status out over ZeroMQ.

With no arguments: the synthetic ultrasound stream at 30 fps through the bundled ultrasound model on
the CPU, publishing on tcp://127.0.0.1:5556. Stop with Ctrl-C or SIGTERM: the frame in progress
finishes, the summary is written and the sockets close.
"""

from __future__ import annotations

import json
import logging
import signal
import sys

from medstream.runtime.config import load_config

HELP = "run the pipeline (default: synthetic ultrasound -> bundled model -> tcp://127.0.0.1:5556)"
log = logging.getLogger("medstream.run")


def add_arguments(p) -> None:
    p.add_argument("--config", help="YAML config file (keys as in docs/CONFIG.md); flags override it")
    p.add_argument("--source", help="source URI, e.g. synthetic://ultrasound?fps=30, zmq+tcp://127.0.0.1:5555, file://clip.mp4")
    p.add_argument("--source-id", help="stream name carried in every message")
    p.add_argument("--model", help="bundled model name (ultrasound, fluoroscopy) or path to an ONNX file")
    p.add_argument("--backend", choices=["auto", "onnxruntime", "onnxruntime-cuda", "tensorrt", "openvino", "triton"])
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "int8"],
                   help="OpenVINO: int8 (the calibrated M.int8.onnx), bf16 (CPUs with AMX/AVX512-BF16), fp32; "
                        "auto: INT8 file as int8, FP32 file in bf16 where the CPU has it (docs/CPU.md)")
    p.add_argument("--publish", action="append", metavar="ENDPOINT",
                   help="where overlays and status go (default tcp://127.0.0.1:5556); repeat for several outputs")
    p.add_argument("--threads", type=int, help="inference threads (default: all usable cores)")
    p.add_argument("--max-frames", type=int, help="stop after receiving N frames")
    p.add_argument("--duration", type=float, help="stop after S seconds")
    p.add_argument("--summary", help="write a JSON summary (counters, latency percentiles) here at exit")
    p.add_argument("--max-age-ms", type=float, help="drop frames older than this instead of processing them")
    p.add_argument("--render-rgba", action="store_true", default=None, help="add an RGBA render of the mask to each overlay")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (loopback; off by default)")
    p.add_argument("--engine-cache", help="TensorRT engine cache directory")
    p.add_argument("--no-build", action="store_true", default=None, help="TensorRT: refuse to build a missing engine")
    tri = p.add_argument_group("remote inference on Triton Inference Server (--backend triton; docs/TRITON.md); "
                               "--model gives the local ONNX for the contract, or 'triton' to read it from the server")
    tri.add_argument("--triton-url", help="the server: grpc://HOST:8001 or http://HOST:8000 (grpcs://, https://: TLS)")
    tri.add_argument("--triton-model", help="model name in the server's repository (default: the contract's model_id)")
    tri.add_argument("--triton-version", help="model version (default: the server's policy, normally the latest)")
    tri.add_argument("--triton-timeout-ms", type=float, help="deadline of one request (default 2 x --max-age-ms, else 1000)")
    tri.add_argument("--triton-shm", dest="triton_shared_memory", choices=["auto", "system", "off"],
                     help="tensors through system shared memory (auto: when the server is on loopback)")
    tri.add_argument("--triton-tls-ca", help="CA certificate (PEM) of the server's TLS certificate")
    tri.add_argument("--triton-tls-cert", help="client certificate (PEM), for mutual TLS")
    tri.add_argument("--triton-tls-key", help="the client certificate's key (PEM)")
    tri.add_argument("--triton-auth-header", help="name of the header the server requires, e.g. triton-access-token")
    tri.add_argument("--triton-auth-token-file", help="file holding that header's value (kept out of logs)")
    sec = p.add_argument_group("transport security (docs/SECURITY.md); any --curve-* option turns CURVE on")
    sec.add_argument("--curve", action="store_true", default=None, help="encrypt and authenticate every socket (ZeroMQ CURVE)")
    sec.add_argument("--curve-secret", help="the publisher's key pair (NAME.key_secret from medstream keys generate)")
    sec.add_argument("--curve-allow", help="folder of the NAME.key files of clients allowed to subscribe")
    sec.add_argument("--curve-client-secret", help="our key pair as a client of the frame sender (NAME.key_secret)")
    sec.add_argument("--curve-server-key", help="the frame sender's public key (SENDER.key file or 40 Z85 characters)")
    sec.add_argument("--allow-insecure-remote", action="store_true", default=None,
                     help="allow binding a non-loopback address without CURVE (isolated networks only)")


def _security_overrides(args) -> dict:
    """Command-line security flags as a partial ``security`` mapping (merged over the YAML's)."""
    keys = {"curve_secret": "server_secret_key", "curve_allow": "allowed_clients_dir",
            "curve_client_secret": "client_secret_key", "curve_server_key": "frames_server_key"}
    out = {dst: vars(args)[src] for src, dst in keys.items() if vars(args).get(src)}
    if out or vars(args).get("curve"):
        out["curve"] = True
    if vars(args).get("allow_insecure_remote"):
        out["allow_insecure_remote"] = True
    return out


def main(args) -> int:

    # Signals first: a SIGTERM while the model loads (a second or more) must still end in a summary.
    # cli/main.py remembered any that came before we got here.
    from medstream.cli.main import EARLY_STOP
    from medstream.runtime.errors import (
        EXIT_ACCOUNTING,
        EXIT_OK,
        EXIT_SOURCE_FAILED,
        EXIT_SUMMARY_NOT_WRITTEN,
    )
    from medstream.runtime.files import write_json_atomic
    from medstream.runtime.service import make_service_hooks
    from medstream.runtime.stream import build_stream

    stop_requested = EARLY_STOP
    pipeline = None

    def _stop(signum, _frame):
        log.info("received %s: finishing the current frame and stopping", signal.Signals(signum).name)
        try:  # tell systemd at once, before the frame in progress finishes (no-op without NOTIFY_SOCKET)
            from medstream.runtime.service.notify import notify_stopping

            notify_stopping(f"received {signal.Signals(signum).name}")
        except ImportError:
            pass
        stop_requested.set()
        if pipeline is not None:
            pipeline.stop()

    def _hup(_signum, _frame):
        log.warning("SIGHUP: live config reload is not supported; the stream continues unchanged. "
                    "Restart the service (systemctl restart medstream) to apply a new config.")

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, _hup)

    overrides = {k: getattr(args, k) for k in (
        "source", "source_id", "model", "backend", "precision", "publish", "threads", "max_frames", "duration", "summary",
        "max_age_ms", "render_rgba", "metrics_port", "engine_cache", "no_build", "triton_url", "triton_model",
        "triton_version", "triton_timeout_ms", "triton_shared_memory", "triton_tls_ca", "triton_tls_cert",
        "triton_tls_key", "triton_auth_header", "triton_auth_token_file")}
    if sec := _security_overrides(args):
        overrides["security"] = sec
    cfg = load_config(args.config, overrides)
    hooks = make_service_hooks(cfg.service, allow_insecure_remote=cfg.security.allow_insecure_remote)
    pipeline = build_stream(cfg, observers=hooks.observers, telemetry=hooks.telemetry)
    with pipeline:
        if stop_requested.is_set():
            pipeline.stop()
        pipeline.prepare()
        summary = pipeline.run(max_frames=cfg.run.max_frames, duration_s=cfg.run.duration)
    c = summary["counters"]
    lat = summary["latency_ms"].get("total", {})
    # The counters go to stdout first, so they are seen even when the summary file cannot be written.
    print(json.dumps({"received": c["received"], "processed": c["processed"], "published": c["published"],
                      "dropped": c["dropped"], "accounting_ok": summary["accounting_ok"],
                      "latency_ms_p50": lat.get("p50"), "latency_ms_p99": lat.get("p99")}), file=sys.stdout, flush=True)
    code = EXIT_OK if summary["accounting_ok"] else EXIT_ACCOUNTING
    if summary.get("source_crash"):
        log.error("the frame source %s failed and could not recover (%s); the run stopped", cfg.source.uri,
                  summary["source_crash"])
        code = EXIT_SOURCE_FAILED
    if cfg.run.summary:
        try:
            write_json_atomic(cfg.run.summary, summary)
        except OSError as exc:
            log.error("could not write the summary %s: %s. The counters are printed above; free space or choose "
                      "another --summary path", cfg.run.summary, exc.strerror or exc)
            return EXIT_SUMMARY_NOT_WRITTEN if code == EXIT_OK else code
    return code
