"""Several models on one stream (config `models:`): each runs on the same freshest frame and publishes its own
overlay with that frame's seq and capture time; per-model counts and latency are exact. Real bundled models,
real ONNX Runtime, real sockets."""

from __future__ import annotations

import time

import pytest

from medstream.runtime.config import load_config
from medstream.runtime.errors import ConfigError
from medstream.runtime.models import BUNDLED, MODELS_DIR
from medstream.runtime.stream import build_stream
from tests.runtime.stream._subscriber import Subscriber


def _second_model() -> str:
    for name in ("needle-classifier", "ultrasound-detector"):
        if name in BUNDLED and (MODELS_DIR / BUNDLED[name]).is_file():
            return name
    pytest.fail("no bundled classifier or detector to pair with the segmenter (issue 13's reference models)")


def test_two_models_on_one_stream_each_publish_for_every_frame(endpoint):
    second = _second_model()
    cfg = load_config(None, {"source": "synthetic://ultrasound?fps=8&frames=12", "publish": endpoint, "warmup_runs": 1,
                             "models": [{"file": "ultrasound", "backend": "onnxruntime", "threads": 1},
                                        {"file": second, "backend": "onnxruntime", "threads": 1}]})
    sub = Subscriber(endpoint)
    try:
        with build_stream(cfg) as pipe:
            pipe.prepare()
            deadline = time.monotonic() + 10
            while not sub.statuses and time.monotonic() < deadline:
                pipe._publish_status()
                time.sleep(0.05)
            summary = pipe.run()
        time.sleep(0.3)
    finally:
        sub.close()
    c = summary["counters"]
    assert summary["accounting_ok"] and c["received"] == 12
    by_model: dict[str, dict[int, object]] = {}
    for ov in sub.overlays:
        by_model.setdefault(ov.model_id, {})[ov.seq] = ov
    assert len(by_model) == 2, f"expected overlays of two models, got {list(by_model)}"
    primary_id, second_id = pipe.backend.contract.model_id, pipe.heads[0].model_id
    primary, other = by_model[primary_id], by_model[second_id]
    # every processed frame got both overlays, with the same seq and capture time (the same frame)
    assert set(primary) == set(other) and len(primary) == c["processed"]
    for seq, ov in primary.items():
        assert other[seq].t_capture_ns == ov.t_capture_ns and other[seq].source_id == ov.source_id
        assert other[seq].frame_size == ov.frame_size
    models = summary["models"]
    assert models[0]["model_id"] == second_id and models[0]["published"] == c["processed"]
    assert models[0]["dropped"] == {} and models[0]["latency_ms"]["infer"]["p50"] > 0
    last = [s for s in sub.statuses if s.get("models")][-1]
    assert last["models"][0]["model_id"] == second_id
    # the second model's overlay carries its task's answer (a label or boxes), not a segmentation mask alone
    sample = next(iter(other.values()))
    assert getattr(sample, "label", None) is not None or getattr(sample, "boxes", None) is not None


def test_model_and_models_together_are_refused(tiny_model):
    with pytest.raises(ConfigError, match="either 'model' or 'models'"):
        load_config(None, {"model": "fluoroscopy", "models": [{"file": str(tiny_model)}]})


def test_the_first_of_models_is_the_primary(tiny_model):
    cfg = load_config(None, {"models": [{"file": str(tiny_model), "threads": 1}, {"file": "ultrasound"}]})
    assert cfg.model.file == str(tiny_model) and cfg.model.threads == 1 and len(cfg.models) == 2


def test_model_flags_apply_to_the_primary(tiny_model):
    cfg = load_config(None, {"threads": 2, "models": [{"file": str(tiny_model)}, {"file": "ultrasound"}]})
    assert cfg.model.threads == 2 and cfg.models[0].threads == 2 and cfg.models[1].threads is None
