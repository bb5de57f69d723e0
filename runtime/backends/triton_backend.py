"""Remote inference on NVIDIA Triton Inference Server, behind the same Backend interface (issue 17).

The stream, the latest-frame policy, the accounting and the overlays stay on the edge box; only the
model call goes to Triton (``--backend triton --triton-url grpc://HOST:8001``). The pipeline's worker calls
:meth:`TritonBackend.infer` synchronously, as for a local backend; the receiver thread is separate, so a slow
round trip never stops frames being received (they are superseded in the one-frame mailbox, and counted).

What this module guarantees:

* **Every request has a deadline** (``request_timeout_ms``, derived from ``publish.max_age_ms`` by
  :func:`medstream.runtime.stream.assembly.backend_options`): twice the age limit, so a request merely slower
  than ``max_age_ms`` comes back and the pipeline drops it as ``stale`` at publish time, and only a request that
  has not come back by twice the limit is given up (``backend_error``, "no answer within N ms"). Without an age
  limit: 1000 ms.
* **An outage is normal.** A refused or lost connection raises :class:`~medstream.runtime.errors.BackendUnavailable`
  (the frame counts ``backend_error``, the status says ``backend_state: unreachable`` with the reason); while
  the server is down each frame is refused at once (no network wait), and a new connection is tried with
  backoff (0.1 s doubling to 2 s), so the stream resumes by itself within about 2 s of the server being back.
  Each attempt makes a new client: gRPC's own channel backoff grows to 120 s, ours is bounded.
* **The model on the server is the model the contract describes.** On every (re)connection the server's
  model metadata is checked against the contract (input name, data type and shape; output names), and, when
  the repository was written by ``medstream triton-repo`` and a local model file was given, the SHA-256 the
  repository recorded must match that file. A mismatch at start is refused; after a reconnection (someone
  swapped the model) every frame is dropped with the reason, never a silent wrong overlay.
* **System shared memory on the same host.** With the server on a loopback address (``triton_shared_memory:
  auto``) the input and output tensors go through POSIX shared memory registered with the server instead of
  the socket. A region used by a request that timed out is retired, never reused: the server may still write
  that request's answer into it later.
* **Latency breakdown.** ``last_stages_ms`` gives ``network`` (round trip minus server time),
  ``server_queue`` and ``server_compute``: the server's own figures, from its statistics endpoint, averaged over
  the last second (they are per model, so with several clients they include the others' requests). A
  background thread polls them with its own client once a second; the frame path never waits for them.

Data types and shapes come from the server's model metadata; ``tritonclient`` (BSD-3-Clause, extra
``medstream[triton]``) is imported only when this backend is used.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from medstream.runtime.backends.base import Backend
from medstream.runtime.contract import ModelContract
from medstream.runtime.errors import BackendError, BackendUnavailable, ConfigError, ContractError, require

log = logging.getLogger("medstream.backends.triton")

#: ``config.pbtxt`` parameters written by ``medstream triton-repo`` (export/triton_repo.py) and read here.
CONTRACT_PARAMETER = "medstream.contract"
SHA256_PARAMETER = "medstream.model_sha256"
SOURCE_PARAMETER = "medstream.source_model"

#: ``--model triton``: take the contract from the repository's ``config.pbtxt`` (no local model file).
FROM_REPOSITORY = "triton"

SCHEMES = {"grpc": ("grpc", False), "grpcs": ("grpc", True), "http": ("http", False), "https": ("http", True)}
DEFAULT_TIMEOUT_MS = 1000.0
RECONNECT_FIRST_S, RECONNECT_MAX_S = 0.1, 2.0
STATS_INTERVAL_S = 1.0
MAX_RETIRED_REGIONS = 16
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")
_TRITON_DTYPES = {"float32": "FP32", "float16": "FP16", "uint8": "UINT8"}
_region_ids = itertools.count()


@dataclass(frozen=True)
class TritonTarget:
    """Where the model is served and how to reach it (the config's ``model.triton_*`` fields)."""

    url: str
    model: str | None = None
    version: str = ""
    shared_memory: str = "auto"
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    auth_header: str | None = None
    auth_token_file: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in SCHEMES or not parts.hostname or parts.port is None:
            raise ConfigError(f"triton_url {self.url!r} is not grpc://HOST:PORT, grpcs://, http:// or https://HOST:PORT",
                              "give e.g. --triton-url grpc://127.0.0.1:8001 (gRPC) or http://127.0.0.1:8000 (HTTP)")
        if self.shared_memory not in ("auto", "system", "off"):
            raise ConfigError(f"triton_shared_memory {self.shared_memory!r} is not auto, system or off",
                              "use auto (shared memory when the server is on this host), system or off")
        if bool(self.auth_header) != bool(self.auth_token_file):
            raise ConfigError("triton_auth_header and triton_auth_token_file go together (the header's name, and "
                              "the file holding its value)",
                              "give both, e.g. --triton-auth-header triton-access-token --triton-auth-token-file "
                              "/etc/medstream/triton.token")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("triton_tls_cert and triton_tls_key go together (a client certificate and its key)",
                              "give both, or neither for server-only TLS")
        for name in ("tls_ca", "tls_cert", "tls_key", "auth_token_file"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise ConfigError(f"triton_{name} file {value} does not exist", f"check model.triton_{name}")
        if (self.tls_ca or self.tls_cert) and not self.tls:
            raise ConfigError(f"TLS files are given but triton_url {self.url} is not grpcs:// or https://",
                              "use grpcs://HOST:PORT (or https://) to turn TLS on")

    @property
    def protocol(self) -> str:
        return SCHEMES[urlsplit(self.url).scheme][0]

    @property
    def tls(self) -> bool:
        return SCHEMES[urlsplit(self.url).scheme][1]

    @property
    def address(self) -> str:
        """``host:port`` as tritonclient wants it (no scheme)."""
        return urlsplit(self.url).netloc

    @property
    def on_this_host(self) -> bool:
        return (urlsplit(self.url).hostname or "") in _LOOPBACK

    def describe(self) -> str:
        return f"{self.model or '?'}{'/' + self.version if self.version else ''} at {self.url}"

    def headers(self) -> dict[str, str] | None:
        """The auth header (read from its file each connection: a rotated token is picked up on reconnect)."""
        if not self.auth_header or not self.auth_token_file:
            return None
        token = Path(self.auth_token_file).read_text(encoding="utf-8").strip()
        return {self.auth_header: token}


def triton_target(section: Any) -> TritonTarget | None:
    """The target from the config's ``model`` section, or ``None`` unless its backend is ``triton``."""
    if getattr(section, "backend", None) != "triton":
        return None
    if not section.triton_url:
        raise ConfigError("backend triton needs the server's address, and none is given",
                          "add --triton-url grpc://HOST:8001 (or model.triton_url in the config)")
    return TritonTarget(url=section.triton_url, model=section.triton_model, version=section.triton_version or "",
                        shared_memory=section.triton_shared_memory, tls_ca=section.triton_tls_ca,
                        tls_cert=section.triton_tls_cert, tls_key=section.triton_tls_key,
                        auth_header=section.triton_auth_header, auth_token_file=section.triton_auth_token_file)


def _modules(protocol: str) -> Any:
    purpose = "the Triton backend (--backend triton)"
    require("tritonclient", "triton", purpose)
    return require(f"tritonclient.{protocol}", "triton", purpose)


def make_client(target: TritonTarget, timeout_s: float) -> Any:
    """A new tritonclient client for ``target`` (gRPC or HTTP, TLS when the scheme says so)."""
    mod = _modules(target.protocol)
    if target.protocol == "grpc":
        return mod.InferenceServerClient(target.address, ssl=target.tls, root_certificates=target.tls_ca,
                                         private_key=target.tls_key, certificate_chain=target.tls_cert)
    kwargs: dict[str, Any] = {"connection_timeout": timeout_s, "network_timeout": timeout_s}
    if target.tls:
        import ssl

        def context(*_args: Any, **_kwargs: Any) -> ssl.SSLContext:
            ctx = ssl.create_default_context(cafile=target.tls_ca)
            if target.tls_cert:
                ctx.load_cert_chain(target.tls_cert, target.tls_key)
            return ctx

        kwargs.update(ssl=True, ssl_context_factory=context)
    return mod.InferenceServerClient(target.address, **kwargs)


def _close(client: Any) -> None:
    try:
        client.close()
    except Exception:  # closing a client to a dead server may itself fail: nothing to do about it
        log.debug("closing the Triton client failed", exc_info=True)


def _status(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    try:
        return str(status() if callable(status) else status or "")
    except Exception:
        return ""


def _message(exc: BaseException) -> str:
    msg = getattr(exc, "message", None)
    try:
        text = msg() if callable(msg) else str(exc)
    except Exception:
        text = str(exc)
    return (text or type(exc).__name__).splitlines()[0][:300]


def _is_unreachable(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError):
        return True
    if isinstance(exc, OSError) and not isinstance(exc, TimeoutError):
        return True
    return _status(exc) in ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED")


def _is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, TimeoutError) or type(exc).__name__ in ("Timeout", "timeout"):
        return True
    return _status(exc) == "StatusCode.DEADLINE_EXCEEDED" or "timeout" in _message(exc).lower()


def _call(what: str, target: TritonTarget, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """A control call (health, metadata, config), with unreachable turned into BackendUnavailable."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        if _is_unreachable(exc) or _is_timeout(exc):
            raise BackendUnavailable(f"Triton server {target.url} is unreachable ({what}: {_message(exc)})",
                                     "start the server or check --triton-url and the network; medstream reconnects "
                                     "by itself") from None
        raise BackendError(f"Triton server {target.url}: {what} failed: {_message(exc)}",
                           "check --triton-model/--triton-version and the server's log") from None


def _json(value: Any) -> dict[str, Any]:
    """A tritonclient answer as JSON (gRPC returns protobuf unless asked; HTTP returns dicts)."""
    return value if isinstance(value, dict) else {}


def _get(client: Any, target: TritonTarget, method: str, timeout_s: float, **kwargs: Any) -> dict[str, Any]:
    fn = getattr(client, method)
    headers = target.headers()
    if target.protocol == "grpc":
        return _json(_call(method, target, fn, headers=headers, as_json=True, client_timeout=timeout_s, **kwargs))
    return _json(_call(method, target, fn, headers=headers, **kwargs))


def repository_parameters(config: dict[str, Any]) -> dict[str, str]:
    """``parameters`` of a model config (gRPC JSON nests it in ``config``) as plain strings."""
    cfg = config.get("config", config)
    out: dict[str, str] = {}
    for key, value in (cfg.get("parameters") or {}).items():
        out[key] = value.get("string_value", "") if isinstance(value, dict) else str(value)
    return out


def fetch_repository_contract(target: TritonTarget, timeout_s: float = 5.0) -> tuple[dict[str, Any], str | None]:
    """The medstream contract and model SHA-256 ``medstream triton-repo`` wrote into the served ``config.pbtxt``.

    Raises
    ------
    BackendUnavailable
        The server cannot be reached (at start this refuses the run: there is no contract to run with).
    ContractError
        The served model's config carries no medstream contract.
    """
    import json

    if not target.model:
        raise ConfigError("--model triton takes the contract from the server, but no model name is given",
                          "add --triton-model NAME (the folder name in the model repository)")
    client = make_client(target, timeout_s)
    try:
        config = _get(client, target, "get_model_config", timeout_s, model_name=target.model,
                      model_version=target.version)
    finally:
        _close(client)
    params = repository_parameters(config)
    raw = params.get(CONTRACT_PARAMETER)
    if not raw:
        raise ContractError(f"the model {target.describe()} has no '{CONTRACT_PARAMETER}' parameter in its "
                            "config.pbtxt, so medstream does not know its input, outputs and classes",
                            "write the repository with 'medstream triton-repo', or give the local model file with "
                            "--model M.onnx (its embedded contract is used)")
    try:
        contract = json.loads(raw)
    except ValueError as exc:
        raise ContractError(f"the '{CONTRACT_PARAMETER}' parameter of {target.describe()} is not JSON: {exc}",
                            "rewrite the repository with 'medstream triton-repo'") from None
    return contract, params.get(SHA256_PARAMETER) or None


@dataclass
class _Region:
    """One system shared-memory region (input or output) registered with the server."""

    name: str
    key: str
    size: int
    handle: Any


class TritonBackend(Backend):
    """Runs the model on a Triton Inference Server.

    Parameters
    ----------
    model_path
        The local model file the contract came from, or ``triton:NAME`` when it came from the repository.
    contract
        The contract decided by the model loader.
    target
        The server, model, version, TLS and auth settings.
    request_timeout_ms
        Deadline of one request (see the module docstring for how it is derived from ``max_age_ms``).
    model_sha256
        SHA-256 of the local model file; checked against the repository's record when both exist.
    """

    name = "triton"
    _measures_own_compute_time = True

    def __init__(self, model_path: str, contract: ModelContract, *, target: TritonTarget,
                 request_timeout_ms: float | None = None, model_sha256: str | None = None,
                 stats_interval_s: float = STATS_INTERVAL_S) -> None:
        super().__init__(model_path, contract)
        self.target = target
        self.model_name = target.model or contract.model_id
        self.timeout_s = (request_timeout_ms or DEFAULT_TIMEOUT_MS) / 1000.0
        self.model_sha256 = model_sha256
        self.device = "remote"
        self.last_stages_ms: dict[str, float] = {}
        self._client: Any = None
        self._mod: Any = None
        self._outputs: list[dict[str, Any]] = []
        self._input_dtype = _TRITON_DTYPES.get(contract.input.dtype, "FP32")
        self._down_reason: str | None = None
        self._next_attempt = 0.0
        self._backoff = RECONNECT_FIRST_S
        self._use_shm = target.shared_memory == "system" or (target.shared_memory == "auto" and target.on_this_host)
        self._shm_in: _Region | None = None
        self._shm_out: dict[str, _Region] = {}
        self._retired: list[_Region] = []
        self._stats_interval_s = stats_interval_s
        self._stats_stop = threading.Event()
        self._stats_thread: threading.Thread | None = None
        self._server_ms: tuple[float, float] | None = None  # (queue, compute) per request, last interval
        self.requests = 0

    # ------------------------------------------------------------------------------ lifecycle
    def _activate(self) -> None:
        """Connect and check the served model against the contract; a server that is down is not fatal here.

        A wrong model (a contract or file mismatch) is refused before the stream starts. An unreachable server
        is logged and the stream starts anyway: each frame counts ``backend_error`` and the status says
        ``unreachable`` until the server answers (a service must not crash-loop because its server restarts).
        """
        self._mod = _modules(self.target.protocol)
        try:
            self._connect()
        except BackendUnavailable as exc:
            self._mark_down(exc.what)
            log.warning("%s; the stream starts and frames count backend_error until it answers", exc.what)
        self._stats_stop.clear()
        self._stats_thread = threading.Thread(target=self._poll_statistics, name="triton-stats", daemon=True)
        self._stats_thread.start()

    def _deactivate(self) -> None:
        self._stats_stop.set()
        if self._stats_thread is not None:
            self._stats_thread.join(timeout=2 * self._stats_interval_s + 1)
            self._stats_thread = None
        self._release_regions(unregister=self._down_reason is None)
        if self._client is not None:
            _close(self._client)
            self._client = None

    def warm_up(self, runs: int = 3) -> None:
        """Warm-up round trips when the server is there; nothing (and no failure) while it is not."""
        if self._down_reason is not None:
            return
        try:
            super().warm_up(runs)
        except BackendError as exc:
            log.warning("warm-up on Triton failed: %s", exc.what)

    # ------------------------------------------------------------------------------ connection
    def _connect(self) -> None:
        """A new client; health, readiness and the model's metadata checked; shared memory registered."""
        if self._client is not None:
            self._release_regions(unregister=False)
            _close(self._client)
            self._client = None
        client = make_client(self.target, self.timeout_s)
        try:
            self._check_model(client)
        except Exception:
            _close(client)
            raise
        self._client = client
        if self._use_shm:
            self._register_regions()

    def _check_model(self, client: Any) -> None:
        t, timeout = self.target, max(self.timeout_s, 0.5)
        ready = _call("model readiness", t, client.is_model_ready, self.model_name, t.version,
                      headers=t.headers(), **({"client_timeout": timeout} if t.protocol == "grpc" else {}))
        if not ready:
            raise BackendUnavailable(f"Triton server {t.url} is up but model {self.model_name!r}"
                                     f"{' version ' + t.version if t.version else ''} is not ready",
                                     "check the model name (--triton-model) and the server's log (it may be loading)")
        meta = _get(client, t, "get_model_metadata", timeout, model_name=self.model_name, model_version=t.version)
        config = _get(client, t, "get_model_config", timeout, model_name=self.model_name, model_version=t.version)
        self._check_metadata(meta, config)

    def _check_metadata(self, meta: dict[str, Any], config: dict[str, Any]) -> None:
        spec, where = self.contract.input, f"model {self.model_name!r} on {self.target.url}"
        inputs = {i["name"]: i for i in meta.get("inputs", [])}
        outputs = {o["name"]: o for o in meta.get("outputs", [])}
        if spec.name not in inputs:
            raise ContractError(f"{where} has no input {spec.name!r} (it has {sorted(inputs)})",
                                "serve the model the contract describes (medstream triton-repo), or fix --triton-model")
        got = inputs[spec.name]
        if got.get("datatype") != self._input_dtype:
            raise ContractError(f"{where} input {spec.name!r} is {got.get('datatype')}, the contract says "
                                f"{spec.dtype} ({self._input_dtype})", "serve the model the contract describes")
        shape = [int(d) for d in got.get("shape", [])]
        expected = ([spec.channels, spec.height, spec.width] if spec.layout == "NCHW"
                    else [spec.height, spec.width, spec.channels])
        if len(shape) < 3 or any(g not in (-1, w) for g, w in zip(shape[-3:], expected, strict=True)):
            raise ContractError(f"{where} input {spec.name!r} has shape {shape}, the contract needs "
                                f"{expected} ({spec.layout}, batch first)", "serve the model the contract describes")
        missing = [o.name for o in self.contract.outputs if o.name not in outputs]
        if missing:
            raise ContractError(f"{where} has no output(s) {missing} (it has {sorted(outputs)})",
                                "serve the model the contract describes (medstream triton-repo)")
        recorded = repository_parameters(config).get(SHA256_PARAMETER)
        if recorded and self.model_sha256 and recorded.lower() != self.model_sha256.lower():
            raise ContractError(f"{where} was made from a different model file: the repository records SHA-256 "
                                f"{recorded[:16]}..., the local {Path(self.model_path).name} is "
                                f"{self.model_sha256[:16]}...",
                                "serve this model (medstream triton-repo --model FILE) or point --model at the file "
                                "the repository was made from")
        batched = int(config.get("config", config).get("max_batch_size", 0) or 0) > 0
        self._outputs = [{"name": o["name"], "datatype": o["datatype"],
                          "shape": [int(d) for d in o.get("shape", [])][1 if batched else 0:]}
                         for o in meta.get("outputs", []) if o["name"] in {c.name for c in self.contract.outputs}]

    def _mark_down(self, reason: str) -> None:
        if self._down_reason is None:
            self._backoff = RECONNECT_FIRST_S
        self._down_reason = reason
        self._next_attempt = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, RECONNECT_MAX_S)

    def _ensure_connected(self) -> None:
        """While down: refuse at once until the next attempt is due, then try a fresh connection."""
        if self._down_reason is None:
            return
        if time.monotonic() < self._next_attempt:
            raise BackendUnavailable(self._down_reason, "medstream reconnects by itself when the server is back")
        try:
            self._connect()
        except ContractError as exc:  # the server came back with another model: never run it
            self._mark_down(f"{exc.what} (after reconnecting)")
            raise BackendUnavailable(self._down_reason or exc.what, exc.fix) from None
        except BackendError as exc:
            self._mark_down(exc.what)
            raise BackendUnavailable(exc.what, "medstream reconnects by itself when the server is back") from None
        log.info("Triton server %s answers again (model %s)", self.target.url, self.model_name)
        self._down_reason = None

    # ------------------------------------------------------------------------------ shared memory
    def _register_regions(self) -> None:
        from tritonclient.utils import shared_memory as shm

        in_size = int(np.prod(self.input_shape())) * np.dtype(_np_dtype(self._input_dtype)).itemsize
        sizes = {o["name"]: int(np.prod([1, *o["shape"]])) * np.dtype(_np_dtype(o["datatype"])).itemsize
                 for o in self._outputs if all(d > 0 for d in o["shape"])}
        if len(sizes) != len(self._outputs):
            log.info("Triton: an output has a dynamic shape; tensors go over the socket, not shared memory")
            self._use_shm = False
            return
        made: list[_Region] = []
        try:
            for size in [in_size, *sizes.values()]:
                n = next(_region_ids)
                name = f"medstream_{os.getpid()}_{n}"
                handle = shm.create_shared_memory_region(name, f"/{name}", size)
                region = _Region(name, f"/{name}", size, handle)
                made.append(region)
                _call("shared memory registration", self.target, self._client.register_system_shared_memory,
                      name, f"/{name}", size, headers=self.target.headers())
        except Exception as exc:
            for region in made:
                self._destroy(region, unregister=True)
            if isinstance(exc, BackendUnavailable):
                raise
            log.warning("Triton: system shared memory is not usable (%s); tensors go over the socket",
                        exc.what if isinstance(exc, BackendError) else exc)
            self._use_shm = False
            return
        self._shm_in = made[0]
        self._shm_out = dict(zip(sizes, made[1:], strict=True))

    def _destroy(self, region: _Region, unregister: bool) -> None:
        from tritonclient.utils import shared_memory as shm

        if unregister and self._client is not None:
            try:
                self._client.unregister_system_shared_memory(region.name, headers=self.target.headers())
            except Exception:
                log.debug("unregistering %s failed", region.name, exc_info=True)
        try:
            shm.destroy_shared_memory_region(region.handle)
        except Exception:
            log.debug("destroying %s failed", region.name, exc_info=True)

    def _release_regions(self, unregister: bool) -> None:
        for region in [*([self._shm_in] if self._shm_in else []), *self._shm_out.values(), *self._retired]:
            self._destroy(region, unregister)
        self._shm_in, self._shm_out, self._retired = None, {}, []

    def _retire_regions(self) -> None:
        """After a request timed out: its answer may still be written into these regions; use new ones."""
        if self._shm_in is None:
            return
        self._retired += [self._shm_in, *self._shm_out.values()]
        self._shm_in, self._shm_out = None, {}
        if len(self._retired) > MAX_RETIRED_REGIONS * (1 + len(self._outputs)):
            log.warning("Triton: many requests timed out; tensors go over the socket from now on")
            self._release_regions(unregister=True)
            self._use_shm = False
            return
        try:
            self._register_regions()
        except BackendUnavailable as exc:
            self._mark_down(exc.what)

    # ------------------------------------------------------------------------------ inference
    def _infer(self, inputs: dict[str, Any]) -> dict[str, Any]:
        self._ensure_connected()
        name = self.contract.input.name
        x = np.ascontiguousarray(inputs[name])
        start = time.perf_counter_ns()
        try:
            outputs = self._request(name, x)
        except BackendError:
            raise
        except Exception as exc:
            raise self._classify(exc) from None
        wall_ms = (time.perf_counter_ns() - start) / 1e6
        self.requests += 1
        self._record_stages(wall_ms)
        return outputs

    def _request(self, name: str, x: np.ndarray) -> dict[str, Any]:
        mod, t = self._mod, self.target
        inp = mod.InferInput(name, list(x.shape), self._input_dtype)
        shm_ok = self._use_shm and self._shm_in is not None and x.nbytes == self._shm_in.size
        requested = []
        if shm_ok:
            from tritonclient.utils import shared_memory as shm

            shm.set_shared_memory_region(self._shm_in.handle, [x])
            inp.set_shared_memory(self._shm_in.name, x.nbytes)
            for o in self._outputs:
                out = mod.InferRequestedOutput(o["name"])
                out.set_shared_memory(self._shm_out[o["name"]].name, self._shm_out[o["name"]].size)
                requested.append(out)
        else:
            inp.set_data_from_numpy(x)
            requested = [mod.InferRequestedOutput(o["name"]) for o in self._outputs]
        kwargs: dict[str, Any] = {"model_version": t.version, "outputs": requested, "headers": t.headers(),
                                  # the server drops it from its queue past the deadline (queue policy permitting)
                                  "timeout": int(self.timeout_s * 1e6)}
        if t.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        result = self._client.infer(self.model_name, [inp], **kwargs)
        if not shm_ok:
            return {o["name"]: result.as_numpy(o["name"]) for o in self._outputs}
        from tritonclient.utils import shared_memory as shm

        out: dict[str, Any] = {}
        for o in self._outputs:
            meta = result.get_output(o["name"])  # gRPC: protobuf (its as_json gives None in 2.73); HTTP: a dict
            shape = [int(d) for d in (meta["shape"] if isinstance(meta, dict) else meta.shape)]
            out[o["name"]] = shm.get_contents_as_numpy(self._shm_out[o["name"]].handle, _np_dtype(o["datatype"]), shape)
        return out

    def _classify(self, exc: BaseException) -> BackendError:
        reason = _message(exc)
        if _is_timeout(exc):
            self._retire_regions()
            return BackendError(f"Triton server {self.target.url} gave no answer within "
                                f"{self.timeout_s * 1000:.0f} ms for model {self.model_name!r} ({reason})",
                                "the frame was dropped; the server is overloaded or the network slow (status shows "
                                "network/server_queue/server_compute); raise publish.max_age_ms or add server capacity")
        if _is_unreachable(exc):
            self._mark_down(f"Triton server {self.target.url} is unreachable ({reason})")
            assert self._down_reason is not None
            return BackendUnavailable(self._down_reason, "start the server or check the network; medstream "
                                      "reconnects by itself")
        if "shared memory" in reason.lower() and self._use_shm:  # the server restarted and forgot our regions
            self._mark_down(f"Triton server {self.target.url} lost this client's shared memory ({reason})")
            self._next_attempt = 0.0
            assert self._down_reason is not None
            return BackendUnavailable(self._down_reason, "medstream registers it again on the next frame")
        return BackendError(f"Triton inference of model {self.model_name!r} on {self.target.url} failed: {reason}",
                            "the frame was dropped; if this repeats, read the server's log")

    # ------------------------------------------------------------------------------ latency breakdown
    def _record_stages(self, wall_ms: float) -> None:
        server = self._server_ms
        if server is None:
            self.last_stages_ms = {}
            self.last_compute_ms = wall_ms
            return
        queue_ms, compute_ms = server
        self.last_compute_ms = compute_ms
        self.last_stages_ms = {"network": max(0.0, wall_ms - queue_ms - compute_ms), "server_queue": queue_ms,
                               "server_compute": compute_ms}

    def _poll_statistics(self) -> None:
        """Once a second: the server's queue and compute time per request over the last interval."""
        client, last = None, None
        while not self._stats_stop.wait(self._stats_interval_s):
            try:
                if client is None:
                    client = make_client(self.target, min(self.timeout_s, 1.0))
                stats = _get(client, self.target, "get_inference_statistics", 1.0, model_name=self.model_name,
                             model_version=self.target.version)
                now = _totals(stats)
            except Exception:
                if client is not None:
                    _close(client)
                client, last = None, None
                continue
            if last is not None and now[0] > last[0]:
                n = now[0] - last[0]
                self._server_ms = ((now[1] - last[1]) / n / 1e6, (now[2] - last[2]) / n / 1e6)
            last = now
        if client is not None:
            _close(client)

    def describe(self) -> dict[str, Any]:
        info = super().describe()
        info.update({"triton_url": self.target.url, "triton_model": self.model_name,
                     "triton_version": self.target.version or "latest", "protocol": self.target.protocol,
                     "shared_memory": bool(self._use_shm and self._shm_in is not None),
                     "request_timeout_ms": round(self.timeout_s * 1000, 1), "requests": self.requests})
        return info


def _totals(stats: dict[str, Any]) -> tuple[int, int, int]:
    """(successful requests, queue ns, compute ns) summed over the model's versions."""
    count = queue = compute = 0
    for model in stats.get("model_stats", []):
        inf = model.get("inference_stats", {})
        count += int(inf.get("success", {}).get("count", 0))
        queue += int(inf.get("queue", {}).get("ns", 0))
        compute += sum(int(inf.get(k, {}).get("ns", 0)) for k in ("compute_input", "compute_infer", "compute_output"))
    return count, queue, compute


def _np_dtype(triton_dtype: str) -> Any:
    from tritonclient.utils import triton_to_np_dtype

    return triton_to_np_dtype(triton_dtype)


__all__ = ["CONTRACT_PARAMETER", "FROM_REPOSITORY", "SHA256_PARAMETER", "SOURCE_PARAMETER", "TritonBackend",
           "TritonTarget", "fetch_repository_contract", "make_client", "repository_parameters", "triton_target"]
