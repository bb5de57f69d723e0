"""A run's lifetime: assembly from config (:func:`build_stream`), the :class:`Pipeline` that owns and closes
its source, backend, publisher and CURVE server, the receiver thread, the typed status, and fault injection.

To run a stream: ``with build_stream(load_config(path, flags)) as pipeline: pipeline.run()``.
"""

from medstream.runtime.stream.assembly import build_stream
from medstream.runtime.stream.pipeline import Pipeline, StreamOptions
from medstream.runtime.stream.status import StreamStatus

__all__ = ["Pipeline", "StreamOptions", "StreamStatus", "build_stream"]
