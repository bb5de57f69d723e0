"""Run configuration: one validated object in sections that read like the flow, from YAML and/or flags.

::

    source:   where frames come from (URI, stream name, stall detection, the region the model sees)
    model:    the model file, the backend and how it runs
    publish:  where overlays and status go, and how old an overlay may be
    service:  Prometheus metrics
    run:      how long to run and where the summary goes
    security: CURVE (docs/SECURITY.md)
    inject:   fault/delay injection (tests and benchmarks only)

Files written for the first release used flat keys (``source: URI``, ``threads: 2``,
``publish: tcp://...``); they keep working: every flat key maps to one field of a section
(:data:`FLAT_KEYS`), and errors name the key as the file wrote it. Command-line flags arrive as flat
keys through the same map.

Unknown keys are refused with the key named (a typo in a procedure-room config must not be silently
ignored), and every value is checked before anything starts: sockets are not bound, models not loaded,
until the whole configuration is known to be valid. docs/CONFIG.md is generated from these models
(``python -m medstream.runtime.config --markdown``) and a test keeps it in step.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medstream.runtime.errors import ConfigError

DEFAULT_SOURCE = "synthetic://ultrasound?fps=30"
DEFAULT_MODEL = "ultrasound"
DEFAULT_PUBLISH = "tcp://127.0.0.1:5556"


#: A config file is a few KiB; anything past this is refused before it is parsed.
MAX_CONFIG_BYTES = 256 * 1024


class _Strict(BaseModel):
    """Unknown keys refused; no silent coercion (``threads: true`` is not 1, ``render_rgba: 'yes'`` is not true);
    no NaN or infinity (``max_age_ms: .inf`` would turn the age check off)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class SourceSection(_Strict):
    """Where frames come from (README "Sources" lists the URIs)."""

    uri: str = Field(default=DEFAULT_SOURCE, description="source URI: synthetic://ultrasound, zmq+tcp://HOST:PORT, "
                     "file://clip.mp4, v4l2:///dev/video0, gst://PIPELINE")
    id: str | None = Field(default=None, description="stream name carried in every message (default: from the source)")
    stall_timeout_s: float = Field(default=1.0, gt=0, le=60, description="no frame for this long: status says 'stalled'")
    roi: tuple[int, int, int, int] | None = Field(
        default=None, strict=False, description="[x, y, w, h] in frame pixels: the part of each frame the model sees (e.g. the "
        "B-mode area of a screen grab); overlays stay in full-frame coordinates")

    @field_validator("roi")
    @classmethod
    def _roi(cls, v: tuple[int, int, int, int] | None) -> tuple[int, int, int, int] | None:
        if v is not None:
            x, y, w, h = v
            if x < 0 or y < 0 or w <= 0 or h <= 0:
                raise ValueError(f"must be [x, y, w, h] with x, y >= 0 and w, h > 0 (got {list(v)})")
        return v


