"""A Triton Inference Server model repository from a model and its contract (``medstream triton-repo``).

Why here, in ``export``: it writes deployment artefacts from a model file, like the exporter and the engine
builder; the runtime never needs this code (it only reads back the ``config.pbtxt`` parameters, whose names
it owns: :data:`medstream.runtime.backends.triton_backend.CONTRACT_PARAMETER` and friends), and ``export``
may depend on ``runtime``, never the reverse.

Layout written::

    OUT/NAME/config.pbtxt        inputs, outputs, dims, data types, max_batch_size, dynamic batching with a
                                 queue delay, instance groups; the medstream contract and the model's SHA-256
                                 in ``parameters`` (so ``medstream run --model triton`` needs no local file,
                                 and ``--model M.onnx`` is checked to be the very file served)
    OUT/NAME/1/model.onnx        backend onnxruntime and python-onnxruntime
    OUT/NAME/1/model.plan        backend tensorrt (an engine built for the server's GPU and TensorRT)
    OUT/NAME/1/model.py          backend python-onnxruntime: ONNX Runtime inside Triton's Python backend

``config.pbtxt`` is made with Triton's own protobuf schema (``tritonclient.grpc.model_config_pb2``) and
printed in protobuf text format, so the server parses exactly what was checked here.

Batching. Triton batches along a first axis it owns (``max_batch_size`` > 0, ``dims`` without it). The
ONNX Runtime and TensorRT backends need that axis to be dynamic in the model; the bundled U-Nets have a static
batch of 1, so for them the repository says ``max_batch_size: 0`` (no server-side batching) unless the model
was exported with ``--dynamic-batch``. The ``python-onnxruntime`` backend is for CPU test servers (the
``nvidia-pytriton`` wheel's ``tritonserver`` has only the Python backend): its ``model.py`` receives the
requests the dynamic batcher gathered and runs them as one batch when the ONNX batch axis is dynamic, one
after the other when it is static, so dynamic batching is on for it either way (default ``max_batch 4``).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medstream.runtime.backends.triton_backend import CONTRACT_PARAMETER, SHA256_PARAMETER, SOURCE_PARAMETER
from medstream.runtime.errors import ConfigError, ModelLoadError, require
from medstream.runtime.files import sha256_file, write_text_atomic
from medstream.runtime.models.loader import ENGINE_SUFFIXES, read_model_contract, resolve_model_file

log = logging.getLogger("medstream.export.triton")

REPO_BACKENDS = ("onnxruntime", "tensorrt", "python-onnxruntime")
DEFAULT_QUEUE_DELAY_US = 500
_ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 2: "TYPE_UINT8", 3: "TYPE_INT8", 6: "TYPE_INT32", 7: "TYPE_INT64",
                   11: "TYPE_FP64", 9: "TYPE_BOOL"}


@dataclass(frozen=True)
class TritonRepository:
    """What :func:`write_triton_repository` wrote."""

    root: Path
    name: str
    config_path: Path
    model_file: Path
    backend: str
    max_batch: int
    config_text: str


@dataclass(frozen=True)
class _Tensor:
    name: str
    dtype: str
    shape: list[int]  # -1 for a dynamic axis


def _onnx_io(path: Path) -> tuple[list[_Tensor], list[_Tensor]]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in proto.graph.initializer}

    def tensors(values: Any) -> list[_Tensor]:
        out = []
        for v in values:
            if v.name in initializers:
                continue
            t = v.type.tensor_type
            if t.elem_type not in _ONNX_TO_TRITON:
                raise ModelLoadError(f"{path}: tensor {v.name!r} has ONNX element type {t.elem_type}, which this "
                                     "repository writer does not map to a Triton data type",
                                     "use float32/float16/uint8/int8/int32/int64 tensors")
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in t.shape.dim]
            out.append(_Tensor(v.name, _ONNX_TO_TRITON[t.elem_type], dims))
        return out

    return tensors(proto.graph.input), tensors(proto.graph.output)


def build_config(name: str, backend: str, inputs: list[_Tensor], outputs: list[_Tensor], *, max_batch: int,
                 instances: int, kind: str, queue_delay_us: int, parameters: dict[str, str]) -> str:
    """``config.pbtxt`` text made with Triton's ``ModelConfig`` protobuf."""
    mc = require("tritonclient.grpc.model_config_pb2", "triton", "medstream triton-repo")
    from google.protobuf import text_format

    config = mc.ModelConfig(name=name, max_batch_size=max_batch)
    if backend == "python-onnxruntime":
        config.backend = "python"
    else:
        config.backend = backend
        config.default_model_filename = "model.plan" if backend == "tensorrt" else "model.onnx"
    for t, io in [(t, config.input.add()) for t in inputs] + [(t, config.output.add()) for t in outputs]:
        io.name = t.name
        io.data_type = mc.DataType.Value(t.dtype)
        io.dims.extend(t.shape[1:] if max_batch > 0 else t.shape)
    if max_batch > 0:
        batching = config.dynamic_batching
        batching.max_queue_delay_microseconds = queue_delay_us
        # A request whose client deadline passed is dropped from the queue, not computed for nobody.
        batching.default_queue_policy.timeout_action = mc.ModelQueuePolicy.REJECT
        batching.default_queue_policy.allow_timeout_override = True
    group = config.instance_group.add()
    group.count = instances
    group.kind = mc.ModelInstanceGroup.Kind.Value(kind)
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return text_format.MessageToString(config)


