"""Assemble a pipeline from a :class:`~medstream.runtime.config.RunConfig`, checking everything first.

Order matters: the model file, its contract and the source URI are validated *before* any socket
is bound or thread started, so a bad configuration is refused with nothing left half-running.
"""

from __future__ import annotations

import hashlib
import logging
import platform
from pathlib import Path
from typing import Any

from medstream.runtime.backends import choose_backend, load_backend
from medstream.runtime.config import RunConfig, SecurityConfig
from medstream.runtime.contract import ModelContract, read_contract, resolve_contract
from medstream.runtime.errors import ConfigError, ContractError, MedstreamError, ModelLoadError
from medstream.runtime.files import sha256_file, write_json_atomic
from medstream.runtime.observers import PipelineObserver
from medstream.runtime.pipeline import Pipeline
from medstream.runtime.publisher import Publisher
from medstream.runtime.security import CurveServer, check_bind_allowed, client_curve
from medstream.runtime.sources import open_source
from medstream.runtime.version import __version__, git_commit

log = logging.getLogger("medstream.app")


def resolve_model_path(model: str) -> Path:
    """A bundled model name (``ultrasound``, ``fluoroscopy``) or a path to an ONNX/engine file."""
    from medstream.runtime.models import bundled_model_path

    return Path(bundled_model_path(model))


def load_contract(model_path: Path, overrides: dict[str, Any] | None) -> ModelContract:
    """The model's contract merged with config overrides; a corrupt file is a :class:`ModelLoadError`."""
    if not model_path.is_file():
        raise ModelLoadError(f"model file {model_path} does not exist",
                             "check --model; bundled models: ultrasound, fluoroscopy")
    if model_path.suffix.lower() in (".engine", ".plan", ".trt"):
        raise ModelLoadError(
            f"{model_path} is a TensorRT engine file; medstream runs from the ONNX model and finds or builds "
            "the engine that matches this GPU and TensorRT version in its engine cache",
            "pass the ONNX model (--model M.onnx --backend tensorrt); build engines with 'medstream build'",
        )
    if model_path.stat().st_size == 0:  # an empty file parses as an empty ONNX model: say what it really is
        raise ModelLoadError(f"model file {model_path} is empty (0 bytes)",
                             "the copy or download was interrupted; restore a good copy or re-export it")
    try:
        embedded = read_contract(model_path)
    except ContractError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"model file {model_path} cannot be read as ONNX: {str(exc)[:200]}",
                             "the file is corrupt or truncated; re-export it or restore a good copy") from None
    return resolve_contract(embedded, overrides, str(model_path))


def config_hash(cfg: RunConfig) -> str:
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:12]


def backend_options(cfg: RunConfig, name: str) -> dict[str, Any]:
    if name == "tensorrt":
        opts: dict[str, Any] = {"no_build": cfg.no_build}
        if cfg.engine_cache:
            opts["cache_dir"] = cfg.engine_cache
        return opts
    # The pipeline consumes each output before the next inference, so the backend may reuse buffers.
    return {"intra_op_threads": cfg.threads, "reuse_output_buffers": True, "spin_after_run": cfg.spin_after_run}


def source_curve(sec: SecurityConfig, source_uri: str) -> dict[str, bytes] | None:
    """CURVE client keys for a ``zmq+`` source when ``security.curve`` is on (``None`` otherwise)."""
    if not sec.curve or not source_uri.startswith("zmq+"):
        return None
    missing = [k for k in ("client_secret_key", "frames_server_key") if not getattr(sec, k)]
    if missing:
        raise ConfigError(f"security.curve is on but security.{' and security.'.join(missing)} is not set for the "
                          f"frame source {source_uri}",
                          "give our client key pair (--curve-client-secret NAME.key_secret) and the frame sender's "
                          "public key (--curve-server-key SENDER.key); see docs/SECURITY.md")
    return client_curve(sec.client_secret_key, sec.frames_server_key)


