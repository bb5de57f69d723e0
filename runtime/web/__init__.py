"""The browser view: ``medstream view --web 127.0.0.1:8080`` (docs/WEB.md).

Why a runtime package and not a CLI module: the server is a consumer of the runtime's own contracts
(the wire format, the source layer, CURVE, the bind rules of :mod:`medstream.runtime.security`) and
other front ends (a service unit, a future ``medstream web`` command) should reuse it; ``cli/`` only
parses flags and calls :func:`medstream.runtime.web.server.serve`. Nothing in the runtime imports this
package, and its web stack (Starlette, uvicorn, websockets; the ``[web]`` extra) is imported lazily
only by :mod:`medstream.runtime.web.server`.

Modules, one job each:

* :mod:`~medstream.runtime.web.slots`: latest-only delivery to one browser (drops counted per client);
* :mod:`~medstream.runtime.web.encode`: frames to JPEG/PNG, overlays to JSON + PNG mask, one binary
  websocket message per view;
* :mod:`~medstream.runtime.web.hub`: pairs each overlay with its own frame (seq and capture time) and
  hands the view to every client's slot;
* :mod:`~medstream.runtime.web.feeds`: the threads that read frames (through
  :func:`medstream.runtime.sources.open_source`), overlays and status (a SUB socket);
* :mod:`~medstream.runtime.web.server`: the Starlette app, token check, TLS and bind rules, uvicorn.
"""
