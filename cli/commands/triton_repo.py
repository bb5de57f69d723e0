"""Write a Triton Inference Server model repository from a model and its medstream contract.

Examples::

    medstream triton-repo --model ultrasound --out repo/                       # GPU server, ONNX Runtime backend
    medstream triton-repo --model M.onnx --engine M.engine --backend tensorrt --out repo/
    medstream triton-repo --model ultrasound --out repo/ --backend python-onnxruntime   # CPU test server

The repository's ``config.pbtxt`` carries the contract, so ``medstream run --backend triton --model triton
--triton-url grpc://HOST:8001 --triton-model NAME`` needs no local model file (docs/TRITON.md).
"""

from __future__ import annotations

from medstream.cli.commands._model_args import add_contract_arguments, contract_overrides

HELP = "write a Triton Inference Server model repository (config.pbtxt from the contract, the model file)"


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="ONNX model path or bundled name (ultrasound, fluoroscopy)")
    p.add_argument("--out", required=True, metavar="DIR", help="the model repository folder (created if missing)")
    p.add_argument("--backend", choices=["onnxruntime", "tensorrt", "python-onnxruntime"], default="onnxruntime",
                   help="Triton backend: onnxruntime (GPU servers), tensorrt (with --engine), python-onnxruntime "
                        "(ONNX Runtime in the Python backend: CPU test servers such as the nvidia-pytriton wheel's)")
    p.add_argument("--engine", help="--backend tensorrt: the engine built from --model on the server's GPU")
    p.add_argument("--name", help="model name in the repository (default: the contract's model_id)")
    p.add_argument("--version", type=int, default=1, help="version folder (default 1)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="Triton max_batch_size; above 0 dynamic batching is on (default: 8 for a dynamic batch axis, "
                        "4 for python-onnxruntime, else 0)")
    p.add_argument("--queue-delay-us", type=int, default=500, help="dynamic batching: longest wait to fill a batch")
    p.add_argument("--instances", type=int, default=1, help="model instances (instance_group count)")
    p.add_argument("--device", choices=["gpu", "cpu"], default=None,
                   help="instance kind (default: cpu for python-onnxruntime, gpu otherwise)")
    p.add_argument("--threads", type=int, default=0, help="python-onnxruntime: ONNX Runtime threads per instance")
    p.add_argument("--force", action="store_true", help="replace the model's folder if it exists")
    add_contract_arguments(p)


def main(args) -> int:
    from medstream.export.triton_repo import write_triton_repository

    repo = write_triton_repository(
        args.model, args.out, backend=args.backend, name=args.name, version=args.version, max_batch=args.max_batch,
        instances=args.instances, device=args.device, queue_delay_us=args.queue_delay_us, threads=args.threads,
        contract=contract_overrides(args), engine=args.engine, force=args.force)
    print(f"model:  {repo.name} ({repo.backend}, max_batch_size {repo.max_batch})")
    print(f"config: {repo.config_path}")
    print(f"file:   {repo.model_file}")
    print(f"serve:  tritonserver --model-repository {repo.root}")
    return 0
