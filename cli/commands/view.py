"""Subscribe to overlays and show them, or save them rendered with latency and frame number.

With ``--web HOST:PORT`` the overlays are served to browsers instead (docs/WEB.md): a page that draws
them on their own frames with their age, the pipeline's health and a stale banner; it needs the
``[web]`` extra (``pip install 'medstream[web]'``). Example, for ``./scripts/demo.sh``'s endpoints::

    medstream view --web 127.0.0.1:8080 --connect tcp://127.0.0.1:5556 --frames-from tcp://127.0.0.1:5555

A window needs a display and an OpenCV built with GUI support; the default install uses
opencv-python-headless (no GUI), so on servers and in CI use ``--save out.mp4`` or ``--save DIR/``.
With ``--frames-from ENDPOINT`` the overlays are drawn on the matching source frames (by ``seq``).

``--connect igtl://127.0.0.1:18945`` reads the label maps of a ``medstream run --publish igtl://...`` sink over
OpenIGTLink instead (as 3D Slicer would; ``?device=NAME`` if the sink's device is not ``Prediction``), and
``--frames-from igtl://HOST:PORT?device=Image_Reference`` takes the frames from the PLUS-like server, matched
to the label maps by timestamp (docs/IGTLINK.md).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from medstream.cli.commands._curve import add_client_curve_arguments, client_curve_from_args

HELP = "show or save overlays received over ZeroMQ or OpenIGTLink"
log = logging.getLogger("medstream.view")


def add_arguments(p) -> None:
    p.add_argument("--connect", default="tcp://127.0.0.1:5556",
                   help="overlay publisher endpoint (default tcp://127.0.0.1:5556); igtl://HOST:PORT reads label maps "
                        "from an OpenIGTLink sink")
    p.add_argument("--frames-from", default=None, help="frame publisher endpoint, to draw overlays on the frames")
    p.add_argument("--save", default=None, help="write rendered overlays to a video (.mp4/.avi) or a folder of PNGs (ends with /)")
    p.add_argument("--count", type=int, default=None, help="stop after N overlays")
    p.add_argument("--timeout", type=float, default=10.0, help="give up after S seconds without an overlay")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate of the saved video")
    add_client_curve_arguments(p)
    web = p.add_argument_group("browser view (docs/WEB.md; needs the [web] extra)")
    web.add_argument("--web", metavar="HOST:PORT", default=None,
                     help="serve a live page here instead of a window, e.g. 127.0.0.1:8080 (loopback by default)")
    web.add_argument("--web-cert", default=None, help="TLS certificate (PEM): required to bind a non-loopback address")
    web.add_argument("--web-key", default=None, help="TLS private key (PEM) for --web-cert")
    web.add_argument("--web-allow-unencrypted-remote", action="store_true",
                     help="serve a non-loopback address without TLS: patient images and the token cross the network "
                          "in clear text (isolated networks only)")
    web.add_argument("--web-stale-ms", type=float, default=1000.0,
                     help="grey the overlay out when the newest one is older than this (default 1000 ms)")
    web.add_argument("--web-image", choices=["jpeg", "png"], default="jpeg", help="how frames go to the page (default jpeg)")
    web.add_argument("--web-jpeg-quality", type=int, default=80, help="JPEG quality 1-100 (default 80)")
    web.add_argument("--frames-server-key", default=None,
                     help="the frame sender's public key when it serves CURVE (uses --curve-client-secret as our key pair)")
    web.add_argument("--web-max-clients", type=int, default=8, help="pages served at once (default 8)")


def main(args) -> int:
    if args.connect.startswith("igtl://"):
        return main_igtl(args)
    if getattr(args, "web", None):
        return main_web(args)
    import cv2
    import zmq

    from medstream.runtime.errors import ConfigError, SourceError
    from medstream.runtime.frame import now_ns
    from medstream.runtime.render import draw_overlay
    from medstream.runtime.security import apply_curve_client
    from medstream.runtime.wire import OVERLAY_TOPIC, STATUS_TOPIC, WireError, decode_overlay, decode_status

    show = args.save is None
    if show and not _has_gui(cv2):
        raise ConfigError("no display window is possible here (no DISPLAY, or OpenCV built without GUI: opencv-python-headless)",
                          "use --save out.mp4 or --save frames/ to write rendered overlays instead")
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, OVERLAY_TOPIC)
    sub.setsockopt(zmq.SUBSCRIBE, STATUS_TOPIC)  # the run's last status says when the stream has ended
    sub.setsockopt(zmq.RCVHWM, 4)
    sub.setsockopt(zmq.LINGER, 0)
    apply_curve_client(sub, client_curve_from_args(args))
    sub.connect(args.connect)
    frames_source = _open_frames(args.frames_from)
    frames: dict[int, object] = {}
    output = _RenderedOutput(cv2, args.save, _save_dir(args.save), args.fps)
    shown, low, last = 0, 0, time.monotonic()
    try:
        while args.count is None or shown < args.count:
            if frames_source is not None:
                _take_frames(frames_source, frames, SourceError, WireError)
            if not sub.poll(20 if frames_source is not None else 200):
                if time.monotonic() - last > args.timeout:
                    if shown == 0:
                        log.error("no overlay from %s for %.0f s; is 'medstream run' publishing there?",
                                  args.connect, args.timeout)
                        return 1
                    log.info("no overlay for %.0f s after %d: the stream has ended", args.timeout, shown)
                    break
                continue
            parts = sub.recv_multipart()
            try:
                if parts[0] == STATUS_TOPIC:
                    status = decode_status(parts)
                    if status.get("state") == "stopped":
                        log.info("the run on %s has stopped (%s) after %d overlays", args.connect,
                                 "its source ended" if status.get("end_of_stream") else "stopped", shown)
                        break
                    continue
                overlay = decode_overlay(parts)
            except WireError as exc:
                log.warning("skipping a malformed message: %s", exc)
                continue
            last = time.monotonic()
            age_ms = (now_ns() - overlay.t_capture_ns) / 1e6
            if frames_source is not None and overlay.seq not in frames:
                _take_frames(frames_source, frames, SourceError, WireError)
            # boxes, labels, heatmaps, points and the LOW CONFIDENCE banner are drawn by runtime/render.py
            image = draw_overlay(frames.pop(overlay.seq, None), overlay, latency_ms=age_ms)
            shown += 1
            low += bool(overlay.low_confidence)
            if not output.emit(image, overlay.seq):
                break
    finally:
        output.close()
        sub.close()
        if frames_source is not None:
            frames_source.close()
    print(f"received {shown} overlays" + (f" ({low} flagged low confidence)" if low else "")
          + (f", saved to {args.save}" if args.save else ""))
    return 0


def main_igtl(args) -> int:
    """``--connect igtl://``: label maps from an OpenIGTLink sink, drawn like ZeroMQ overlays."""
    import cv2

    from medstream.runtime.errors import ConfigError, SourceError
    from medstream.runtime.frame import now_ns
    from medstream.runtime.igtl.receiver import OverlayReceiver
    from medstream.runtime.igtl.server import split_host_port
    from medstream.runtime.render import draw_overlay
    from medstream.runtime.sources import open_source
    from medstream.runtime.wire import WireError

    if getattr(args, "web", None):
        raise ConfigError("--web reads ZeroMQ overlays only", "use --connect tcp://... with --web, or --save with igtl://")
    if args.save is None and not _has_gui(cv2):
        raise ConfigError("no display window is possible here (no DISPLAY, or OpenCV built without GUI)",
                          "use --save out.mp4 or --save frames/ to write rendered overlays instead")
    from urllib.parse import parse_qsl, urlsplit

    host, port = split_host_port(args.connect, default_port=18945)
    device = dict(parse_qsl(urlsplit(args.connect).query)).get("device", "Prediction")
    frames_source = None
    if args.frames_from:
        uri = args.frames_from if args.frames_from.startswith(("igtl://", "zmq+")) else f"zmq+{args.frames_from}"
        frames_source = open_source(uri)
        frames_source.open()
    frames: dict[int, object] = {}  # by capture time: OpenIGTLink carries no seq, the timestamp is shared
    output = _RenderedOutput(cv2, args.save, _save_dir(args.save), args.fps)
    shown, last = 0, time.monotonic()
    receiver = OverlayReceiver(host, port, device=device)
    try:
        while args.count is None or shown < args.count:
            if frames_source is not None:
                _take_frames(frames_source, frames, SourceError, WireError, key="t_capture_ns")
            try:
                overlay = receiver.read(0.02 if frames_source is not None else 0.2)
            except SourceError as exc:
                log.info("%s after %d overlays", exc.what, shown)
                break
            if overlay is None:
                if time.monotonic() - last > args.timeout:
                    if shown == 0:
                        log.error("no label map from %s for %.0f s; is 'medstream run --publish %s' running?",
                                  args.connect, args.timeout, args.connect)
                        return 1
                    log.info("no label map for %.0f s after %d: the stream has ended", args.timeout, shown)
                    break
                continue
            last = time.monotonic()
            if frames_source is not None and overlay.t_capture_ns not in frames:
                _take_frames(frames_source, frames, SourceError, WireError, key="t_capture_ns")
            image = draw_overlay(frames.pop(overlay.t_capture_ns, None), overlay,
                                 latency_ms=(now_ns() - overlay.t_capture_ns) / 1e6)
            shown += 1
            if not output.emit(image, shown):
                break
    finally:
        receiver.close()
        output.close()
        if frames_source is not None:
            frames_source.close()
    print(f"received {shown} label maps over OpenIGTLink" + (f", saved to {args.save}" if args.save else ""))
    return 0