class ModelSection(_Strict):
    """The model and how it runs (docs/MODEL_CONTRACT.md for ``contract``)."""

    file: str = Field(default=DEFAULT_MODEL, description="bundled name (ultrasound, fluoroscopy) or path to an "
                      ".onnx file, or a .engine built by 'medstream build'")
    backend: Literal["auto", "onnxruntime", "onnxruntime-cuda", "tensorrt", "openvino", "triton"] = Field(
        default="auto", description="auto picks TensorRT, then ONNX Runtime CUDA, then the CPU: OpenVINO on an x86-64 CPU "
        "when the [openvino] extra is installed, else ONNX Runtime ('medstream doctor' says why); triton: a remote "
        "Triton Inference Server (model.triton_url; docs/TRITON.md), never picked by auto")
    precision: Literal["auto", "fp32", "bf16", "int8"] = Field(
        default="auto", description="OpenVINO: int8 runs the calibrated M.int8.onnx beside M.onnx; bf16 the FP32 file "
        "in bf16 (CPUs with AMX/AVX512-BF16); fp32 exactly; auto: an INT8 file as int8, an FP32 file in bf16 where the "
        "CPU has it, else fp32. Other backends: auto only (the file decides)")
    threads: int | None = Field(default=None, gt=0, le=256, description="inference threads (ONNX Runtime intra-op; "
                                "default: every usable core)")
    spin_after_run: bool = Field(default=False, description="keep ONNX Runtime's threads spinning between frames "
                                 "(default off: they stop when each inference returns and leave the cores to the stream)")
    warmup_runs: int = Field(default=3, ge=0, le=100, description="inferences on zeros before the first frame")
    max_batch: int = Field(default=0, ge=0, le=64, description="with several streams: frames per inference "
                           "(0: one per stream when the model's batch axis is dynamic; static models run one by one)")
    batch_wait_ms: float = Field(default=0.0, ge=0, le=50, description="with several streams: once one frame "
                                 "waits, wait up to this long for the other streams to fill a batch")
    engine_cache: str | None = Field(default=None, description="TensorRT engine cache folder "
                                     "(default ~/.cache/medstream/engines)")
    no_build: bool = Field(default=False, description="TensorRT: refuse to build a missing engine")
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$", description="pin the model file: refuse "
                               "to start unless its SHA-256 is this (bundled models are always checked)")
    contract: dict[str, Any] | None = Field(default=None, description="fills in or overrides the model's "
                                            "embedded contract (docs/MODEL_CONTRACT.md)")
    low_confidence_below: float | None = Field(default=0.5, ge=0, le=1, description="flag an overlay "
                                               "low_confidence (and count it in status) when its confidence, the "
                                               "mean probability of the model's answer, is under this; null: never")
    triton_url: str | None = Field(default=None, description="backend triton: the server, grpc://HOST:8001 or "
                                   "http://HOST:8000 (grpcs://, https:// for TLS)")
    triton_model: str | None = Field(default=None, description="backend triton: the model's name in the server's "
                                     "repository (default: the contract's model_id)")
    triton_version: str | None = Field(default=None, description="backend triton: the model version (default: the "
                                       "server's version policy, normally the latest)")
    triton_timeout_ms: float | None = Field(default=None, gt=0, le=60_000, description="backend triton: deadline of "
                                            "one request (default: 2 x publish.max_age_ms, else 1000)")
    triton_shared_memory: Literal["auto", "system", "off"] = Field(
        default="auto", description="backend triton: tensors through system shared memory (auto: when the server "
        "is on a loopback address)")
    triton_tls_ca: str | None = Field(default=None, description="backend triton: CA certificate (PEM) that signed "
                                      "the server's TLS certificate (grpcs:// or https://)")
    triton_tls_cert: str | None = Field(default=None, description="backend triton: client certificate (PEM) for "
                                        "mutual TLS")
    triton_tls_key: str | None = Field(default=None, description="backend triton: the client certificate's key")
    triton_auth_header: str | None = Field(default=None, description="backend triton: name of the header the "
                                           "server requires (e.g. triton-access-token, Authorization)")
    triton_auth_token_file: str | None = Field(default=None, description="backend triton: file holding that "
                                               "header's value (kept out of the config and the logs)")


class PublishSection(_Strict):
    """Where overlays and status go."""

    endpoints: list[str] = Field(default_factory=lambda: [DEFAULT_PUBLISH], min_length=1, description=
                                 "where overlays and status go, one sink each: a ZeroMQ endpoint the PUB socket "
                                 "binds (tcp://, ipc://) or an OpenIGTLink server for 3D Slicer (igtl://HOST:PORT, "
                                 "docs/IGTLINK.md); a single endpoint may be given as text")
    send_hwm: int = Field(default=4, ge=1, le=10_000, description="overlays queued per slow subscriber before the "
                          "oldest are dropped")
    status_interval_s: float = Field(default=1.0, gt=0, le=1.0, description="status message period (at most 1 s)")
    max_age_ms: float | None = Field(default=None, gt=0, description="drop frames older than this (capture to "
                                     "start of work) instead of processing them")
    render_rgba: bool = Field(default=False, description="add an RGBA render of the mask to each overlay")

    @field_validator("endpoints", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: list[str]) -> list[str]:
        from medstream.runtime.sinks import check_endpoint

        for endpoint in v:
            check_endpoint(endpoint)
        if len(set(v)) != len(v):
            raise ValueError(f"lists an endpoint twice: {v}")
        return v


