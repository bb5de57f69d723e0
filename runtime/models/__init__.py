"""The reference models bundled with medstream, trained on the phantom streams (see README.md here).

``bundled_model_path("ultrasound")`` gives the vessel + needle segmenter, ``"fluoroscopy"`` the
guidewire/catheter segmenter, ``"needle-classifier"`` a needle present/absent classifier and
``"ultrasound-detector"`` a vessel + needle box detector (both ultrasound, 128 x 128 input). Both carry their model contract inside the ONNX file, so nothing else
is needed to run them. They are trained and exported reproducibly by
``python -m medstream.export.reference_models --out runtime/models``.
"""

from __future__ import annotations

from pathlib import Path

from medstream.runtime.errors import ConfigError, ModelLoadError

MODELS_DIR = Path(__file__).resolve().parent

#: bundled name -> file name in this folder
BUNDLED: dict[str, str] = {
    "ultrasound": "ultrasound_unet.onnx",
    "fluoroscopy": "fluoroscopy_unet.onnx",
    "needle-classifier": "needle_classifier.onnx",  # needle present / absent (issue 13)
    "ultrasound-detector": "ultrasound_detector.onnx",  # vessel and needle boxes (issue 13)
}


def bundled_model_path(name: str | Path) -> Path:
    """The path of a bundled model by name, or ``name`` itself when it is a model file.

    Parameters
    ----------
    name
        ``"ultrasound"`` or ``"fluoroscopy"``, or a path to an existing model file (returned as is,
        so every ``--model`` option can take either).

    Raises
    ------
    ConfigError
        ``name`` is neither a bundled model nor an existing file; the message lists the bundled names.
    ModelLoadError
        The bundled file is missing from the installation.
    """
    text = str(name)
    key = text.strip().lower()
    if key in BUNDLED:
        path = MODELS_DIR / BUNDLED[key]
        if not path.is_file():
            raise ModelLoadError(
                f"the bundled {key} model {path} is missing from this installation",
                "reinstall medstream, or rebuild it with: python -m medstream.export.reference_models --out "
                f"{MODELS_DIR}",
            )
        return path
    path = Path(text).expanduser()
    if path.is_file():
        return path
    raise ConfigError(
        f"model {text!r} is neither a bundled model nor an existing file",
        f"use one of the bundled models ({', '.join(sorted(BUNDLED))}) or the path of an .onnx/.engine file",
    )


CHECKSUMS = MODELS_DIR / "SHA256SUMS"


def bundled_checksums() -> dict[str, str]:
    """File name -> SHA-256 of every bundled model file, from ``SHA256SUMS`` (``sha256sum`` format)."""
    if not CHECKSUMS.is_file():
        return {}
    sums = {}
    for line in CHECKSUMS.read_text(encoding="utf-8").splitlines():
        digest, _, name = line.strip().partition("  ")
        if digest and name:
            sums[name] = digest
    return sums


def write_checksums(folder: str | Path = MODELS_DIR) -> Path:
    """Write ``SHA256SUMS`` for the model files in ``folder`` (run after training or calibrating bundled models)."""
    from medstream.runtime.files import sha256_file, write_text_atomic

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix in (".onnx", ".cache") and p.is_file())
    return write_text_atomic(folder / "SHA256SUMS", "".join(f"{sha256_file(p)}  {p.name}\n" for p in files))


def bundled_names() -> tuple[str, ...]:
    """Names accepted by :func:`bundled_model_path`."""
    return tuple(sorted(BUNDLED))


__all__ = ["BUNDLED", "CHECKSUMS", "MODELS_DIR", "bundled_checksums", "bundled_model_path", "bundled_names",
           "write_checksums"]


def int8_cpu_variant(int8_path: str | Path) -> Path:
    """``M.int8.onnx`` -> ``M.int8-cpu.onnx``: the asymmetric (U8S8) twin that ``medstream calibrate`` writes.

    TensorRT needs symmetric int8 Q/DQ (``M.int8.onnx``); ONNX Runtime on a CPU runs the U8S8 twin
    about 1.6x faster than the symmetric file. One calibration writes both; each backend takes its own.
    """
    p = Path(int8_path)
    stem = p.name[: -len(".onnx")] if p.name.endswith(".onnx") else p.name
    return p.with_name(f"{stem}-cpu.onnx")