def server_security(sec: SecurityConfig) -> CurveServer | None:
    """The publisher's CURVE server with its allow-list when ``security.curve`` is on."""
    if not sec.curve:
        return None
    if not sec.server_secret_key:
        raise ConfigError("security.curve is on but security.server_secret_key is not set",
                          "give the publisher's key pair (--curve-secret NAME.key_secret); see docs/SECURITY.md")
    if not sec.allowed_clients_dir and not sec.allowed_client_keys:
        raise ConfigError("security.curve is on but no client is allowed to subscribe",
                          "set security.allowed_clients_dir (--curve-allow DIR) to a folder of permitted clients' "
                          "NAME.key files")
    return CurveServer.from_files(sec.server_secret_key, sec.allowed_clients_dir, sec.allowed_client_keys,
                                  domain="medstream-publish")


def build_pipeline(cfg: RunConfig, observers: list[PipelineObserver] | None = None, context: Any = None,
                   security: Any = None) -> Pipeline:
    """Validate ``cfg`` and construct the pipeline (backend not yet loaded: call ``prepare()``).

    ``security`` (an object with ``apply_server(socket)``) overrides the CURVE server built from
    ``cfg.security``; the one in use is kept as ``pipeline.security`` (call its ``close()`` after the
    publisher's, if it has one).
    """
    model_path = resolve_model_path(cfg.model)
    contract = load_contract(model_path, cfg.contract)
    if security is None:
        security = server_security(cfg.security)
    check_bind_allowed(cfg.publish, encrypted=security is not None,
                       allow_insecure_remote=cfg.security.allow_insecure_remote, what="the overlay publisher")
    curve = source_curve(cfg.security, cfg.source)
    # The source URI comes from the operator (config or command line), so GStreamer pipelines are allowed here;
    # no network message ever reaches open_source.
    source = open_source(cfg.source, source_id=cfg.source_id, allow_pipeline_uris=True,
                         **({"curve": curve} if curve else {}))
    if getattr(source, "bind", False) is True:
        check_bind_allowed(getattr(source, "configured_endpoint", cfg.source), encrypted=curve is not None,
                           allow_insecure_remote=cfg.security.allow_insecure_remote, what="the frame source")
    backend_name, why = choose_backend(cfg.backend)
    backend = load_backend(backend_name, str(model_path), contract, **backend_options(cfg, backend_name))
    publisher = Publisher(cfg.publish, cfg.send_hwm, context=context, security=security)
    log.info(
        "medstream %s (commit %s) starting: config %s, model %s (sha256 %s, id %s), backend %s (%s), source %s, publish %s, "
        "python %s on %s",
        __version__, git_commit(), config_hash(cfg), model_path.name, sha256_file(model_path)[:12], contract.model_id,
        backend_name, why, cfg.source, publisher.bound_endpoint, platform.python_version(), platform.machine(),
        extra={"fields": {"event": "start", "version": __version__, "commit": git_commit(), "config_hash": config_hash(cfg),
                          "model": str(model_path), "backend": backend_name, "source": cfg.source,
                          "publish": publisher.bound_endpoint}},
    )
    # An observer that samples device telemetry (runtime.service) also feeds the status message.
    telemetry = next((o.telemetry for o in observers or [] if callable(getattr(o, "telemetry", None))), None)
    pipeline = Pipeline(source, backend, publisher, observers=observers, max_age_ms=cfg.max_age_ms,
                        render_rgba=cfg.render_rgba, roi=cfg.roi, status_interval_s=cfg.status_interval_s,
                        stall_timeout_s=cfg.stall_timeout_s, warmup_runs=cfg.warmup_runs, inject=cfg.inject,
                        telemetry=telemetry)
    pipeline.security = security
    return pipeline


__all__ = ["build_pipeline", "load_contract", "resolve_model_path", "write_json_atomic", "MedstreamError"]
