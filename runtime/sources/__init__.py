"""Frame sources, chosen by URI scheme (see :mod:`medstream.runtime.sources.base`).

| URI | source |
| --- | --- |
| ``synthetic://ultrasound``, ``synthetic://fluoroscopy`` | phantom simulator with ground truth |
| ``zmq+tcp://HOST:PORT``, ``zmq+ipc://PATH`` | frames published by another process (wire format) |
| ``file://PATH`` or a bare path | a video file or a folder of images/``.npy`` |
| ``v4l2:///dev/videoN`` | a capture card or camera through OpenCV |
| ``gst://PIPELINE`` | a GStreamer pipeline through OpenCV (from config or command line only) |
| ``igtl://HOST:PORT?device=NAME`` | IMAGE messages from an OpenIGTLink server (PLUS; docs/IGTLINK.md) |

Modules are imported when their scheme is used, so a missing optional backend of OpenCV only
matters to the user who asks for it.

This package is the only reader of frames in medstream:

* to read a live stream frame by frame, call :func:`open_source` (the pipeline, ``medstream record``);
* to read up to N frames, call :func:`read_frames`; with ground truth, :func:`read_labelled_frames`
  (evaluation, calibration data, training folders);
* the frame-folder format (image suffixes, mask names, ``.truth.npy``, ``.json`` headers) is defined
  once, in :mod:`medstream.runtime.sources.folder_format`.
"""

from __future__ import annotations

import importlib

from medstream.runtime.errors import ConfigError
from medstream.runtime.sources.base import Source, SourceURI, parse_uri

#: scheme -> "module:Class"
REGISTRY: dict[str, str] = {
    "synthetic": "medstream.runtime.sources.synthetic:SyntheticSource",
    "zmq+tcp": "medstream.runtime.sources.zmq_source:ZmqSource",
    "zmq+ipc": "medstream.runtime.sources.zmq_source:ZmqSource",
    "file": "medstream.runtime.sources.file_source:FileSource",
    "v4l2": "medstream.runtime.sources.capture:CaptureSource",
    "gst": "medstream.runtime.sources.capture:CaptureSource",
    "igtl": "medstream.runtime.sources.igtl_source:IgtlSource",
}


#: Schemes whose URI text runs as a pipeline (any GStreamer element): only trusted callers open them.
PIPELINE_SCHEMES = frozenset({"gst"})


def open_source(uri: str, source_id: str | None = None, *, allow_pipeline_uris: bool = False,
                **options) -> Source:
    """Construct the source for ``uri`` (not yet opened). Unknown schemes are refused with the list.

    ``allow_pipeline_uris`` must be ``True`` to open a ``gst://`` pipeline. Pass it only where the URI
    comes from the operator's own config file or command line, never from a network message.
    """
    parsed = parse_uri(uri)
    target = REGISTRY.get(parsed.scheme)
    if target is None:
        raise ConfigError(f"unknown source scheme {parsed.scheme!r} in {uri!r}",
                          f"use one of: {', '.join(sorted(REGISTRY))}:// (or a plain file path)")
    if parsed.scheme in PIPELINE_SCHEMES:
        options["allow_pipeline_uris"] = allow_pipeline_uris
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(parsed, source_id=source_id, **options)


def read_frames(uri: str, limit: int, **options):
    """Up to ``limit`` frames from ``uri``, unpaced (see :func:`medstream.runtime.sources.reading.read_frames`)."""
    from medstream.runtime.sources.reading import read_frames as _read

    return _read(uri, limit, **options)


def read_labelled_frames(uri: str, limit: int, **options):
    """Up to ``limit`` frames that all carry truth (see :mod:`medstream.runtime.sources.reading`)."""
    from medstream.runtime.sources.reading import read_labelled_frames as _read

    return _read(uri, limit, **options)


__all__ = ["PIPELINE_SCHEMES", "REGISTRY", "Source", "SourceURI", "open_source", "parse_uri", "read_frames",
           "read_labelled_frames"]
