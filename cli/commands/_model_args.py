"""The ``--contract FILE.yaml`` argument group, declared once and shared by the tools that open a model.

``calibrate``, ``evaluate``, ``bench`` and ``build`` all accept a model that carries no medstream contract
(somebody else's ONNX) when the user gives one in a file (Polygraphy's pattern: an argument group is
declared once and each tool adds it). The file holds the same keys as the ``contract:`` section of a run
config (docs/MODEL_CONTRACT.md); a whole run config with a ``contract:`` key is accepted too, and
``medstream inspect MODEL.onnx --out contract.yaml`` writes a proposal to start from.

The contract itself is always read through :func:`medstream.runtime.models.loader.read_model_contract`
(the one place a model file is opened to learn what it is); this module only turns the file into the
``overrides`` mapping and words the errors for the command line (the way out is ``--contract``, not a
config section the command does not read).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

CONTRACT_HELP = ("YAML/JSON with the model contract's fields, for a model that carries none (or to override "
                 "single fields of the one it carries); 'medstream inspect MODEL.onnx --out FILE.yaml' proposes one")


def add_contract_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``model contract`` group (``--contract FILE``) to a command's parser."""
    group = parser.add_argument_group("model contract (docs/MODEL_CONTRACT.md)")
    group.add_argument("--contract", default=None, metavar="FILE.yaml", help=CONTRACT_HELP)


def load_contract_file(path: str | Path | None) -> dict[str, Any] | None:
    """Contract fields from a YAML/JSON file; a top-level ``contract:`` key (a run config) is accepted too.

    Raises
    ------
    ConfigError
        The file is missing, not YAML, or not a mapping: named, with the fix.
    """
    if path is None:
        return None
    import yaml

    from medstream.runtime.errors import ConfigError

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"contract file {file} does not exist",
                          "check --contract; 'medstream inspect MODEL.onnx --out FILE.yaml' writes a proposal")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"contract file {file} is not valid YAML: {first}",
                          "fix the file (JSON is valid YAML too)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"contract file {file} must hold a mapping of contract fields, got {type(data).__name__}",
                          "see docs/MODEL_CONTRACT.md, or start from 'medstream inspect MODEL.onnx --out FILE.yaml'")
    return data["contract"] if isinstance(data.get("contract"), dict) else data


def contract_overrides(args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``--contract`` file of a parsed command line as an overrides mapping (``None`` without one)."""
    return load_contract_file(getattr(args, "contract", None))


def read_contract_for(model: str | Path, args: argparse.Namespace, what: str):
    """The contract of ``model`` (embedded, merged with ``--contract``), or an error whose way out is ``--contract``.

    Parameters
    ----------
    model
        The resolved model file.
    args
        The parsed command line (its ``contract`` attribute).
    what
        The command, for the error ("calibrate", "build", ...).

    Raises
    ------
    ConfigError
        The model carries no contract and no ``--contract`` was given.
    ContractError
        The merged contract is incomplete or invalid (the fix names the ``--contract`` file).
    """
    from medstream.runtime.errors import ConfigError, ContractError
    from medstream.runtime.models.loader import read_model_contract

    overrides = contract_overrides(args)
    try:
        found = read_model_contract(model, overrides, required=False)
    except ContractError as exc:
        if overrides is None:
            raise
        raise ContractError(f"{exc.what} (with --contract {args.contract})",
                            f"add or fix those fields in {args.contract} (keys as in docs/MODEL_CONTRACT.md; "
                            f"'medstream inspect {model} --out FILE.yaml' proposes them all)") from None
    if found is None:
        raise ConfigError(f"model {model} carries no medstream contract, so '{what}' does not know its input, "
                          "outputs and classes",
                          f"give one with --contract FILE.yaml: 'medstream inspect {model} --out FILE.yaml' proposes "
                          "one (confirm the lines marked GUESS), or embed it once with 'medstream contract embed'")
    return found


def model_with_contract(model: Path, args: argparse.Namespace, what: str) -> Path:
    """``model`` itself (checked to carry a contract), or with ``--contract``, a temporary copy with it embedded.

    For tools that hand the model file to other processes or libraries that read its embedded contract
    (``bench`` runs ``medstream run`` and the naive loop as subprocesses): the copy is validated and
    written by :func:`medstream.runtime.models.embed.embed_contract` into a temporary folder removed
    when this process exits.
    """
    read_contract_for(model, args, what)  # the errors worded for --contract, before anything runs or is written
    if getattr(args, "contract", None) is None:
        return model
    import atexit
    import shutil
    import tempfile

    from medstream.runtime.models.embed import embed_contract

    folder = Path(tempfile.mkdtemp(prefix=f"medstream-{what}-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    copy = folder / f"{model.stem}.contract.onnx"
    embed_contract(model, contract_overrides(args) or {}, copy)
    return copy


__all__ = ["CONTRACT_HELP", "add_contract_arguments", "contract_overrides", "load_contract_file", "model_with_contract",
           "read_contract_for"]
