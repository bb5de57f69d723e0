"""``synthetic://ultrasound`` and ``synthetic://fluoroscopy``: phantom streams with ground truth.

Query parameters: ``width``, ``height`` (default 256), ``fps`` (30 for ultrasound, 15 for fluoroscopy;
``0`` means as fast as the consumer reads), ``seed`` (0), ``frames`` (unbounded unless given),
``probe`` (``convex``/``linear``, ultrasound), ``truth`` (attach the ground-truth mask, default on),
``start`` (first frame index, default 0), ``id`` (source id), ``motion_fps`` (the frame rate the
phantom's motion is rendered for, default ``fps``: lets a benchmark send frames faster or slower than
the scene's clock, e.g. fluoroscopy, whose phantom only accepts the pulse rates 7.5, 15 and 30), ``preload`` (render this many frames once
and cycle through them: the simulator then costs almost no CPU, which matters when it shares a
2-core machine with the model under test; ``seq`` and capture times stay fresh and increasing).

Two parameters spread the frames for accuracy work (evaluation, calibration): ``scenes=K`` renders the
``frames=N`` frames over the seeds ``seed .. seed+K-1`` (a seed is one anatomy, several give a fairer
number; needs ``frames``; the split is :func:`split_frames`, the first scenes take the remainder), and
``stride=S`` takes every S-th frame of the phantom's clock (frame ``i`` of a scene renders phantom frame
``start + i*S``). :func:`scene_uris` gives the K single-scene URIs a ``scenes=K`` URI stands for.
"""

from __future__ import annotations

import time

from medstream.runtime.errors import ConfigError, SourceEnded
from medstream.runtime.frame import Frame, now_ns
from medstream.runtime.sources.base import Source, SourceURI

_DEFAULT_FPS = {"ultrasound": 30.0, "fluoroscopy": 15.0}


