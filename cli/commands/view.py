"""Subscribe to overlays and show them, or save them rendered with latency and frame number.

A window needs a display and an OpenCV built with GUI support; the default install uses
opencv-python-headless (no GUI), so on servers and in CI use ``--save out.mp4`` or ``--save DIR/``.
With ``--frames-from ENDPOINT`` the overlays are drawn on the matching source frames (by ``seq``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from medstream.cli.commands._curve import add_client_curve_arguments, client_curve_from_args

HELP = "show or save overlays received over ZeroMQ"
log = logging.getLogger("medstream.view")


def add_arguments(p) -> None:
    p.add_argument("--connect", default="tcp://127.0.0.1:5556", help="overlay publisher endpoint (default tcp://127.0.0.1:5556)")
    p.add_argument("--frames-from", default=None, help="frame publisher endpoint, to draw overlays on the frames")
    p.add_argument("--save", default=None, help="write rendered overlays to a video (.mp4/.avi) or a folder of PNGs (ends with /)")
    p.add_argument("--count", type=int, default=None, help="stop after N overlays")
    p.add_argument("--timeout", type=float, default=10.0, help="give up after S seconds without an overlay")
    p.add_argument("--fps", type=float, default=30.0, help="frame rate of the saved video")
    add_client_curve_arguments(p)


def main(args) -> int:
    import cv2
    import zmq

    from medstream.runtime.errors import ConfigError
    from medstream.runtime.frame import now_ns
    from medstream.runtime.render import draw_overlay
    from medstream.runtime.security import apply_curve_client
    from medstream.runtime.wire import OVERLAY_TOPIC, WireError, decode_frame, decode_overlay

    show = args.save is None
    if show and not _has_gui(cv2):
        raise ConfigError("no display window is possible here (no DISPLAY, or OpenCV built without GUI: opencv-python-headless)",
                          "use --save out.mp4 or --save frames/ to write rendered overlays instead")
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, OVERLAY_TOPIC)
    sub.setsockopt(zmq.RCVHWM, 4)
    sub.setsockopt(zmq.LINGER, 0)
    apply_curve_client(sub, client_curve_from_args(args))
    sub.connect(args.connect)
    fsub = None
    frames: dict[int, object] = {}
    poller = zmq.Poller()
    poller.register(sub, zmq.POLLIN)
    if args.frames_from:
        fsub = ctx.socket(zmq.SUB)
        fsub.setsockopt(zmq.SUBSCRIBE, b"frame")
        fsub.setsockopt(zmq.LINGER, 0)
        fsub.connect(args.frames_from)
        poller.register(fsub, zmq.POLLIN)
    writer = None
    save_dir = None
    if args.save and (args.save.endswith("/") or Path(args.save).is_dir()):
        save_dir = Path(args.save)
        save_dir.mkdir(parents=True, exist_ok=True)
    shown, last = 0, time.monotonic()
    try:
        while args.count is None or shown < args.count:
            events = dict(poller.poll(200))
            if fsub is not None and fsub in events:
                try:
                    f = decode_frame(fsub.recv_multipart())
                    frames[f.seq] = f.image.copy()
                    while len(frames) > 64:
                        frames.pop(next(iter(frames)))
                except WireError:
                    pass
            if sub not in events:
                if time.monotonic() - last > args.timeout:
                    if shown == 0:
                        log.error("no overlay from %s for %.0f s; is 'medstream run' publishing there?",
                                  args.connect, args.timeout)
                        return 1
                    log.info("no overlay for %.0f s after %d: the stream has ended", args.timeout, shown)
                    break
                continue
            try:
                overlay = decode_overlay(sub.recv_multipart())
            except WireError as exc:
                log.warning("skipping a malformed overlay: %s", exc)
                continue
            last = time.monotonic()
            age_ms = (now_ns() - overlay.t_capture_ns) / 1e6
            image = draw_overlay(frames.pop(overlay.seq, None), overlay, latency_ms=age_ms)
            shown += 1
            if save_dir is not None:
                cv2.imwrite(str(save_dir / f"{overlay.seq:08d}.png"), image)
            elif args.save:
                if writer is None:
                    fourcc = cv2.VideoWriter_fourcc(*("mp4v" if args.save.endswith(".mp4") else "MJPG"))
                    writer = cv2.VideoWriter(args.save, fourcc, args.fps, (image.shape[1], image.shape[0]))
                    if not writer.isOpened():
                        raise ConfigError(f"cannot write video {args.save}", "use a .avi/.mp4 path in a writable folder, or a folder/")
                writer.write(image)
            else:
                cv2.imshow("medstream", image)
                if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                    break
    finally:
        if writer is not None:
            writer.release()
        sub.close()
        if fsub is not None:
            fsub.close()
    print(f"received {shown} overlays" + (f", saved to {args.save}" if args.save else ""))
    return 0


def _has_gui(cv2) -> bool:
    if os.name != "nt" and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        return False
    info = cv2.getBuildInformation()
    gui_line = next((line for line in info.splitlines() if "GUI:" in line), "")
    return "NONE" not in gui_line.upper() and gui_line != ""
