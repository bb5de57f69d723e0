"""Run configuration: one validated object, from YAML and/or the command line.

Unknown keys are refused with the key named (a typo in a procedure-room config must not be silently
ignored), and every value is checked before anything starts: sockets are not bound, models not loaded,
until the whole configuration is known to be valid.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medstream.runtime.errors import ConfigError

DEFAULT_SOURCE = "synthetic://ultrasound?fps=30"
DEFAULT_MODEL = "ultrasound"
DEFAULT_PUBLISH = "tcp://127.0.0.1:5556"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InjectConfig(_Strict):
    """Fault and delay injection, for the benchmark harness and the fault-matrix tests only.

    ``delay_ms`` adds a sleep to a stage (``preprocess``, ``infer``, ``postprocess``, ``publish``);
    ``error_every`` makes every N-th inference raise; ``hang_at_seq``/``hang_s`` block one inference.
    Never set in production; the start-up log line says when it is.
    """

    delay_ms: dict[Literal["preprocess", "infer", "postprocess", "publish"], float] = Field(default_factory=dict)
    error_every: int | None = Field(default=None, gt=0)
    hang_at_seq: int | None = Field(default=None, ge=0)
    hang_s: float = Field(default=0.0, ge=0)

    @property
    def active(self) -> bool:
        return bool(self.delay_ms) or self.error_every is not None or self.hang_at_seq is not None


class SecurityConfig(_Strict):
    """Transport security (docs/SECURITY.md). Off by default: every default endpoint is loopback.

    With ``curve: true`` every socket the runtime opens uses ZeroMQ CURVE: the overlay/status
    publisher is a CURVE server (``server_secret_key``) that admits only the clients whose public keys
    are in ``allowed_clients_dir`` or ``allowed_client_keys``; a ``zmq+`` frame source is a CURVE
    client (``client_secret_key``) of the frame sender whose public key is ``frames_server_key``.
    Binding a non-loopback address (``tcp://0.0.0.0``, ``tcp://*``, a LAN address) without CURVE is
    refused unless ``allow_insecure_remote`` is true.
    """

    curve: bool = False
    server_secret_key: str | None = Field(default=None, description="our publisher's NAME.key_secret file")
    allowed_clients_dir: str | None = Field(default=None, description="folder of permitted clients' NAME.key files")
    allowed_client_keys: list[str] = Field(default_factory=list, description="permitted client keys: files or Z85 text")
    client_secret_key: str | None = Field(default=None, description="our key pair as a client of the frame sender")
    frames_server_key: str | None = Field(default=None, description="the frame sender's public key: file or Z85 text")
    allow_insecure_remote: bool = False


class RunConfig(_Strict):
    """Everything ``medstream run`` needs (see docs/CONFIG.md for each key)."""

    source: str = DEFAULT_SOURCE
    source_id: str | None = None
    model: str = DEFAULT_MODEL
    backend: Literal["auto", "onnxruntime", "onnxruntime-cuda", "tensorrt"] = "auto"
    publish: str = DEFAULT_PUBLISH
    threads: int | None = Field(default=None, gt=0, le=256, description="inference threads (ONNX Runtime intra-op)")
    spin_after_run: bool = Field(default=False, description="keep ONNX Runtime's threads spinning between frames "
                                 "(default off: they stop when each inference returns and leave the cores to the stream)")
    max_frames: int | None = Field(default=None, gt=0)
    duration: float | None = Field(default=None, gt=0)
    summary: str | None = None
    max_age_ms: float | None = Field(default=None, gt=0, description="drop frames older than this when the worker takes them")
    render_rgba: bool = False
    roi: tuple[int, int, int, int] | None = None
    contract: dict[str, Any] | None = None
    status_interval_s: float = Field(default=1.0, gt=0, le=1.0)
    stall_timeout_s: float = Field(default=1.0, gt=0, le=60)
    send_hwm: int = Field(default=4, ge=1, le=10_000)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    engine_cache: str | None = None
    no_build: bool = False
    warmup_runs: int = Field(default=3, ge=0, le=100)
    inject: InjectConfig = Field(default_factory=InjectConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)

    @field_validator("publish")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if not v.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError("must be a ZeroMQ endpoint such as tcp://127.0.0.1:5556 or ipc:///run/medstream/overlay")
        return v


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read YAML (optional) and apply command-line overrides (``None`` values are ignored).

    Raises
    ------
    ConfigError
        Naming the file, each offending key and what is wrong with it.
    """
    data: dict[str, Any] = {}
    where = "command line"
    if path is not None:
        where = str(path)
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist", "check the --config path")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}", "fix the YAML syntax at the line shown") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of keys, not a {type(loaded).__name__}",
                              "see docs/CONFIG.md for an example")
        data.update(loaded)
        where = f"config file {p}"
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(root)"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key '{key}'")
            else:
                problems.append(f"'{key}': {err['msg']}")
        raise ConfigError(f"{where} is invalid: " + "; ".join(problems),
                          "fix or remove those keys (the valid keys are listed in docs/CONFIG.md); nothing was started") from None