def split_frames(total: int, parts: int) -> list[int]:
    """``total`` frames over ``parts`` scenes or sources, as even as can be, the first ones taking the remainder."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def scene_uris(uri: str) -> list[str]:
    """``synthetic://KIND?seed=S&scenes=K&...`` -> K URIs with seeds S .. S+K-1 (one phantom anatomy each).

    Any other URI (or ``scenes`` absent) is returned alone. Reading the K URIs in order, frame counts
    split by :func:`split_frames`, gives the frames the ``scenes=K`` source itself renders.
    """
    from medstream.runtime.sources.base import parse_uri

    parsed = parse_uri(uri)
    if parsed.scheme != "synthetic" or "scenes" not in parsed.params:
        return [uri]
    scenes = parsed.param("scenes", 1, int)
    if scenes < 1:
        raise ConfigError(f"{uri}: scenes must be >= 1", "use scenes=8 for eight phantom anatomies")
    seed = parsed.param("seed", 0, int)
    rest = [f"{k}={v}" for k, v in parsed.params.items() if k not in ("scenes", "seed", "frames")]
    base = f"synthetic://{parsed.netloc or parsed.path.strip('/')}"
    frames = parsed.param("frames", None, int)
    counts = split_frames(frames, scenes) if frames is not None else [None] * scenes
    return [f"{base}?{'&'.join([f'seed={seed + i}', *rest, *([f'frames={n}'] if n is not None else [])])}"
            for i, n in enumerate(counts)]


class SyntheticSource(Source):
    """Renders phantom frames on demand, paced to ``fps`` in real time."""

    def __init__(self, uri: SourceURI, source_id: str | None = None) -> None:
        kind = (uri.netloc or uri.path.strip("/")).lower()
        if kind not in _DEFAULT_FPS:
            raise ConfigError(f"unknown synthetic source {uri.raw!r}",
                              "use synthetic://ultrasound or synthetic://fluoroscopy")
        super().__init__(uri, source_id or uri.params.get("id") or f"synthetic-{kind}")
        self.kind = kind
        self.fps = uri.param("fps", _DEFAULT_FPS[kind], float)
        if self.fps < 0:
            raise ConfigError(f"source {uri.raw!r}: fps must be >= 0", "use fps=0 for as fast as possible")
        self.width = uri.param("width", 256, int)
        self.height = uri.param("height", 256, int)
        self.seed = uri.param("seed", 0, int)
        self.frames = uri.param("frames", None, int)
        self.start = uri.param("start", 0, int)
        self.with_truth = uri.param("truth", True, bool)
        self.preload = uri.param("preload", 0, int)
        self.motion_fps = uri.param("motion_fps", 0.0, float)
        if self.motion_fps < 0:
            raise ConfigError(f"source {uri.raw!r}: motion_fps must be >= 0", "leave it out to use fps")
        if self.preload < 0:
            raise ConfigError(f"source {uri.raw!r}: preload must be >= 0", "use preload=0 (off) or a frame count")
        self.scenes = uri.param("scenes", 1, int)
        self.stride = uri.param("stride", 1, int)
        if self.scenes < 1:
            raise ConfigError(f"source {uri.raw!r}: scenes must be >= 1", "use scenes=8 for eight phantom anatomies")
        if self.stride < 1:
            raise ConfigError(f"source {uri.raw!r}: stride must be >= 1", "use stride=1 for every frame")
        if self.scenes > 1 and self.frames is None:
            raise ConfigError(f"source {uri.raw!r}: scenes={self.scenes} spreads a known number of frames",
                              "add frames=N to the source URI")
        if self.scenes > 1 and self.preload:
            raise ConfigError(f"source {uri.raw!r}: preload and scenes cannot be combined",
                              "use preload for benchmarks (one scene), scenes for accuracy work")
        #: frames of each scene, in order (one entry without scenes)
        self._per_scene = split_frames(self.frames, self.scenes) if self.scenes > 1 else [self.frames]
        self._cache: dict[int, tuple] = {}
        self.finite = self.frames is not None
        extra = {"probe": uri.params["probe"]} if "probe" in uri.params and kind == "ultrasound" else {}
        self._phantom_kwargs = dict(height=self.height, width=self.width, seed=self.seed, **extra)
        self._phantom = None
        self._phantom_scene = -1
        self._index = 0
        self._t0 = 0.0

    def _make_phantom(self, scene: int):
        from medstream.runtime.phantom import make_phantom

        kwargs = {**self._phantom_kwargs, "seed": self.seed + scene}
        try:
            fps = self.motion_fps or self.fps or _DEFAULT_FPS[self.kind]
            return make_phantom(self.kind, fps=fps, **kwargs)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"source {self.uri.raw!r}: {exc}", "fix the source URI's parameters") from None

    def _scene_frame(self, index: int) -> tuple[int, int]:
        """``(scene, phantom frame number)`` of the ``index``-th frame sent."""
        scene = 0
        if self.scenes > 1:
            for scene, count in enumerate(self._per_scene):  # noqa: B007 - the last scene keeps the rest
                if index < count:
                    break
                index -= count
        return scene, self.start + index * self.stride

    def _render(self, index: int) -> tuple:
        scene, number = self._scene_frame(index)
        if scene != self._phantom_scene:
            self._phantom, self._phantom_scene = self._make_phantom(scene), scene
        return self._phantom.render(number)

    def _open(self) -> None:
        self._phantom, self._phantom_scene = self._make_phantom(0), 0
        self._index = 0
        if self.preload:
            # Render them all now, before the first frame is due: rendered lazily they would cost ~2 ms of
            # CPU per frame during the first `preload` frames, i.e. during the measurement they exist for.
            count = min(self.preload, self.frames) if self.frames is not None else self.preload
            for index in range(count):
                if index not in self._cache:
                    self._cache[index] = self._render(index)
        self._t0 = time.perf_counter()

    def _close(self) -> None:
        self._phantom, self._phantom_scene = None, -1

    def read(self, timeout: float) -> Frame | None:
        if self.frames is not None and self._index >= self.frames:
            raise SourceEnded(f"{self.uri.raw}: all {self.frames} frames sent")
        if self.fps > 0:
            due = self._t0 + self._index / self.fps
            wait = due - time.perf_counter()
            if wait > timeout:
                time.sleep(max(timeout, 0))
                return None
            if wait > 0:
                time.sleep(wait)
        if self.preload:
            index = self._index % self.preload
            if index not in self._cache:
                self._cache[index] = self._render(index)
            image, mask = self._cache[index]
        else:
            image, mask = self._render(self._index)
        frame = Frame(seq=self._index, t_capture_ns=now_ns(), image=image, source_id=self.source_id,
                      truth=mask if self.with_truth else None, color_order="gray")
        self._index += 1
        return frame

    def describe(self) -> dict:
        return {**super().describe(), "kind": f"synthetic/{self.kind}", "fps": self.fps,
                "size": [self.height, self.width], "seed": self.seed,
                "scenes": self.scenes, "stride": self.stride}


__all__ = ["SyntheticSource", "scene_uris", "split_frames"]
