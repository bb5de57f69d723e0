"""Publish a phantom ultrasound or fluoroscopy stream over ZeroMQ, like a scanner would.

The frames come from the ``synthetic://`` source (:mod:`medstream.runtime.sources.synthetic`) and leave
through :class:`medstream.runtime.frame_publisher.FramePublisher`; this command only maps its flags.

``medstream run --source zmq+tcp://127.0.0.1:5555`` subscribes to it. ``--truth`` adds the ground
truth mask to each frame message as a fourth part so any consumer can score overlays live (the
runtime ignores it).

``--publish igtl://127.0.0.1:18944`` plays a PLUS server instead: an OpenIGTLink server sending each frame as
an IMAGE of device ``Image_Reference`` (``?device=NAME`` changes it) with the frame's capture time, a pixel
spacing (``--spacing``) and a tilted image-to-RAS matrix, for ``medstream run --source igtl://...`` or 3D
Slicer to connect to (docs/IGTLINK.md).
"""

from __future__ import annotations

import logging
import signal

HELP = "publish a synthetic ultrasound/fluoroscopy stream over ZeroMQ or OpenIGTLink (like PLUS)"
log = logging.getLogger("medstream.simulate")


def add_arguments(p) -> None:
    p.add_argument("--kind", choices=["ultrasound", "fluoroscopy"], default="ultrasound")
    p.add_argument("--rate", type=float, default=None, help="frames per second (default 30 ultrasound, 15 fluoroscopy)")
    p.add_argument("--motion-fps", type=float, default=None,
                   help="frame rate the phantom's motion is rendered for (default: --rate); fluoroscopy takes 7.5, 15 "
                        "or 30. Set it to send faster or slower than the scene's clock, as benchmarks do")
    p.add_argument("--publish", default="tcp://127.0.0.1:5555",
                   help="endpoint to bind (default tcp://127.0.0.1:5555); igtl://HOST:PORT serves OpenIGTLink like PLUS")
    p.add_argument("--spacing", type=float, default=None,
                   help="OpenIGTLink only: mm per pixel along the image rows (default 0.2; columns get 1.5x it)")
    p.add_argument("--frames", type=int, default=None, help="stop after N frames (default: run until stopped)")
    p.add_argument("--truth", action="store_true", help="attach the ground-truth mask to each frame")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--source-id", default=None)
    p.add_argument("--preload", type=int, default=0,
                   help="render N frames once and loop them (near-zero CPU: for benchmarks on small machines)")
    p.add_argument("--wait-subscribers", type=int, default=0,
                   help="wait until this many subscribers have joined before the first frame (no frame lost to a late joiner)")
    p.add_argument("--wait-timeout", type=float, default=30.0, help="seconds to wait for subscribers")
    p.add_argument("--curve-secret", default=None,
                   help="serve frames over CURVE with this key pair (NAME.key_secret; see docs/SECURITY.md)")
    p.add_argument("--curve-allow", default=None, help="folder of the NAME.key files of receivers allowed to subscribe")
    p.add_argument("--allow-insecure-remote", action="store_true",
                   help="allow binding a non-loopback address without CURVE (isolated networks only)")


def main(args) -> int:
    from medstream.runtime.errors import ConfigError
    from medstream.runtime.frame_publisher import (
        DEFAULT_SPACING_MM,
        open_frame_publisher,
        phantom_geometry,
        publish_source,
    )
    from medstream.runtime.security import CurveServer
    from medstream.runtime.sources import open_source

    rate = args.rate if args.rate is not None else (30.0 if args.kind == "ultrasound" else 15.0)
    if rate < 0:
        raise ConfigError(f"--rate {rate} is negative", "give frames per second, or 0 for as fast as possible")
    uri = f"synthetic://{args.kind}?fps={rate}&seed={args.seed}&width={args.width}&height={args.height}&truth={int(args.truth)}"
    if args.frames is not None:
        uri += f"&frames={args.frames}"
    if args.preload:
        uri += f"&preload={args.preload}"
    if args.motion_fps is not None:
        uri += f"&motion_fps={args.motion_fps}"
    igtl = args.publish.startswith("igtl://")
    if args.spacing is not None and (not igtl or args.spacing <= 0):
        raise ConfigError("--spacing needs an igtl:// --publish endpoint and a positive value",
                          "give e.g. --publish igtl://127.0.0.1:18944 --spacing 0.2")
    geometry = phantom_geometry(args.width, args.height, args.spacing or DEFAULT_SPACING_MM) if igtl else None
    source = open_source(uri, source_id=args.source_id or f"sim-{args.kind}")
    security = None
    if args.curve_secret or args.curve_allow:
        if not (args.curve_secret and args.curve_allow):
            raise ConfigError("CURVE for simulate needs both --curve-secret and --curve-allow",
                              "give this sender's NAME.key_secret and the folder of allowed receivers' NAME.key files")
        security = CurveServer.from_files(args.curve_secret, args.curve_allow, domain="medstream-simulate")
    try:
        publisher = open_frame_publisher(args.publish, security=security, geometry=geometry,
                                         allow_insecure_remote=args.allow_insecure_remote,
                                         what="the simulated frame publisher")
    except BaseException:
        if security is not None:
            security.close()
        raise
    stop = {"flag": False}
    with publisher:
        signal.signal(signal.SIGINT, lambda *_: stop.__setitem__("flag", True))
        signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__("flag", True))
        publisher.wait_for_subscribers(args.wait_subscribers, args.wait_timeout)
        log.info("publishing %s at %.1f fps on %s", args.kind, rate, publisher.endpoint)
        sent = publish_source(source, publisher, stop=lambda: stop["flag"])
        dropped = publisher.dropped if igtl else 0
    log.info("sent %d frames", sent)
    if dropped:
        log.info("OpenIGTLink: %d frames were replaced by newer ones before a slow client took them", dropped)
    print(f"sent {sent} frames")
    return 0