def write_triton_repository(model: str | Path, out: str | Path, *, backend: str = "onnxruntime",
                            name: str | None = None, version: int = 1, max_batch: int | None = None,
                            instances: int = 1, device: str | None = None,
                            queue_delay_us: int = DEFAULT_QUEUE_DELAY_US, threads: int = 0,
                            contract: dict[str, Any] | None = None, engine: str | Path | None = None,
                            force: bool = False) -> TritonRepository:
    """Write ``out/NAME/`` (see the module docstring) and return what was written.

    Parameters
    ----------
    model
        A bundled name or an ``.onnx`` file: its contract, tensors and (for the ONNX backends) the served file.
    engine
        Backend ``tensorrt``: the engine built from ``model`` for the server's GPU and TensorRT version
        (``medstream build`` on that machine, or ``trtexec`` in the Triton container); served as ``model.plan``.
    backend
        ``onnxruntime`` (Triton's ONNX Runtime backend; GPU servers), ``tensorrt``, or ``python-onnxruntime``
        (ONNX Runtime inside the Python backend: CPU test servers such as the ``nvidia-pytriton`` wheel's).
    max_batch
        Triton's ``max_batch_size``; ``None`` chooses (8 for a dynamic batch axis, 4 for python-onnxruntime, else
        0). Above 0, dynamic batching is on with ``queue_delay_us``.
    device
        ``gpu`` or ``cpu`` instance groups (default: cpu for python-onnxruntime, gpu otherwise).
    threads
        python-onnxruntime: ONNX Runtime intra-op threads per instance (0: ONNX Runtime's default).
    """
    if backend not in REPO_BACKENDS:
        raise ConfigError(f"unknown repository backend {backend!r}", f"use one of: {', '.join(REPO_BACKENDS)}")
    if instances < 1 or (max_batch is not None and max_batch < 0) or queue_delay_us < 0:
        raise ConfigError("--instances must be at least 1, --max-batch and --queue-delay-us at least 0",
                          "e.g. --instances 1 --max-batch 4 --queue-delay-us 500")
    path = resolve_model_file(model)
    if path.suffix.lower() in ENGINE_SUFFIXES:
        raise ConfigError(f"{path.name} is a TensorRT engine; --model takes the ONNX it was built from",
                          "pass --model M.onnx (and, for --backend tensorrt, --engine M.engine)")
    served = path
    if backend == "tensorrt":
        if engine is None:
            raise ConfigError("--backend tensorrt serves a TensorRT engine, and no --engine is given",
                              "build it from this ONNX on the server's GPU with the server's TensorRT version "
                              "('medstream build' there, or trtexec in the Triton container) and pass --engine "
                              "M.engine; or use --backend onnxruntime")
        served = Path(engine)
        if not served.is_file():
            raise ConfigError(f"engine {served} does not exist", "check --engine")
    elif engine is not None:
        raise ConfigError(f"--engine is for --backend tensorrt, not {backend}", "drop --engine or use --backend tensorrt")
    resolved = read_model_contract(path, contract)
    assert resolved is not None
    from medstream.runtime.decoders.validate import check_model_io, model_io_from_onnx

    # the contract as a local run uses it (outputs checked against the graph, "auto" activations resolved)
    resolved = check_model_io(resolved, model_io_from_onnx(path))
    inputs, outputs = _onnx_io(path)
    dynamic = all(t.shape and t.shape[0] == -1 for t in inputs)
    if max_batch is None:
        max_batch = 8 if dynamic else (4 if backend == "python-onnxruntime" else 0)
    if max_batch > 0 and not dynamic and backend != "python-onnxruntime":
        raise ConfigError(f"{path.name} has a static batch axis ({inputs[0].shape}), so Triton's {backend} backend "
                          f"cannot batch it (--max-batch {max_batch})",
                          "use --max-batch 0, or re-export the model with 'medstream export --dynamic-batch'")
    # python-onnxruntime: Triton's batch axis stands for the model's own static batch of 1
    if max_batch > 0 and not dynamic and any(t.shape[:1] != [1] for t in inputs + outputs):
        raise ConfigError(f"{path.name}: a static first axis other than 1 cannot be batched by Triton",
                          "use --max-batch 0")
    name = name or resolved.model_id
    kind = "KIND_" + (device or ("cpu" if backend == "python-onnxruntime" else "gpu")).upper()
    if kind not in ("KIND_CPU", "KIND_GPU"):
        raise ConfigError(f"--device {device!r} is not gpu or cpu", "use --device gpu or --device cpu")
    sha = sha256_file(path)  # the ONNX's: what 'medstream run --model M.onnx --backend triton' compares
    params = {CONTRACT_PARAMETER: json.dumps(resolved.model_dump(mode="json"), sort_keys=True),
              SHA256_PARAMETER: sha, SOURCE_PARAMETER: path.name}
    if backend == "python-onnxruntime":
        params.update({"medstream.onnx_batch": "dynamic" if dynamic else "static",
                       "medstream.intra_op_threads": str(threads)})
    text = build_config(name, backend, inputs, outputs, max_batch=max_batch, instances=instances, kind=kind,
                        queue_delay_us=queue_delay_us, parameters=params)
    root = Path(out) / name
    if root.exists():
        if not force:
            raise ConfigError(f"{root} already exists", "choose another --out or --name, or pass --force to replace it")
        shutil.rmtree(root)
    vdir = root / str(version)
    vdir.mkdir(parents=True)
    model_file = vdir / ("model.plan" if backend == "tensorrt" else "model.onnx")
    shutil.copyfile(served, model_file)
    if sha256_file(model_file) != sha256_file(served):
        raise ModelLoadError(f"copying {served} to {model_file} changed it", "check the disk and try again")
    if backend == "python-onnxruntime":
        write_text_atomic(vdir / "model.py", PYTHON_ONNXRUNTIME_MODEL)
    config_path = write_text_atomic(root / "config.pbtxt", text)
    log.info("wrote Triton model %s (%s, max_batch_size %d, %d %s instance(s)) to %s", name, backend, max_batch,
             instances, kind, root)
    return TritonRepository(root=Path(out), name=name, config_path=config_path, model_file=model_file,
                            backend=backend, max_batch=max_batch, config_text=text)


