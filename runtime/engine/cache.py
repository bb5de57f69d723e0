"""The engine cache: one TensorRT engine per (model, TensorRT version, GPU, precision, DLA core).

A TensorRT engine is only valid for the exact TensorRT version and GPU model it was built on; loading
one built elsewhere fails at best and misbehaves at worst. So every engine is stored with a JSON
manifest beside it that records those facts, its own size and SHA-256, and the model contract, and
an engine is loaded only when the manifest exists, matches the current device and the asked-for
build, and the engine bytes hash to what the manifest says. Anything else is refused with the
reason (``EngineCheck.reason``), and the caller rebuilds or, with ``--no-build``, stops before the
stream starts: never a crash mid-stream.

Layout: ``<root>/<onnx sha256[:16]>/<precision>[-dla<N>]-<key digest>.engine`` and ``.json``.
The root is ``$MEDSTREAM_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/medstream/engines``, else
``~/.cache/medstream/engines``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medstream.runtime.contract import ModelContract
from medstream.runtime.errors import ModelLoadError
from medstream.runtime.files import sha256_file, write_bytes_atomic

MANIFEST_FORMAT = 1
PRECISIONS = ("fp32", "fp16", "int8")


def default_cache_dir() -> Path:
    env = os.environ.get("MEDSTREAM_ENGINE_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "medstream" / "engines"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine's validity depends on. Two builds with equal keys are interchangeable."""

    onnx_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: str
    dla_core: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def digest(self) -> str:
        """A short stable hash of the whole key (file names; identical keys give identical names)."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def stem(self) -> str:
        dla = f"-dla{self.dla_core}" if self.dla_core is not None else ""
        return f"{self.precision}{dla}-{self.digest()}"


@dataclass(frozen=True)
class DeviceFacts:
    """What the current machine is, for building a key: TensorRT version and the GPU."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str

    @classmethod
    def current(cls, trt_module: Any, device_index: int = 0) -> DeviceFacts:
        from medstream.runtime.gpu.cuda import device_info

        info = device_info(device_index)
        return cls(str(trt_module.__version__), info["name"], info["compute_capability"])


def make_key(onnx_path: str | Path, facts: DeviceFacts, precision: str = "fp32", dla_core: int | None = None,
             onnx_sha256: str | None = None) -> EngineKey:
    return EngineKey(onnx_sha256 or sha256_file(onnx_path), facts.tensorrt_version, facts.gpu_name,
                     facts.compute_capability, precision, dla_core)


@dataclass
class EngineCheck:
    """The verdict on one cached engine: ``ok``, or why not (``reason``, one sentence for the log)."""

    ok: bool
    reason: str
    engine_path: Path
    manifest: dict[str, Any] = field(default_factory=dict)


