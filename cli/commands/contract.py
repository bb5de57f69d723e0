"""Read or write the medstream contract inside an ONNX file, without PyTorch.

``embed`` writes a contract (YAML/JSON, the keys of docs/MODEL_CONTRACT.md; ``medstream inspect MODEL.onnx
--out FILE.yaml`` proposes one) into a copy of the model: validated first exactly as a run would resolve
it (fields in the file win over a contract the model already carries), tensor names checked against the
graph, written atomically. The input is never overwritten unless ``--in-place`` is given.
``show`` prints the embedded contract as YAML (``--json``: as stored).

Examples::

    medstream contract embed their_model.onnx --contract contract.yaml --out their_model.medstream.onnx
    medstream contract embed their_model.onnx --contract contract.yaml --in-place
    medstream contract show their_model.medstream.onnx
"""

from __future__ import annotations

from medstream.cli.commands._model_args import add_contract_arguments, contract_overrides

HELP = "embed a contract into an ONNX model (embed), or show the one it carries (show)"


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    embed = sub.add_parser("embed", help="write --contract FILE.yaml into a copy of the model (--out) or in place",
                           description="Validate a contract and write it into an ONNX model's metadata.")
    embed.add_argument("model", help="the .onnx model")
    add_contract_arguments(embed)
    embed.add_argument("--out", default=None, metavar="M2.onnx", help="the model with the contract (a new file)")
    embed.add_argument("--in-place", action="store_true", help="rewrite the input model itself (atomically)")
    embed.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    show = sub.add_parser("show", help="print the contract a model carries",
                          description="Print the medstream contract embedded in a model (exit 2 when it has none).")
    show.add_argument("model", help="the .onnx model, an engine with its manifest, or a bundled name")
    show.add_argument("--json", action="store_true", help="print it as JSON")


def main(args) -> int:
    return _embed(args) if args.action == "embed" else _show(args)


def _embed(args) -> int:
    from pathlib import Path

    from medstream.runtime.errors import ConfigError
    from medstream.runtime.models.embed import embed_contract

    model = Path(args.model)
    if args.contract is None:
        raise ConfigError("contract embed needs --contract FILE.yaml",
                          f"write one with: medstream inspect {model} --out contract.yaml (confirm the GUESS lines)")
    if args.out is None and not args.in_place:
        raise ConfigError("contract embed needs --out M2.onnx (a new file) or --in-place",
                          f"e.g. --out {model.with_suffix('')}.medstream.onnx")
    if args.out is not None and args.in_place and Path(args.out).resolve() != model.resolve():
        raise ConfigError("--in-place rewrites the input model; --out names another file", "give one of the two")
    out = model if args.in_place else Path(args.out)
    contract = embed_contract(model, contract_overrides(args) or {}, out, in_place=args.in_place,
                              overwrite=args.force)
    print(f"wrote {out}: contract version {contract.contract_version}, {contract.task} model {contract.model_id!r}, "
          f"input {contract.input.name} {contract.input.height}x{contract.input.width}, "
          f"outputs {', '.join(o.name for o in contract.outputs)}, classes {', '.join(contract.class_names)}")
    return 0


def _show(args) -> int:
    import json

    import yaml

    from medstream.runtime.errors import ContractError
    from medstream.runtime.models.loader import read_model_contract, resolve_model_file

    model = resolve_model_file(args.model)
    contract = read_model_contract(model, None, required=False)
    if contract is None:
        raise ContractError(f"model {model} carries no medstream contract",
                            f"propose one with: medstream inspect {model} --out contract.yaml, then "
                            "medstream contract embed")
    data = contract.model_dump(mode="json")
    print(json.dumps(data, indent=2) if args.json else yaml.safe_dump(data, sort_keys=False, width=120).rstrip())
    return 0
