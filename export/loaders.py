"""Load a user's PyTorch model for export, in whichever form they keep it.

Three forms are accepted, because that is how trained models actually sit on disk:

* ``package.module:ClassName`` (or ``path/to/file.py:ClassName``, or a factory function) plus a
  ``state_dict`` file (``.pt``/``.pth``, also a checkpoint dict holding ``state_dict`` or ``model``).
  The weights are read with ``torch.load(weights_only=True)``: a weights file cannot run code.
* A TorchScript archive (``torch.jit.save``), ``.pt``/``.pth``/``.ts`` without ``--weights``.
* A ``torch.export`` archive (``torch.export.save``), ``.pt2``.

Whole pickled modules (``torch.save(model)``) are refused: loading them runs arbitrary code and ties
the file to the exact source tree that produced it. The error says how to convert one.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from medstream.runtime.errors import ConfigError, ModelLoadError, require


def _torch():
    return require("torch", "train", "loading a PyTorch model for export")


def parse_model_kwargs(text: str | None) -> dict[str, Any]:
    """``--model-kwargs '{"n_classes": 3}'`` to a dict (a clear error for bad JSON)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--model-kwargs is not valid JSON: {exc}",
                          "write it as a JSON object, e.g. '{\"n_classes\": 3}'") from None
    if not isinstance(value, dict):
        raise ConfigError("--model-kwargs must be a JSON object", "e.g. '{\"n_classes\": 3}'")
    return value


def import_object(spec: str) -> Any:
    """Import ``module.path:Name`` or ``file.py:Name`` and return the named object."""
    module_part, _, name = spec.rpartition(":")
    if not module_part or not name:
        raise ConfigError(f"model {spec!r} is not of the form module.path:ClassName",
                          "give e.g. mypackage.models:UNet, path/to/net.py:UNet, a TorchScript .pt or a .pt2")
    if module_part.endswith(".py"):
        path = Path(module_part).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"model source file {path} does not exist", "check the path before the ':'")
        mod_name = f"_medstream_user_model_{abs(hash(str(path)))}"
        loader_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as exc:
            raise ModelLoadError(f"importing {path} failed: {type(exc).__name__}: {exc}",
                                 "fix the error in that file (it must import without side effects)") from exc
    else:
        try:
            module = importlib.import_module(module_part)
        except ImportError as exc:
            raise ConfigError(f"cannot import module {module_part!r}: {exc}",
                              "install the package that defines the model, or give path/to/file.py:ClassName") from None
    try:
        return getattr(module, name)
    except AttributeError:
        raise ConfigError(f"module {module_part!r} has no {name!r}",
                          f"names it defines: {', '.join(n for n in dir(module) if not n.startswith('_'))[:300]}") from None


def load_state_dict(path: str | Path) -> dict[str, Any]:
    """Read a state_dict (or a checkpoint holding one) safely, stripping DataParallel's ``module.`` prefix."""
    torch = _torch()
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"weights file {path} does not exist", "check --weights")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds here
        raise ModelLoadError(
            f"cannot read weights {path} as a state_dict: {str(exc).splitlines()[0][:200]}",
            "save weights with torch.save(model.state_dict(), path); whole pickled models are not loaded "
            "because that runs arbitrary code",
        ) from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(hasattr(v, "shape") for v in obj.values()):
        raise ModelLoadError(f"{path} does not hold a state_dict of tensors",
                             "save it with torch.save(model.state_dict(), path)")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _wrap_exported_program(graph_module: Any) -> Any:
    """Wrap ``ExportedProgram.module()`` so the ONNX exporter may call ``.train(False)`` on it.

    ``torch.export`` graph modules refuse ``train()``: their mode was fixed when they were exported.
    """
    torch = _torch()

    class ExportedProgramModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = graph_module

        def train(self, mode: bool = True) -> ExportedProgramModule:  # noqa: ARG002 - fixed at export time
            return self

        def forward(self, *args: Any) -> Any:
            return self.inner(*args)

    return ExportedProgramModule()


def load_torch_model(spec: str, weights: str | Path | None = None, model_kwargs: dict[str, Any] | None = None) -> Any:
    """Return the user's model as an ``nn.Module`` in eval mode (see module docstring for ``spec``).

    Raises
    ------
    ConfigError, ModelLoadError
        Naming the file or import that failed and what to give instead.
    """
    torch = _torch()
    path = Path(spec).expanduser()
    if path.suffix == ".pt2":
        if not path.is_file():
            raise ModelLoadError(f"torch.export archive {path} does not exist", "check --model")
        try:
            program = torch.export.load(str(path))
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"cannot load torch.export archive {path}: {str(exc).splitlines()[0][:200]}",
                                 "save it with torch.export.save(torch.export.export(model.eval(), args), path)") from None
        return _wrap_exported_program(program.module())
    if path.suffix in (".pt", ".pth", ".ts", ".jit") and ":" not in spec:
        if weights is not None:
            raise ConfigError(f"--weights given with a model file {path}",
                              "a TorchScript file carries its weights; for a state_dict give --model module:Class --weights FILE")
        if not path.is_file():
            raise ModelLoadError(f"model file {path} does not exist", "check --model")
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated upstream, but users still have such files
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception:  # noqa: BLE001
            raise ModelLoadError(
                f"{path} is not a TorchScript archive",
                "if it is a state_dict, give --model module.path:ClassName --weights " f"{path}; if it is a whole "
                "pickled model, load it in Python and save model.state_dict() or torch.jit.script(model) instead",
            ) from None
        return module.eval()
    factory = import_object(spec)
    try:
        model = factory(**(model_kwargs or {}))
    except TypeError as exc:
        raise ConfigError(f"cannot construct {spec}: {exc}",
                          "pass the constructor's arguments with --model-kwargs '{\"name\": value}'") from None
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"{spec} did not produce a torch.nn.Module (got {type(model).__name__})",
                          "point --model at an nn.Module class or a function returning one")
    if weights is not None:
        state = load_state_dict(weights)
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ModelLoadError(
                f"weights {weights} do not fit {spec}: missing {list(result.missing_keys)[:5]}"
                f"{'...' if len(result.missing_keys) > 5 else ''}, unexpected {list(result.unexpected_keys)[:5]}"
                f"{'...' if len(result.unexpected_keys) > 5 else ''}",
                "check that --model and --model-kwargs build the same architecture the weights were trained with",
            )
    return model.eval()