#: model.py of the python-onnxruntime backend: runs inside the server's Python (not medstream's environment),
#: so it uses only numpy, onnxruntime and Triton's own triton_python_backend_utils.
PYTHON_ONNXRUNTIME_MODEL = '''"""ONNX Runtime inside Triton's Python backend (written by 'medstream triton-repo --backend python-onnxruntime').

For CPU test servers whose tritonserver has only the Python backend (the nvidia-pytriton wheel). Requests the
dynamic batcher gathered run as one batch when the ONNX batch axis is dynamic, one after the other when static.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        here = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        threads = int(params.get("medstream.intra_op_threads", "0"))
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(os.path.join(here, "model.onnx"), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.dynamic = params.get("medstream.onnx_batch") == "dynamic"
        self.inputs = [i["name"] for i in config["input"]]
        self.outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in config["output"]]

    def _run(self, feeds):
        values = self.session.run([name for name, _ in self.outputs], feeds)
        return [np.ascontiguousarray(v, dtype=dtype) for v, (_, dtype) in zip(values, self.outputs)]

    def execute(self, requests):
        batches = [{n: pb_utils.get_input_tensor_by_name(r, n).as_numpy() for n in self.inputs} for r in requests]
        results = []
        if self.dynamic and len(batches) > 1:
            sizes = [b[self.inputs[0]].shape[0] for b in batches]
            joined = self._run({n: np.concatenate([b[n] for b in batches]) for n in self.inputs})
            bounds = np.cumsum([0] + sizes)
            results = [[v[bounds[k]:bounds[k + 1]] for v in joined] for k in range(len(batches))]
        else:
            for feeds in batches:
                try:
                    results.append(self._run(feeds))
                except Exception as exc:
                    results.append(exc)
        responses = []
        for values in results:
            if isinstance(values, Exception):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(values))))
                continue
            tensors = [pb_utils.Tensor(name, v) for (name, _), v in zip(self.outputs, values)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
'''


__all__ = ["PYTHON_ONNXRUNTIME_MODEL", "REPO_BACKENDS", "TritonRepository", "build_config", "write_triton_repository"]
