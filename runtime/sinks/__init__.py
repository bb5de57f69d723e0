"""Where overlays and status go: one sink per ``--publish`` endpoint, chosen by the endpoint's scheme.

| endpoint | sink |
| --- | --- |
| ``tcp://HOST:PORT``, ``ipc://PATH``, ``inproc://NAME`` | ZeroMQ PUB (docs/WIRE.md), :mod:`.zmq_sink` |
| ``igtl://HOST:PORT?device=Prediction`` | OpenIGTLink server for 3D Slicer (docs/IGTLINK.md), :mod:`.igtl_sink` |

:func:`open_sinks` binds them all (or none: a failure closes what was already bound) and returns one
:class:`~medstream.runtime.sinks.fanout.OverlaySinks`. Modules load when their scheme is used.
"""

from __future__ import annotations

import importlib
from contextlib import ExitStack
from typing import Any

from medstream.runtime.errors import ConfigError
from medstream.runtime.sinks.base import OverlaySink
from medstream.runtime.sinks.fanout import OverlaySinks

#: endpoint scheme -> "module:Class"
REGISTRY: dict[str, str] = {
    "tcp": "medstream.runtime.sinks.zmq_sink:Publisher",
    "ipc": "medstream.runtime.sinks.zmq_sink:Publisher",
    "inproc": "medstream.runtime.sinks.zmq_sink:Publisher",
    "igtl": "medstream.runtime.sinks.igtl_sink:IgtlSink",
}
ZMQ_SCHEMES = ("tcp", "ipc", "inproc")


def scheme_of(endpoint: str) -> str:
    return endpoint.split("://", 1)[0].lower() if "://" in endpoint else ""


def check_endpoint(endpoint: str) -> str:
    """Refuse an endpoint no sink serves (config validation calls this)."""
    if scheme_of(endpoint) not in REGISTRY:
        raise ValueError(f"{endpoint!r} is not a publish endpoint; use one of: "
                         + ", ".join(f"{s}://" for s in REGISTRY) + " (e.g. tcp://127.0.0.1:5556)")
    return endpoint


def open_sink(endpoint: str, **options: Any) -> OverlaySink:
    """Bind one sink for ``endpoint``. ``options`` go to the sink (ZeroMQ: ``send_hwm``, ``context``, ``security``)."""
    target = REGISTRY.get(scheme_of(endpoint))
    if target is None:
        raise ConfigError(f"no sink serves {endpoint!r}", "use one of: " + ", ".join(f"{s}://" for s in REGISTRY))
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    return cls(endpoint, **options)


def open_sinks(endpoints: list[str], options_for: Any) -> OverlaySinks:
    """Bind every endpoint; ``options_for(endpoint)`` gives each sink its options. All or nothing."""
    with ExitStack() as undo:
        sinks = []
        for endpoint in endpoints:
            sink = open_sink(endpoint, **options_for(endpoint))
            undo.callback(sink.close)
            sinks.append(sink)
        undo.pop_all()
    return OverlaySinks(sinks)


__all__ = ["REGISTRY", "ZMQ_SCHEMES", "OverlaySink", "OverlaySinks", "check_endpoint", "open_sink", "open_sinks",
           "scheme_of"]