class EngineCache:
    """Engines and manifests under one root folder (see the module docstring for the layout)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def paths(self, key: EngineKey) -> tuple[Path, Path]:
        folder = self.root / key.onnx_sha256[:16]
        return folder / f"{key.stem()}.engine", folder / f"{key.stem()}.json"

    def timing_cache_path(self, key: EngineKey) -> Path:
        """Timing cache shared by every build for this TensorRT version and GPU (it speeds up rebuilds)."""
        safe_gpu = "".join(ch if ch.isalnum() else "_" for ch in key.gpu_name)
        return self.root / "timing" / f"trt{key.tensorrt_version}-{safe_gpu}-sm{key.compute_capability}.cache"

    # ---- validation
    def check(self, key: EngineKey) -> EngineCheck:
        """Is there a valid engine for ``key``? Never raises for a bad file: the reason says what is wrong."""
        engine_path, manifest_path = self.paths(key)
        return check_engine(engine_path, manifest_path, key)

    # ---- storing
    def store(self, key: EngineKey, engine: bytes, contract: ModelContract | None,
              build_info: dict[str, Any] | None = None) -> Path:
        """Write the engine and then its manifest, each atomically (a crash leaves no half engine that validates)."""
        engine_path, manifest_path = self.paths(key)
        engine_path.parent.mkdir(parents=True, exist_ok=True)
        # durable: an engine takes minutes to rebuild; fsync costs milliseconds. Mode: a normal file's (0644
        # with umask 022), so the service account can load what an engineer built.
        write_bytes_atomic(engine_path, engine, durable=True)
        manifest = build_manifest(key, engine, contract, build_info)
        write_bytes_atomic(manifest_path, json.dumps(manifest, indent=2, sort_keys=True).encode(), durable=True)
        return engine_path

    def load(self, key: EngineKey) -> tuple[bytes, dict[str, Any]]:
        """The engine bytes and manifest for ``key``, re-verified as read; :class:`ModelLoadError` when invalid."""
        verdict = self.check(key)
        if not verdict.ok:
            raise ModelLoadError(verdict.reason, "rebuild it: 'medstream build --model MODEL.onnx' on this device")
        data = verdict.engine_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != verdict.manifest["engine"]["sha256"]:  # changed since the check
            raise ModelLoadError(f"engine {verdict.engine_path} changed while being read",
                                 "something else is writing the cache; rebuild with 'medstream build'")
        return data, verdict.manifest


def build_manifest(key: EngineKey, engine: bytes, contract: ModelContract | None,
                   build_info: dict[str, Any] | None = None) -> dict[str, Any]:
    from medstream.runtime.version import __version__

    return {
        "format": MANIFEST_FORMAT,
        "key": asdict(key),
        "engine": {"size": len(engine), "sha256": hashlib.sha256(engine).hexdigest()},
        "contract": json.loads(contract.to_json()) if contract is not None else None,
        "build": dict(build_info or {}),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "medstream_version": __version__,
    }


_KEY_LABELS = {
    "onnx_sha256": ("ONNX model", "the model file changed since the engine was built"),
    "tensorrt_version": ("TensorRT version", "engines only load in the TensorRT version that built them"),
    "gpu_name": ("GPU", "engines are specific to the GPU model they were built on"),
    "compute_capability": ("compute capability", "engines are specific to the GPU architecture"),
    "precision": ("precision", "a different precision was asked for"),
    "dla_core": ("DLA core", "a different DLA core (or GPU instead of DLA) was asked for"),
}


def check_engine(engine_path: str | Path, manifest_path: str | Path, expected: EngineKey | None = None) -> EngineCheck:
    """Validate an engine file against its manifest and, when given, the expected key.

    Checks, in order: the manifest exists and is readable JSON of a known format; the engine exists;
    its size and SHA-256 equal the manifest's; every key field equals ``expected``'s.
    """
    engine_path, manifest_path = Path(engine_path), Path(manifest_path)
    if not manifest_path.is_file():
        if engine_path.is_file():
            return EngineCheck(False, f"engine {engine_path} has no manifest {manifest_path.name} beside it, so "
                                      "nothing says which TensorRT/GPU built it", engine_path)
        return EngineCheck(False, f"no cached engine at {engine_path}", engine_path)
    try:
        manifest = json.loads(manifest_path.read_text())
        fmt = int(manifest.get("format", 0))
        recorded = manifest["key"]
        size, digest = int(manifest["engine"]["size"]), str(manifest["engine"]["sha256"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return EngineCheck(False, f"manifest {manifest_path} is unreadable or incomplete ({type(exc).__name__}: "
                                  f"{exc})", engine_path)
    if fmt != MANIFEST_FORMAT:
        return EngineCheck(False, f"manifest {manifest_path} has format {fmt}; this medstream reads format "
                                  f"{MANIFEST_FORMAT}", engine_path, manifest)
    if not engine_path.is_file():
        return EngineCheck(False, f"manifest {manifest_path.name} is there but engine {engine_path} is missing",
                           engine_path, manifest)
    actual_size = engine_path.stat().st_size
    if actual_size != size:
        return EngineCheck(False, f"engine {engine_path} is {actual_size} bytes, its manifest says {size}: the "
                                  "file is truncated or was replaced", engine_path, manifest)
    actual = sha256_file(engine_path)
    if actual != digest:
        return EngineCheck(False, f"engine {engine_path} is corrupt: SHA-256 {actual[:12]}... differs from the "
                                  f"manifest's {digest[:12]}...", engine_path, manifest)
    if expected is not None:
        wanted = asdict(expected)
        problems = []
        for name, want in wanted.items():
            got = recorded.get(name)
            if got != want:
                label, why = _KEY_LABELS[name]
                problems.append(f"{label} is {_show(got)} in the engine but {_show(want)} here ({why})")
        if problems:
            return EngineCheck(False, f"engine {engine_path} does not fit: " + "; ".join(problems), engine_path,
                               manifest)
    return EngineCheck(True, f"engine {engine_path} matches (TensorRT {recorded.get('tensorrt_version')}, "
                             f"{recorded.get('gpu_name')}, {recorded.get('precision')})", engine_path, manifest)


def _show(value: Any) -> str:
    if value is None:
        return "none"
    text = str(value)
    return f"{text[:12]}..." if len(text) == 64 else repr(text) if isinstance(value, str) else text
