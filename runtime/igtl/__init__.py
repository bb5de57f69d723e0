"""OpenIGTLink (issue 15): the messages and the TCP transport shared by the ``igtl://`` source, sink and sender.

OpenIGTLink is the protocol PLUS servers, 3D Slicer (OpenIGTLinkIF) and most image-guided-therapy tools
speak: one TCP stream of messages, each a 58-byte big-endian header (version, type, device name,
timestamp, body size, CRC-64 of the body) and a body. docs/IGTLINK.md shows the set-up with PLUS and Slicer.

* :mod:`.messages`: checking and decoding a header and an IMAGE body (every malformed message raises
  :class:`~medstream.runtime.wire.WireError` with the reason it is counted under), and packing the
  messages medstream sends. The message classes are pyigtl's (MIT, from the SlicerIGT team; the ``[igtl]``
  extra), imported lazily.
* :mod:`.stream`: cutting a TCP byte stream into messages without blocking (:class:`.stream.MessageReader`).
* :mod:`.server`: a listening OpenIGTLink server that sends the newest messages to every connected
  client, each client on its own thread with a one-slot queue (:class:`.server.IgtlServer`).

Why not pyigtl's own ``OpenIGTLinkServer``/``OpenIGTLinkClient`` (measured and read in pyigtl 0.3.4): the
client never checks the CRC and drops unknown message types silently (nothing could be counted), the
server serves one client at a time from a shared 100-message queue (a stalled Slicer would hold the
others' messages), it replaces the process's SIGINT/SIGTERM handlers, and receivers poll every 10 ms.
Its message classes are fast enough (pack + CRC of a 1024x768 8-bit IMAGE: 3.0 ms; unpack 0.16 ms plus
the CRC check 2.1 ms; ``benchmarks/igtl_glass.py --codec``), so those are used as they are.
"""

from __future__ import annotations

IGTL_SCHEME = "igtl"

__all__ = ["IGTL_SCHEME"]
