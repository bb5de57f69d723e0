"""Build a TensorRT engine from an ONNX model for this device and store it in the engine cache.

The engine lands under the cache folder (``--out``, default ``$MEDSTREAM_ENGINE_CACHE`` or
``~/.cache/medstream/engines``) with a JSON manifest (ONNX SHA-256, TensorRT version, GPU, compute
capability, precision, DLA core, engine SHA-256, model contract); ``medstream run --backend tensorrt``
finds it there. Precision: fp32, fp16 (TensorRT 10: builder flag; 11: the ONNX is converted to fp16
first), int8 (a QDQ model from 'medstream calibrate'). Needs the full TensorRT package and a GPU.
"""

from __future__ import annotations

import logging

from medstream.cli.commands._model_args import add_contract_arguments, read_contract_for

HELP = "build (or reuse) the TensorRT engine for a model on this device"
log = logging.getLogger("medstream.build")


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="ONNX model path or bundled name (ultrasound, fluoroscopy)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32")
    p.add_argument("--dla", type=int, default=None, metavar="N", help="build for DLA core N (Jetson), GPU fallback on")
    p.add_argument("--out", default=None, metavar="DIR", help="engine cache folder to write into")
    p.add_argument("--force", action="store_true", help="rebuild even if a valid engine is cached")
    p.add_argument("--version-compatible", action="store_true",
                   help="build an engine the lean TensorRT runtime (tensorrt_lean) can load")
    p.add_argument("--workspace-mb", type=int, default=None, help="builder workspace limit in MiB")
    p.add_argument("--no-build-check", action="store_true",
                   help="skip loading the built engine and running one inference to check it")
    add_contract_arguments(p)


def main(args) -> int:
    from medstream.runtime.engine.builder import BuildOptions, require_builder
    from medstream.runtime.engine.cache import DeviceFacts, EngineCache
    from medstream.runtime.engine.resolve import obtain_engine
    from medstream.runtime.errors import ConfigError
    from medstream.runtime.models.loader import ENGINE_SUFFIXES, resolve_model_file

    model = resolve_model_file(args.model)
    if model.suffix.lower() in ENGINE_SUFFIXES:
        raise ConfigError(f"{model} is already a TensorRT engine; 'medstream build' builds engines from ONNX models",
                          "pass the .onnx model it was built from (or run the engine: medstream run --model "
                          f"{model} --backend tensorrt)")
    contract = read_contract_for(model, args, "build")  # embedded, or --contract FILE.yaml (recorded in the manifest)
    trt = require_builder()  # before touching the GPU: the most common missing piece, with the fix
    facts = DeviceFacts.current(trt)
    cache = EngineCache(args.out)
    options = BuildOptions(workspace_mb=args.workspace_mb, version_compatible=args.version_compatible)
    _, manifest, path = obtain_engine(model, contract, facts, cache=cache, precision=args.precision,
                                      dla_core=args.dla, build_options=options, force_build=args.force)
    print(f"engine:   {path}")
    print(f"manifest: {path.with_suffix('.json')}")
    key = manifest["key"]
    print(f"TensorRT {key['tensorrt_version']} on {key['gpu_name']} (sm {key['compute_capability']}), "
          f"{key['precision']}" + (f", DLA core {key['dla_core']}" if key["dla_core"] is not None else ""))
    if not args.no_build_check:
        from medstream.runtime.backends.tensorrt_backend import TensorRTBackend

        with TensorRTBackend(str(path), contract, dla_core=args.dla) as backend:
            backend.warm_up(3)
            print(f"check:    loaded and ran; GPU compute {backend.last_compute_ms:.3f} ms, "
                  f"CUDA graph {'on' if backend.graph is not None else 'off (fallback)'}")
    return 0
