"""Assemble a :class:`~medstream.runtime.stream.pipeline.Pipeline` from a :class:`~medstream.runtime.config.RunConfig`.

Order matters: the model file, its contract, the backend choice and the source URI are all checked
*before* any socket is bound or thread started, so a bad configuration is refused with nothing left
half-running; and if binding fails, what was already opened is closed again.
"""

from __future__ import annotations

import hashlib
import logging
import platform
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from medstream.runtime.backends import load_backend
from medstream.runtime.backends.triton_backend import triton_target
from medstream.runtime.config import ModelSection, RunConfig, SecurityConfig
from medstream.runtime.errors import ConfigError
from medstream.runtime.models.loader import LoadedModel, load_model
from medstream.runtime.observers import PipelineObserver
from medstream.runtime.security import CurveServer, check_bind_allowed, client_curve
from medstream.runtime.sinks import ZMQ_SCHEMES, open_sinks, scheme_of
from medstream.runtime.sources import open_source
from medstream.runtime.stream.heads import ModelHead
from medstream.runtime.stream.pipeline import Pipeline, StreamOptions
from medstream.runtime.version import __version__, git_commit

log = logging.getLogger("medstream.app")


def config_hash(cfg: RunConfig) -> str:
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:12]


def backend_options(model: ModelSection, backend: str, max_age_ms: float | None = None) -> dict[str, Any]:
    """The runner's options from the config's ``model`` section, for the backend the loader chose.

    ``triton``: each request's deadline is ``model.triton_timeout_ms`` or, derived from ``publish.max_age_ms``,
    twice the age limit: an answer later than ``max_age_ms`` is dropped as ``stale`` at publish time anyway, and
    one not back by twice the limit is given up as ``backend_error`` (docs/TRITON.md).
    """
    if backend == "triton":
        timeout = model.triton_timeout_ms or (2.0 * max_age_ms if max_age_ms else None)
        return {"request_timeout_ms": timeout}
    if backend == "tensorrt":
        opts: dict[str, Any] = {"no_build": model.no_build}
        if model.engine_cache:
            opts["cache_dir"] = model.engine_cache
        return opts
    if backend == "openvino":  # the pipeline consumes each output before the next inference
        return {"threads": model.threads, "precision": model.precision, "reuse_output_buffers": True}
    # The pipeline consumes each output before the next inference, so the backend may reuse buffers.
    return {"intra_op_threads": model.threads, "reuse_output_buffers": True, "spin_after_run": model.spin_after_run}


def source_curve(sec: SecurityConfig, source_uri: str) -> dict[str, bytes] | None:
    """CURVE client keys for a ``zmq+`` source when ``security.curve`` is on (``None`` otherwise)."""
    if not sec.curve or not source_uri.startswith("zmq+"):
        return None
    missing = [name for name, value in (("client_secret_key", sec.client_secret_key),
                                        ("frames_server_key", sec.frames_server_key)) if not value]
    if missing:
        raise ConfigError(f"security.curve is on but security.{' and security.'.join(missing)} is not set for the "
                          f"frame source {source_uri}",
                          "give our client key pair (--curve-client-secret NAME.key_secret) and the frame sender's "
                          "public key (--curve-server-key SENDER.key); see docs/SECURITY.md")
    assert sec.client_secret_key is not None and sec.frames_server_key is not None
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


def sink_options(cfg: RunConfig, endpoint: str, security: Any, context: Any) -> dict[str, Any]:
    """Each sink's options; a ZeroMQ endpoint is checked against the non-loopback rule here, before it binds."""
    if scheme_of(endpoint) in ZMQ_SCHEMES:
        check_bind_allowed(endpoint, encrypted=security is not None,
                           allow_insecure_remote=cfg.security.allow_insecure_remote, what="the overlay publisher")
        return {"send_hwm": cfg.publish.send_hwm, "context": context, "security": security}
    return {"allow_insecure_remote": cfg.security.allow_insecure_remote}


def stream_options(cfg: RunConfig) -> StreamOptions:
    sources = cfg.sources
    return StreamOptions(max_age_ms=cfg.publish.max_age_ms, render_rgba=cfg.publish.render_rgba, roi=sources[0].roi,
                         status_interval_s=cfg.publish.status_interval_s,
                         stall_timeout_s=min(s.stall_timeout_s for s in sources), warmup_runs=cfg.model.warmup_runs,
                         inject=cfg.inject, max_batch=cfg.model.max_batch, batch_wait_ms=cfg.model.batch_wait_ms,
                         stream_rois=tuple(s.roi for s in sources),
                         low_confidence_below=cfg.model.low_confidence_below)