def _open_frames(endpoint: str | None):
    """The frame publisher as a source (runtime/sources owns reading frames), or ``None``."""
    if not endpoint:
        return None
    from medstream.runtime.sources import open_source

    uri = endpoint if endpoint.startswith("zmq+") else f"zmq+{endpoint}"
    source = open_source(uri)
    source.open()
    return source


def _take_frames(source, frames: dict[int, object], source_error: type, wire_error: type, key: str = "seq") -> None:
    """Keep the newest 64 frames by ``key`` (seq; capture time for OpenIGTLink), reading what has arrived (never waits)."""
    for _ in range(64):
        try:
            frame = source.read(timeout=0)
        except wire_error:
            continue
        except source_error as exc:
            log.warning("frames from %s: %s", source.uri.raw, exc)
            return
        if frame is None:
            return
        frames[getattr(frame, key)] = frame.image.copy()
        while len(frames) > 64:
            frames.pop(next(iter(frames)))


def _save_dir(save: str | None) -> Path | None:
    """``--save DIR/`` (or an existing folder): PNGs go there, created if needed."""
    if save and (save.endswith("/") or Path(save).is_dir()):
        Path(save).mkdir(parents=True, exist_ok=True)
        return Path(save)
    return None


class _RenderedOutput:
    """Where rendered overlays go: a folder of PNGs, a video file, or a window (one place for both wires)."""

    def __init__(self, cv2, save: str | None, save_dir: Path | None, fps: float) -> None:
        self.cv2, self.save, self.save_dir, self.fps = cv2, save, save_dir, fps
        self.writer = None

    def emit(self, image, number: int) -> bool:
        """Write or show ``image``; ``False`` when the user closed the window (q or Esc)."""
        cv2 = self.cv2
        if self.save_dir is not None:
            cv2.imwrite(str(self.save_dir / f"{number:08d}.png"), image)
        elif self.save:
            if self.writer is None:
                from medstream.runtime.errors import ConfigError

                fourcc = cv2.VideoWriter_fourcc(*("mp4v" if self.save.endswith(".mp4") else "MJPG"))
                self.writer = cv2.VideoWriter(self.save, fourcc, self.fps, (image.shape[1], image.shape[0]))
                if not self.writer.isOpened():
                    raise ConfigError(f"cannot write video {self.save}",
                                      "use a .avi/.mp4 path in a writable folder, or a folder/")
            self.writer.write(image)
        else:
            cv2.imshow("medstream", image)
            if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                return False
        return True

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