class ServiceSection(_Strict):
    """Running as a service (systemd/README.md)."""

    metrics_port: int | None = Field(default=None, ge=0, le=65535, description="serve Prometheus metrics on this "
                                     "port (off by default)")
    metrics_host: str = Field(default="127.0.0.1", description="address of the metrics endpoint")


class RunSection(_Strict):
    """How long to run, and what to leave behind."""

    max_frames: int | None = Field(default=None, gt=0, description="stop after receiving N frames")
    duration: float | None = Field(default=None, gt=0, description="stop after S seconds")
    summary: str | None = Field(default=None, description="write a JSON summary (counters, latency) here at exit")


class InjectConfig(_Strict):
    """Fault and delay injection, for the benchmark harness and the fault-matrix tests only.

    ``delay_ms`` adds a sleep to a stage (``preprocess``, ``infer``, ``postprocess``, ``publish``);
    ``error_every`` makes every N-th inference raise; ``hang_at_seq``/``hang_s`` block one inference.
    Never set in production; the start-up log line says when it is.
    """

    delay_ms: dict[Literal["preprocess", "infer", "postprocess", "publish"], float] = Field(
        default_factory=dict, description="sleep added to a stage, in ms")
    error_every: int | None = Field(default=None, gt=0, description="every N-th inference raises")
    hang_at_seq: int | None = Field(default=None, ge=0, description="the inference of this frame blocks for hang_s")
    hang_s: float = Field(default=0.0, ge=0, description="how long hang_at_seq blocks")

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

    curve: bool = Field(default=False, description="encrypt and authenticate every socket (ZeroMQ CURVE)")
    server_secret_key: str | None = Field(default=None, description="our publisher's NAME.key_secret file")
    allowed_clients_dir: str | None = Field(default=None, description="folder of permitted clients' NAME.key files")
    allowed_client_keys: list[str] = Field(default_factory=list, description="permitted client keys: files or Z85 text")
    client_secret_key: str | None = Field(default=None, description="our key pair as a client of the frame sender")
    frames_server_key: str | None = Field(default=None, description="the frame sender's public key: file or Z85 text")
    allow_insecure_remote: bool = Field(default=False, description="allow a non-loopback bind without CURVE "
                                        "(isolated networks only)")


class RunConfig(_Strict):
    """Everything ``medstream run`` needs, in the order frames flow (docs/CONFIG.md lists each key)."""

    source: SourceSection = Field(default_factory=SourceSection)
    streams: list[SourceSection] = Field(default_factory=list, max_length=16)
    """Several sources in one run, one model for all (each entry is a ``source:`` section; give each an ``id``)."""
    model: ModelSection = Field(default_factory=ModelSection)
    models: list[ModelSection] = Field(default_factory=list, max_length=8)
    """Several models on the same frame (each entry a ``model:`` section): the first is the stream's primary model
    (it becomes ``model``); each further one publishes its own overlay for the same frame, counted under ``models``."""
    publish: PublishSection = Field(default_factory=PublishSection)
    service: ServiceSection = Field(default_factory=ServiceSection)
    run: RunSection = Field(default_factory=RunSection)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    inject: InjectConfig = Field(default_factory=InjectConfig)

    @field_validator("streams")
    @classmethod
    def _distinct_ids(cls, v: list[SourceSection]) -> list[SourceSection]:
        ids = [s.id for s in v]
        if v and (None in ids or len(set(ids)) != len(ids)):
            raise ValueError(f"every stream needs its own id (got {ids}): overlays, status and topics are told "
                             "apart by it")
        return v

    @model_validator(mode="after")
    def _primary_model(self) -> RunConfig:
        if self.models:
            # Keys given for `model` (a flag such as --threads, or model.* in the file) apply to the primary.
            overrides = {k: getattr(self.model, k) for k in self.model.model_fields_set} \
                if "model" in self.model_fields_set else {}
            if "file" in overrides and overrides["file"] != self.models[0].file:
                raise ValueError("give either 'model' or 'models', not both (the first of 'models' is the primary)")
            self.models[0] = self.models[0].model_copy(update=overrides)
            self.model = self.models[0]
        return self

    @property
    def sources(self) -> list[SourceSection]:
        """The run's sources: ``streams`` when given, else the one ``source``."""
        return list(self.streams) or [self.source]


