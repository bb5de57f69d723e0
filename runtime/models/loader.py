"""The model loader: the one place a model file is resolved, checked, read and matched to a device.

Polygraphy splits *loaders* (``SessionFromOnnx``: find and prepare what to run) from *runners*
(activate / infer / deactivate). medstream does the same. :func:`load_model` takes what the user wrote
(``--model ultrasound``, ``--model M.onnx``, ``--model M.engine``) and, once, in this order:

1. resolves a bundled name or a path (:func:`resolve_model_file`);
2. checks the file: present, not empty, a kind medstream runs (:func:`check_model_file`);
3. reads its contract (the ONNX metadata, or an engine's manifest) and merges the config's
   ``contract:`` overrides (:func:`read_model_contract`): the only function that opens a model file
   to learn what it is;
4. chooses the backend and so the device (:func:`medstream.runtime.backends.choose_backend`);
5. picks the variant of the file for that device (:func:`pick_variant`): on the CPU the U8S8 twin of
   an INT8 model, for TensorRT a prebuilt engine;

and returns a frozen :class:`LoadedModel`. Backends (the runners) receive it through
:func:`medstream.runtime.backends.load_backend` and never look at paths or devices again. Before this
module the file was checked three times, ``choose_backend`` ran twice and the CPU backend swapped the
file after it was built.

``.engine``/``.plan`` files have one answer everywhere: ``medstream build`` writes them with a JSON
manifest (device facts, hashes, the model contract); ``--model M.engine`` runs them on the TensorRT
backend when that manifest fits this device, and any other backend refuses them with the reason.
Running from the ``.onnx`` lets the engine cache find or build the engine that fits.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medstream.runtime.contract import ModelContract, read_contract, resolve_contract
from medstream.runtime.errors import ConfigError, ContractError, ModelLoadError
from medstream.runtime.files import sha256_file
from medstream.runtime.models import MODELS_DIR, bundled_checksums, bundled_model_path, int8_cpu_variant

log = logging.getLogger("medstream.models")

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
ONNX_SUFFIXES = (".onnx",)
REPOSITORY_VARIANT = "triton repository"


@dataclass(frozen=True)
class LoadedModel:
    """What the loader found: everything a backend needs, decided once.

    Attributes
    ----------
    requested
        What the user wrote (a bundled name or a path).
    path
        The model file the user named, resolved.
    run_path
        The file the backend opens: ``path`` itself or its variant for the device (``variant`` says which).
    variant
        ``"onnx"``, ``"int8-cpu twin"`` (the U8S8 file ``medstream calibrate`` writes beside ``M.int8.onnx``),
        ``"int8 sibling"`` (OpenVINO with precision int8: ``M.int8.onnx`` for ``M.onnx``)
        or ``"engine"`` (a prebuilt TensorRT engine with its manifest).
    contract
        The embedded (or manifest) contract merged with the config's overrides.
    backend, backend_reason
        The concrete backend (``onnxruntime`` = CPU, ``onnxruntime-cuda``, ``tensorrt``, ``openvino``) and why.
    """

    requested: str
    path: Path
    run_path: Path
    variant: str
    contract: ModelContract
    backend: str
    backend_reason: str
    remote: Any = None
    """Backend ``triton``: the server (a :class:`~medstream.runtime.backends.triton_backend.TritonTarget`)."""
    recorded_sha256: str | None = None
    """Backend ``triton`` without a local file: the model SHA-256 the repository recorded (``triton-repo``)."""

    @property
    def is_engine(self) -> bool:
        return self.variant == "engine"

    def sha256(self) -> str:
        """SHA-256 of the file the backend runs (hashing a 2 MB model costs about 3 ms); for a model served by
        Triton without a local file, the hash its repository recorded (``"unknown"`` when it recorded none)."""
        if self.variant == REPOSITORY_VARIANT:
            return self.recorded_sha256 or "unknown"
        return sha256_file(self.run_path)

    def describe(self) -> dict[str, Any]:
        return {"model": str(self.path), "run_path": str(self.run_path), "variant": self.variant,
                "model_id": self.contract.model_id, "backend": self.backend, "backend_reason": self.backend_reason}


def resolve_model_file(model: str | Path) -> Path:
    """A bundled name (``ultrasound``, ``fluoroscopy``) or a path, resolved and checked (:func:`check_model_file`)."""
    path = bundled_model_path(model)
    check_model_file(path)
    return path


def check_model_file(path: Path) -> None:
    """Refuse a missing, empty or unknown kind of model file, naming the file and the fix."""
    if not path.is_file():
        raise ModelLoadError(f"model file {path} does not exist",
                             "check --model (or 'model:' in the config); bundled models: ultrasound, fluoroscopy")
    if path.stat().st_size == 0:  # an empty file parses as an empty ONNX model: say what it really is
        raise ModelLoadError(f"model file {path} is empty (0 bytes)",
                             "the copy or download was interrupted; restore a good copy or re-export it")
    suffix = path.suffix.lower()
    if suffix not in ONNX_SUFFIXES + ENGINE_SUFFIXES:
        raise ModelLoadError(f"{path} is neither an ONNX model (.onnx) nor a TensorRT engine "
                             f"({', '.join(ENGINE_SUFFIXES)})",
                             "point --model at the .onnx file (or at an engine built by 'medstream build')")


def read_model_contract(path: str | Path, overrides: dict[str, Any] | None = None, *,
                        required: bool = True) -> ModelContract | None:
    """The model's contract: embedded (ONNX metadata) or recorded (engine manifest), merged with ``overrides``.

    This is the one function that opens a model file to learn what it is. With ``required=False`` and
    neither an embedded contract nor overrides, returns ``None`` (``medstream evaluate`` and
    ``calibrate`` then say what to add).

    Raises
    ------
    ModelLoadError
        The file is missing, empty, corrupt or not ONNX; an engine without a readable manifest.
    ContractError
        The embedded contract is malformed, or the merged contract is incomplete or invalid.
    """
    file = Path(path)
    check_model_file(file)
    embedded = _read_engine_contract(file) if file.suffix.lower() in ENGINE_SUFFIXES else _read_onnx_contract(file)
    if embedded is None and not overrides and not required:
        return None
    return resolve_contract(embedded, overrides, str(file))


def _read_onnx_contract(file: Path) -> ModelContract | None:
    import onnx

    try:
        proto = onnx.load(str(file), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise ModelLoadError(f"model file {file} cannot be read as ONNX: {str(exc)[:200]}",
                             "the file is corrupt, truncated or not ONNX; re-export it or restore a good copy") from None
    try:
        return read_contract(proto)
    except ContractError as exc:
        raise ContractError(f"{file}: {exc.what}", exc.fix) from None
    except Exception as exc:  # a contract that is JSON but not an object, a version that is not a number, ...
        raise ContractError(f"the medstream contract embedded in {file} is malformed: {type(exc).__name__}: "
                            f"{str(exc)[:200]}",
                            "re-embed a valid contract (medstream export, or give the contract in the config's "
                            "'contract:' section after removing the metadata key)") from None


def verify_model_file(path: Path, expected_sha256: str | None = None) -> None:
    """Refuse a damaged model: a bundled file must match ``SHA256SUMS``, any file must match a pinned hash.

    Hashing the 4.5 MB bundled U-Net takes 3.4 ms here (median of 20 runs of ``files.sha256_file`` on the
    2-core development VM), once at start. A model with 200
    flipped bytes ran before this check with Dice 0.026 instead of 0.992 and no word said.
    """
    want = expected_sha256.lower().strip() if expected_sha256 else None
    bundled = None
    if path.resolve().parent == MODELS_DIR:
        bundled = bundled_checksums().get(path.name)
    if want is None and bundled is None:
        return
    got = sha256_file(path)
    if bundled is not None and got != bundled:
        raise ModelLoadError(f"the bundled model {path} is damaged: its SHA-256 is {got[:16]}..., the release "
                             f"recorded {bundled[:16]}... (runtime/models/SHA256SUMS)",
                             "reinstall medstream (pip install --force-reinstall medstream), or rebuild the bundled "
                             "models with: python -m medstream.export.reference_models")
    if want is not None and got != want:
        raise ModelLoadError(f"model {path} does not match the pinned hash: SHA-256 {got}, config model.sha256 "
                             f"{want}", "restore the model file the config was written for, or update model.sha256 "
                             "if the model was changed on purpose")


def _read_engine_contract(file: Path) -> ModelContract | None:
    manifest = file.with_suffix(".json")
    if not manifest.is_file():
        raise ModelLoadError(f"TensorRT engine {file} has no manifest ({manifest.name}) beside it",
                             "engines run only with the manifest 'medstream build' writes; rebuild it with "
                             "'medstream build --model MODEL.onnx', or run the .onnx and let the engine cache manage it")
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"engine manifest {manifest} cannot be read: {exc}",
                             "rebuild the engine with 'medstream build --model MODEL.onnx'") from None
    raw = data.get("contract") if isinstance(data, dict) else None
    if raw is None:
        return None
    try:
        return ModelContract.model_validate(raw)
    except Exception as exc:
        raise ContractError(f"the contract in engine manifest {manifest} is invalid: {str(exc)[:300]}",
                            "rebuild the engine with 'medstream build --model MODEL.onnx'") from None


def pick_variant(path: Path, backend: str, precision: str = "auto") -> tuple[Path, str]:
    """The file to run on ``backend``: ``(run_path, variant)``.

    On the CPU (``onnxruntime``) an ``M.int8.onnx`` runs as its U8S8 twin ``M.int8-cpu.onnx`` when
    calibration wrote one: the same calibration and accuracy gate, about 1.6x faster on this project's
    AVX512-VNNI machine (12.3 vs 20.1 ms for the ultrasound U-Net). TensorRT needs the symmetric file.
    On OpenVINO ``precision`` picks the file (:func:`_openvino_variant`); other backends take ``auto`` only.
    """
    if path.suffix.lower() in ENGINE_SUFFIXES:
        if backend != "tensorrt":
            raise ModelLoadError(f"{path} is a TensorRT engine; the {backend} backend cannot run it",
                                 "run it with --backend tensorrt, or pass the .onnx model to use another backend")
        return path, "engine"
    if backend == "openvino":
        return _openvino_variant(path, precision)
    twin = int8_cpu_variant(path)
    if backend == "onnxruntime" and path.name.endswith(".int8.onnx") and twin.is_file():
        return twin, "int8-cpu twin"
    return path, "onnx"


def load_model(model: str | Path, *, contract: dict[str, Any] | None = None, backend: str = "auto",
               sha256: str | None = None, precision: str = "auto", triton: Any = None) -> LoadedModel:
    """Resolve, check and read ``model``, choose the backend and the variant: once, before anything starts.

    Parameters
    ----------
    model
        A bundled name or a path to an ``.onnx`` or a built ``.engine``.
    contract
        The config's ``contract:`` section (fills in or overrides the embedded contract).
    backend
        ``auto`` or a backend name (see :data:`medstream.runtime.backends.BACKENDS`).
    sha256
        The config's ``model.sha256`` pin: the named file must have this SHA-256 (bundled files are always
        checked against ``SHA256SUMS``).
    precision
        The config's ``model.precision``: on OpenVINO ``int8`` runs the calibrated ``M.int8.onnx`` beside
        ``M.onnx``; the backend applies the rest. Any other backend refuses a precision other than ``auto``.
    triton
        Backend ``triton``: the server (:func:`medstream.runtime.backends.triton_backend.triton_target`). The
        contract comes from the local model file when ``model`` names one (the backend then checks the server
        serves that very file), or, with ``model`` = ``triton``, from the ``config.pbtxt`` parameters
        ``medstream triton-repo`` wrote (:func:`load_remote_model`).
    """
    from medstream.runtime.backends import choose_backend

    if backend == "triton":
        return load_remote_model(model, contract=contract, sha256=sha256, target=triton)
    path = resolve_model_file(model)
    verify_model_file(path, sha256)
    resolved = read_model_contract(path, contract)
    assert resolved is not None  # required=True
    if path.suffix.lower() in ONNX_SUFFIXES:  # outputs vs task and classes, before the first frame (issue 13)
        from medstream.runtime.decoders.validate import check_model_io, model_io_from_onnx

        resolved = check_model_io(resolved, model_io_from_onnx(path))
    if path.suffix.lower() in ENGINE_SUFFIXES and backend == "auto":
        name, why = "tensorrt", "the model is a TensorRT engine"
    else:
        name, why = choose_backend(backend)
    if name in ("tensorrt", "onnxruntime-cuda"):  # what the GPU pre/postprocessing cannot mirror is refused here
        from medstream.runtime.gpu.prepost import check_gpu_support

        check_gpu_support(resolved, name)
    if precision != "auto" and name != "openvino":
        raise ConfigError(f"precision {precision} was asked for, but the {name} backend runs the model file as it is",
                          "remove 'precision' (or set it to auto) and point --model at the file to run (M.int8.onnx "
                          "for INT8), or use --backend openvino")
    run_path, variant = pick_variant(path, name, precision)
    if run_path != path:
        verify_model_file(run_path)
    if variant != "onnx":
        log.info("model %s: running %s (%s) on %s", path.name, run_path.name, variant, name)
    return LoadedModel(requested=str(model), path=path, run_path=run_path, variant=variant, contract=resolved,
                       backend=name, backend_reason=why)


def _openvino_variant(path: Path, precision: str) -> tuple[Path, str]:
    """OpenVINO's file for ``precision``: ``int8`` takes ``M.int8.onnx`` for ``M.onnx`` (the S8S8 file the
    calibration gate judged; OpenVINO runs it as fast as the U8S8 twin, see
    :mod:`medstream.runtime.backends.openvino_backend`); ``fp32``/``bf16`` need the FP32 file."""
    is_int8_name = path.name.endswith((".int8.onnx", ".int8-cpu.onnx"))
    if precision == "int8" and not is_int8_name:
        sibling = path.with_name(f"{path.name[:-len('.onnx')]}.int8.onnx")
        if not sibling.is_file():
            raise ModelLoadError(f"precision int8 was asked for, but there is no INT8 model {sibling.name} beside "
                                 f"{path}", f"calibrate it first: medstream calibrate --model {path} (writes "
                                 f"{sibling.name}), or use --precision auto")
        return sibling, "int8 sibling"
    if precision in ("fp32", "bf16") and is_int8_name:
        raise ConfigError(f"precision {precision} was asked for, but {path.name} is an INT8 model",
                          "point --model at the FP32 file (M.onnx), or use --precision int8")
    return path, "onnx"


def load_remote_model(model: str | Path, *, contract: dict[str, Any] | None, sha256: str | None,
                      target: Any) -> LoadedModel:
    """:func:`load_model` for backend ``triton``: the contract from the local file, or from the repository.

    Raises
    ------
    ConfigError
        No server given (``--triton-url``), or ``--model triton`` without a model name.
    BackendUnavailable
        ``--model triton`` and the server cannot be reached: there is no contract to start with.
    """
    from medstream.runtime.backends.triton_backend import FROM_REPOSITORY, fetch_repository_contract

    if target is None:
        raise ConfigError("backend triton needs the server's address, and none is given",
                          "add --triton-url grpc://HOST:8001 (or model.triton_url in the config)")
    reason = f"asked for explicitly: {target.url}"
    if str(model) == FROM_REPOSITORY:
        if sha256:
            raise ConfigError("model.sha256 pins a local model file, but --model triton has none",
                              "drop model.sha256, or give the local file with --model M.onnx")
        embedded, recorded = fetch_repository_contract(target)
        where = f"{target.describe()} (config.pbtxt)"
        try:  # as written by triton-repo: already checked against the model's graph there
            served = ModelContract.model_validate(embedded)
            # triton-repo stores the contract as a local run uses it (activations resolved against the graph, which
            # validation would count as version-2 use): keep the version it was written with
            if isinstance(embedded.get("contract_version"), int):
                served = served.model_copy(update={"contract_version": embedded["contract_version"]})
        except Exception as exc:
            raise ContractError(f"the contract in {where} is invalid: {str(exc)[:300]}",
                                "rewrite the repository with 'medstream triton-repo'") from None
        resolved = resolve_contract(served, contract, where) if contract else served
        pseudo = Path(f"triton:{target.model}")
        return LoadedModel(requested=str(model), path=pseudo, run_path=pseudo, variant=REPOSITORY_VARIANT,
                           contract=resolved, backend="triton", backend_reason=reason, remote=target,
                           recorded_sha256=recorded)
    path = resolve_model_file(model)
    verify_model_file(path, sha256)
    if path.suffix.lower() in ENGINE_SUFFIXES:
        raise ModelLoadError(f"{path} is a TensorRT engine; with backend triton --model gives the ONNX the "
                             "repository was made from (for its contract)",
                             "pass the .onnx, or --model triton to take the contract from the server")
    resolved = read_model_contract(path, contract)
    assert resolved is not None  # required=True
    from medstream.runtime.decoders.validate import check_model_io, model_io_from_onnx

    resolved = check_model_io(resolved, model_io_from_onnx(path))
    return LoadedModel(requested=str(model), path=path, run_path=path, variant="onnx (contract; served by Triton)",
                       contract=resolved, backend="triton", backend_reason=reason, remote=target)


def require_model_contract(path: Path, overrides: dict[str, Any] | None, what: str) -> ModelContract:
    """:func:`read_model_contract` for commands that need one, with their own way out in the error."""
    found = read_model_contract(path, overrides, required=False)
    if found is None:
        raise ConfigError(f"model {path} carries no medstream contract, so {what} does not know its classes",
                          "give one with --contract FILE.yaml (keys as under 'contract:' in docs/MODEL_CONTRACT.md)")
    return found


__all__ = ["ENGINE_SUFFIXES", "REPOSITORY_VARIANT", "LoadedModel", "check_model_file", "load_model",
           "load_remote_model", "pick_variant",
           "read_model_contract", "require_model_contract", "resolve_model_file", "verify_model_file"]
