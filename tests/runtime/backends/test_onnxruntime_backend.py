"""ONNX Runtime backend session settings that the stream relies on (real sessions on the tiny model)."""

from __future__ import annotations

import pytest

from medstream.runtime.stream import build_stream
from medstream.runtime.config import load_config

SPIN_STOP = "session.force_spinning_stop"


def _session_entry(session, key):
    try:
        return session.get_session_options().get_session_config_entry(key)
    except Exception:  # ORT raises when the key was never set
        return None


@pytest.mark.parametrize(("spin_after_run", "expected"), [(False, "1"), (True, None)])
def test_threads_stop_spinning_after_each_run_unless_configured(tiny_model, spin_after_run, expected):
    cfg = load_config(None, {"model": str(tiny_model), "backend": "onnxruntime", "threads": 1,
                             "publish": "tcp://127.0.0.1:0", "spin_after_run": spin_after_run})
    pipe = build_stream(cfg)
    try:
        pipe.prepare()
        assert _session_entry(pipe.backend.session, SPIN_STOP) == expected
    finally:
        pipe.backend.deactivate()
        pipe.publisher.close()


def test_spin_after_run_must_be_a_boolean():
    from medstream.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="spin_after_run"):
        load_config(None, {"spin_after_run": "sometimes"})