#: First-release flat key (and command-line flag name) -> (section, field).
FLAT_KEYS: dict[str, tuple[str, str]] = {
    "source": ("source", "uri"), "source_id": ("source", "id"), "stall_timeout_s": ("source", "stall_timeout_s"),
    "roi": ("source", "roi"),
    "model": ("model", "file"), "backend": ("model", "backend"), "threads": ("model", "threads"),
    "precision": ("model", "precision"),
    "spin_after_run": ("model", "spin_after_run"), "warmup_runs": ("model", "warmup_runs"),
    "max_batch": ("model", "max_batch"), "batch_wait_ms": ("model", "batch_wait_ms"),
    "engine_cache": ("model", "engine_cache"), "no_build": ("model", "no_build"), "contract": ("model", "contract"),
    "low_confidence_below": ("model", "low_confidence_below"),
    "triton_url": ("model", "triton_url"), "triton_model": ("model", "triton_model"),
    "triton_version": ("model", "triton_version"), "triton_timeout_ms": ("model", "triton_timeout_ms"),
    "triton_shared_memory": ("model", "triton_shared_memory"), "triton_tls_ca": ("model", "triton_tls_ca"),
    "triton_tls_cert": ("model", "triton_tls_cert"), "triton_tls_key": ("model", "triton_tls_key"),
    "triton_auth_header": ("model", "triton_auth_header"),
    "triton_auth_token_file": ("model", "triton_auth_token_file"),
    "publish": ("publish", "endpoints"), "send_hwm": ("publish", "send_hwm"),
    "status_interval_s": ("publish", "status_interval_s"), "max_age_ms": ("publish", "max_age_ms"),
    "render_rgba": ("publish", "render_rgba"),
    "metrics_port": ("service", "metrics_port"), "metrics_host": ("service", "metrics_host"),
    "max_frames": ("run", "max_frames"), "duration": ("run", "duration"), "summary": ("run", "summary"),
}
_SECTIONS = tuple(RunConfig.model_fields)


def _sectioned(data: dict[str, Any], renamed: dict[tuple[str, str], str]) -> dict[str, Any]:
    """Move flat keys into their sections (a section given as a mapping stays one). Records renames for errors."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in _SECTIONS and (isinstance(value, dict) or key not in FLAT_KEYS):
            section = out.setdefault(key, {})
            if isinstance(section, dict) and isinstance(value, dict):
                section.update(value)
            else:
                out[key] = value
            continue
        if key in FLAT_KEYS:
            section_name, field = FLAT_KEYS[key]
            section = out.setdefault(section_name, {})
            if isinstance(section, dict):
                section[field] = value
                renamed[(section_name, field)] = key
            continue
        out[key] = value  # unknown: validation names it
    return out


def _read_yaml(p: Path) -> Any:
    """The YAML at ``p``: a regular UTF-8 file of at most MAX_CONFIG_BYTES, without aliases, or a ConfigError."""
    if p.is_dir():
        raise ConfigError(f"config path {p} is a directory, not a file", "give the path of the YAML file itself")
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist", "check the --config path")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config file {p} cannot be read: {exc.strerror or exc}", "check its permissions") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {p} is {len(raw)} bytes, more than the {MAX_CONFIG_BYTES} a config may be",
                          "check it is the right file; a medstream config is a few KiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {p} is not UTF-8 text (byte {exc.start} is 0x{raw[exc.start]:02x})",
                          "save it as UTF-8 (most editors: 'Save with encoding')") from None
    try:
        # Aliases are refused before anything is built: a 478-byte file of nested aliases expands to
        # hundreds of MB ("billion laughs"). A config never needs them.
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                mark = event.start_mark
                raise ConfigError(f"config file {p} uses a YAML alias (*{event.anchor}) at line {mark.line + 1}",
                                  "write the value out instead of referring to an anchor; aliases are not accepted")
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}", "fix the YAML syntax at the line shown") from None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and key != "contract":
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read YAML (optional) and apply command-line overrides (``None`` values are ignored).

    Both may use sections or the flat first-release keys (:data:`FLAT_KEYS`).

    Raises
    ------
    ConfigError
        Naming the file, each offending key (as written) and what is wrong with it.
    """
    data: dict[str, Any] = {}
    where = "command line"
    renamed: dict[tuple[str, str], str] = {}
    if path is not None:
        where = str(path)
        p = Path(path)
        loaded = _read_yaml(p)
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping of keys, not a {type(loaded).__name__}",
                              "see docs/CONFIG.md for an example")
        data = _sectioned(loaded, renamed)
        where = f"config file {p}"
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    data = _merge(data, _sectioned(flags, renamed))
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            key = ".".join(loc) or "(root)"
            if len(loc) >= 2 and (loc[0], loc[1]) in renamed:
                key = ".".join([renamed[(loc[0], loc[1])], *loc[2:]])
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown key '{key}'")
            else:
                problems.append(f"'{key}': {err['msg']}")
        raise ConfigError(f"{where} is invalid: " + "; ".join(problems),
                          "fix or remove those keys (the valid keys are listed in docs/CONFIG.md); nothing was started") from None