def _has_gui(cv2) -> bool:
    if os.name != "nt" and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        return False
    info = cv2.getBuildInformation()
    gui_line = next((line for line in info.splitlines() if "GUI:" in line), "")
    return "NONE" not in gui_line.upper() and gui_line != ""


def main_web(args) -> int:
    """``--web``: serve the page until Ctrl-C / SIGTERM (docs/WEB.md)."""
    from medstream.runtime.errors import ConfigError, require

    require("starlette", "web", "medstream view --web")
    from medstream.runtime.web.feeds import FrameFeed, OverlayFeed, wait_stopped
    from medstream.runtime.web.hub import ViewHub
    from medstream.runtime.web.server import WebOptions, check_web_bind, parse_bind, serve

    if args.save:
        raise ConfigError("--web and --save cannot be combined", "run two viewers: one with --web, one with --save")
    if args.web_stale_ms <= 0 or not 1 <= args.web_jpeg_quality <= 100 or args.web_max_clients < 1:
        raise ConfigError("--web-stale-ms must be > 0, --web-jpeg-quality 1..100, --web-max-clients >= 1",
                          "fix the value named in the command line")
    host, port = parse_bind(args.web)
    opts = WebOptions(host=host, port=port, certfile=args.web_cert, keyfile=args.web_key,
                      allow_unencrypted_remote=args.web_allow_unencrypted_remote, stale_ms=args.web_stale_ms,
                      max_clients=args.web_max_clients)
    check_web_bind(opts)  # before any socket: a refused bind must not leave subscribers behind
    # the overlay publisher (medstream run) and the frame sender each have their own server key
    curve = client_curve_from_args(args) if args.curve_server_key or not args.frames_server_key else None
    frames_curve = None
    if args.frames_server_key:
        if not args.curve_client_secret:
            raise ConfigError("--frames-server-key needs --curve-client-secret (our key pair)",
                              "give both, see docs/SECURITY.md")
        from medstream.runtime.security import client_curve

        frames_curve = client_curve(args.curve_client_secret, args.frames_server_key)
    hub = ViewHub(with_frames=bool(args.frames_from), stale_s=args.web_stale_ms / 1e3, image_format=args.web_image,
                  jpeg_quality=args.web_jpeg_quality)
    feeds = [OverlayFeed(hub, args.connect, curve)]
    if args.frames_from:
        feeds.append(FrameFeed(hub, args.frames_from, frames_curve))
    info = {"overlay_endpoint": args.connect, "frames_endpoint": args.frames_from, "curve": curve is not None}

    def ready(url: str) -> None:
        log.info("web view on %s (overlays from %s%s)", url.split("?", 1)[0], args.connect,
                 f", frames from {args.frames_from}" if args.frames_from else ", no frames: overlays on black")
        print(f"medstream web view: open {url}", flush=True)

    for f in feeds:
        f.start()
    try:
        serve(hub, opts, info, on_ready=ready)
    finally:
        wait_stopped(feeds)
    c = hub.counters
    print(f"web view stopped: {c['overlays_in']} overlays, {c['frames_in']} frames received; "
          f"{c['overlay_without_frame']} overlays without their frame", flush=True)
    return 0