def build_stream(cfg: RunConfig, *, observers: list[PipelineObserver] | None = None,
                 telemetry: Callable[[], dict[str, Any]] | None = None, context: Any = None,
                 security: Any = None) -> Pipeline:
    """Check ``cfg`` and construct the pipeline (backend not yet activated: ``prepare()`` or ``run()`` does).

    Use it as a context manager so every resource is closed::

        with build_stream(cfg) as pipeline:
            summary = pipeline.run()

    ``security`` (an object with ``apply_server(socket)`` and ``close()``) replaces the CURVE server built
    from ``cfg.security``; ``telemetry`` gives the latest device sample for status messages.
    """
    model = load_model(cfg.model.file, contract=cfg.model.contract, backend=cfg.model.backend, sha256=cfg.model.sha256,
                       precision=cfg.model.precision, triton=triton_target(cfg.model))
    with ExitStack() as undo:  # whatever is opened here is closed again if a later check fails
        if security is None:
            security = server_security(cfg.security)
            if security is not None:
                undo.callback(security.close)
        sources = [_open_checked_source(cfg, section) for section in cfg.sources]
        backend = load_backend(model, **backend_options(cfg.model, model.backend, cfg.publish.max_age_ms))
        heads = [_model_head(cfg, section) for section in cfg.models[1:]]
        publisher = open_sinks(cfg.publish.endpoints, lambda endpoint: sink_options(cfg, endpoint, security, context))
        if len(sources) > 1:
            for sink in publisher.sinks:
                sink.topic_per_stream = True
        undo.pop_all()
    _log_start(cfg, model, publisher.bound_endpoint)
    return Pipeline(sources if len(sources) > 1 else sources[0], backend, publisher, security=security,
                    options=stream_options(cfg), observers=observers, telemetry=telemetry, heads=heads)


def _model_head(cfg: RunConfig, section: Any) -> ModelHead:
    """A further model (``models:`` after the first), loaded like the primary: checked before anything binds."""
    loaded = load_model(section.file, contract=section.contract, backend=section.backend, sha256=section.sha256,
                        precision=section.precision, triton=triton_target(section))
    runner = load_backend(loaded, **backend_options(section, loaded.backend, cfg.publish.max_age_ms))
    return ModelHead(runner, low_confidence_below=section.low_confidence_below)


def _open_checked_source(cfg: RunConfig, section: Any) -> Any:
    """One source from its config section, checked (preflight, non-loopback rule) before anything binds."""
    curve = source_curve(cfg.security, section.uri)
    # The source URI comes from the operator (config or command line), so GStreamer pipelines are allowed
    # here; no network message ever reaches open_source.
    source = open_source(section.uri, source_id=section.id, allow_pipeline_uris=True,
                         **({"curve": curve} if curve else {}))
    source.preflight()
    listen = source.listen_endpoint()
    if listen is not None:
        check_bind_allowed(listen, encrypted=curve is not None,
                           allow_insecure_remote=cfg.security.allow_insecure_remote, what="the frame source")
    return source


def _log_start(cfg: RunConfig, model: LoadedModel, publish: str) -> None:
    log.info(
        "medstream %s (commit %s) starting: config %s, model %s (sha256 %s, id %s, %s), backend %s (%s), source %s, "
        "publish %s, python %s on %s",
        __version__, git_commit(), config_hash(cfg), model.path.name, model.sha256()[:12], model.contract.model_id,
        model.variant, model.backend, model.backend_reason, " + ".join(s.uri for s in cfg.sources), publish,
        platform.python_version(),
        platform.machine(),
        extra={"fields": {"event": "start", "version": __version__, "commit": git_commit(), "config_hash": config_hash(cfg),
                          "model": str(model.path), "run_path": str(model.run_path), "backend": model.backend,
                          "source": [s.uri for s in cfg.sources], "publish": publish}},
    )


__all__ = ["backend_options", "build_stream", "config_hash", "server_security", "source_curve", "stream_options"]
