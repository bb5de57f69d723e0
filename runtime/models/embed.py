"""Write a medstream contract into an existing ONNX file, without PyTorch: ``medstream contract embed``.

A model exported elsewhere carries no contract; :func:`embed_contract` validates one (the file's fields
merged over any contract the model already carries, through
:func:`medstream.runtime.models.loader.read_model_contract`, exactly as a run would resolve them), checks
it against the graph as a run does at load (:func:`medstream.runtime.decoders.validate.check_model_io`:
tensor names, ranks, layouts, channel counts against the task and classes), and writes a copy of the model with the contract in its
``metadata_props`` (:func:`medstream.runtime.contract.write_contract`) atomically: a crash leaves either
the old file or the complete new one. The graph and weights are copied byte for byte; only the metadata
changes. Overwriting the input needs ``in_place=True``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medstream.runtime.contract import ModelContract, write_contract
from medstream.runtime.errors import ConfigError, ModelLoadError


def embed_contract(model: str | Path, overrides: dict[str, Any], out: str | Path, *,
                   in_place: bool = False, overwrite: bool = False) -> ModelContract:
    """Write ``model`` with the contract ``overrides`` (merged over an embedded one) to ``out``; return the contract.

    Raises
    ------
    ConfigError
        ``out`` is the input without ``in_place``, or exists without ``overwrite``.
    ContractError
        The contract is incomplete or invalid, or does not fit the graph (names, ranks, layouts, channel
        counts against the task and classes: :func:`medstream.runtime.decoders.validate.check_model_io`,
        the check every run makes at load).
    ModelLoadError
        The model is missing, empty or not ONNX.
    """
    import onnx

    from medstream.runtime.decoders.validate import check_model_io, model_io_from_onnx
    from medstream.runtime.files import write_bytes_atomic
    from medstream.runtime.models.loader import read_model_contract

    src, dst = Path(model), Path(out)
    same = dst.resolve() == src.resolve() if dst.exists() else False
    if same and not in_place:
        raise ConfigError(f"--out {dst} is the input model; embed does not overwrite it unless asked",
                          "give another --out, or --in-place to rewrite the model itself")
    if dst.exists() and not same and not overwrite:
        raise ConfigError(f"--out {dst} exists; embed did not overwrite it", "give another --out, or add --force")
    if src.suffix.lower() != ".onnx":
        raise ModelLoadError(f"{src} is not an ONNX file; a contract is embedded in .onnx models",
                             "pass the .onnx model (engines carry their contract in the manifest 'medstream build' "
                             "writes)")
    contract = read_model_contract(src, overrides)  # validates, exactly as a run resolves it
    assert contract is not None  # required=True
    proto = onnx.load(str(src))
    check_model_io(contract, model_io_from_onnx(src))  # what the loader would refuse is refused now, not at run
    write_contract(proto, contract)
    write_bytes_atomic(dst, proto.SerializeToString(), durable=True)
    return contract


__all__ = ["embed_contract"]
