"""Find the right engine for this model on this device, or build it, or refuse with the reason.

This is the start-up path of the TensorRT backend and of ``medstream build``: the cache's verdict
(:func:`medstream.runtime.engine.cache.check_engine`) decides; a refused engine is never handed to
TensorRT, so a wrong or corrupt file costs a rebuild (or a clear refusal with ``--no-build``), not a
crash in the middle of a procedure.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from medstream.runtime.contract import ModelContract
from medstream.runtime.engine.cache import DeviceFacts, EngineCache, EngineKey, make_key
from medstream.runtime.errors import ModelLoadError

log = logging.getLogger("medstream.engine")


def build_command(onnx_path: str | Path, key: EngineKey, version_compatible: bool = False) -> str:
    dla = f" --dla {key.dla_core}" if key.dla_core is not None else ""
    vc = " --version-compatible" if version_compatible else ""
    return f"medstream build --model {onnx_path} --precision {key.precision}{dla}{vc}"


def obtain_engine(onnx_path: str | Path, contract: ModelContract, facts: DeviceFacts, *,
                  cache: EngineCache | None = None, precision: str = "fp32", dla_core: int | None = None,
                  allow_build: bool = True, require_version_compatible: bool = False,
                  build_options: Any = None, force_build: bool = False) -> tuple[bytes, dict[str, Any], Path]:
    """``(engine bytes, manifest, engine path)`` for ``onnx_path`` on the device ``facts`` describe.

    Parameters
    ----------
    allow_build
        Build (and cache) a new engine when none valid exists; ``False`` (``--no-build``) refuses instead.
    require_version_compatible
        The lean runtime only loads engines built with ``VERSION_COMPATIBLE``; such a requirement
        turns an otherwise valid engine into a rebuild.
    force_build
        Rebuild even when a valid engine exists (``medstream build`` does so on request).

    Raises
    ------
    ModelLoadError
        With ``allow_build=False`` and no valid engine: the message says why the cached one was refused.
    """
    cache = cache or EngineCache()
    key = make_key(onnx_path, facts, precision, dla_core)
    verdict = cache.check(key)
    reason = verdict.reason
    if verdict.ok and require_version_compatible and not verdict.manifest.get("build", {}).get("version_compatible"):
        reason = (f"engine {verdict.engine_path} was built without VERSION_COMPATIBLE, and the lean TensorRT runtime "
                  "only loads version-compatible engines")
    elif verdict.ok and not force_build:
        data, manifest = cache.load(key)
        log.info("%s", verdict.reason)
        return data, manifest, verdict.engine_path
    if not allow_build:
        raise ModelLoadError(f"no usable TensorRT engine for {onnx_path}: {reason}",
                             f"build it on this device with '{build_command(onnx_path, key, require_version_compatible)}'"
                             ", or start without --no-build to let medstream build it now")
    if not force_build:
        log.warning("%s; building a new engine (this can take minutes; progress is logged)", reason)
    from medstream.runtime.engine.builder import BuildOptions, build_engine

    options = build_options or BuildOptions()
    options = replace(options, precision=precision, dla_core=dla_core,
                      version_compatible=options.version_compatible or require_version_compatible,
                      timing_cache=options.timing_cache or cache.timing_cache_path(key))
    engine, build_facts = build_engine(onnx_path, contract, options)
    path = cache.store(key, engine, contract, build_facts)
    data, manifest = cache.load(key)
    return data, manifest, path