# ------------------------------------------------------------------------------------- docs/CONFIG.md
def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "")
    for noise in ("<class '", "'>"):
        text = text.replace(noise, "")
    return text.replace("NoneType", "null").replace(" | ", " or ")


def config_reference_markdown() -> str:
    """docs/CONFIG.md: every key by section, its type, default and meaning, and a full example."""
    lines = ["# medstream run configuration", "",
             "Generated from `runtime/config.py` by `python -m medstream.runtime.config --markdown > docs/CONFIG.md`;",
             "a test fails when the two differ. `medstream run --config FILE.yaml` reads a file like the example",
             "below; command-line flags override it; unknown keys are refused. Files with the first release's flat",
             "keys (`source: URI`, `threads: 2`, `publish: tcp://...`) still load: the table at the end maps them.", ""]
    example: dict[str, Any] = {}
    for section, info in RunConfig.model_fields.items():
        model = info.annotation
        if section == "models":
            lines += ["## `models`: several models on the same frame", "",
                      "A list of `model:` sections (keys as above). The first is the primary model (it replaces "
                      "`model`); each further model runs on the same freshest frame after it and publishes its own "
                      "overlay (same `seq`, `t_capture_ns` and `source_id`, its own `model_id`); its outcomes and "
                      "latency are counted under `models` in the status and the summary.", ""]
            example[section] = []
            continue
        if section == "streams":
            lines += ["## `streams`: several sources in one run, one model for all", "",
                      "A list of `source:` sections (keys as above), each with its own `id`; when given, `source` is "
                      "not used. Each stream keeps its own slot, accounting, status and topics (`overlay/<id>`, "
                      "`status/<id>`); frames of several streams share one inference when the model's batch axis is "
                      "dynamic (`model.max_batch`, `model.batch_wait_ms`).", ""]
            example[section] = []
            continue
        doc = (model.__doc__ or "").strip().splitlines()[0]
        lines += [f"## `{section}`: {doc}", "", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        example[section] = {}
        for name, field in model.model_fields.items():
            default = field.get_default(call_default_factory=True)
            shown = "null" if default is None else yaml.safe_dump(default, default_flow_style=True).strip()
            shown = shown.removesuffix("\n...").removesuffix(" ...")
            lines.append(f"| `{section}.{name}` | `{_type_name(field.annotation)}` | `{shown}` | "
                         f"{(field.description or '').replace('|', '/')} |")
            example[section][name] = list(default) if isinstance(default, tuple) else default
        lines.append("")
    lines += ["## Full example (the built-in default, written out: `runtime/default.yaml`)", "", "```yaml",
              yaml.safe_dump(example, sort_keys=False).rstrip(), "```", "",
              "## First-release flat keys", "", "| flat key / flag | section key |", "| --- | --- |"]
    lines += [f"| `{flat}` | `{s}.{f}` |" for flat, (s, f) in FLAT_KEYS.items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - a generator, checked by tests/runtime/test_config_docs.py
    if sys.argv[1:] == ["--markdown"]:
        sys.stdout.write(config_reference_markdown())
    else:
        sys.stderr.write("usage: python -m medstream.runtime.config --markdown > docs/CONFIG.md\n")
        sys.exit(2)
