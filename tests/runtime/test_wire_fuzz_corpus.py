"""Regression corpus of hostile wire messages (tests/runtime/wire_corpus/*.json).

Each file holds ``decoder`` (frame, overlay or status), the expected rejection ``reason`` and the
message parts as hex (a part may also be a list of ``[hex, repeat]`` runs, to keep big inputs small).
Found by hand and by ``python -m medstream.benchmarks.fuzz_wire``; add a file when the fuzzer finds one.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest

from medstream.runtime.wire import WireError, decode_frame, decode_overlay, decode_status

CORPUS = Path(__file__).with_name("wire_corpus")
DECODERS = {"frame": decode_frame, "overlay": decode_overlay, "status": decode_status}


def _part(spec) -> bytes:
    if isinstance(spec, str):
        return bytes.fromhex(spec)
    return b"".join(bytes.fromhex(h) * n for h, n in spec)


def _cases():
    return sorted(CORPUS.glob("*.json"))


def test_the_corpus_is_there():
    assert len(_cases()) >= 40


@pytest.mark.parametrize("path", _cases(), ids=lambda p: p.stem)
def test_hostile_message_is_rejected_with_its_reason_and_bounded_memory(path):
    case = json.loads(path.read_text())
    parts = [_part(p) for p in case["parts_hex"]]
    decoder = DECODERS[case["decoder"]]
    tracemalloc.start()
    try:
        with pytest.raises(WireError) as exc:
            decoder(parts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert exc.value.reason == case["reason"], str(exc.value)
    # Bounded by the header limit (64 KiB, parsed) whatever the message declares, never by its claims.
    assert peak < 2 * 1024 * 1024, f"rejecting {path.stem} allocated {peak} bytes"


def test_fuzzer_smoke_runs_clean():
    """A short run of the fuzzer itself (the 10^5-input run is benchmarks/fuzz_wire.py)."""
    from medstream.benchmarks.fuzz_wire import run

    result = run(2000, seed=1)
    assert result["inputs"] == 2000 and result["crashes"] == 0, result["crash_samples"]
    assert result["huge_shape_tracemalloc_peak_bytes"] < 1 << 20
    assert len(result["rejections_by_reason"]) >= 6


def test_zmq_source_caps_message_size_before_allocation():
    """MAXMSGSIZE is set from the wire limits, so libzmq refuses an oversized part before allocating it."""
    from medstream.runtime.sources import open_source
    from medstream.runtime.wire import WireLimits

    limits = WireLimits(max_height=64, max_width=64, max_payload_bytes=64 * 64)
    src = open_source("zmq+tcp://127.0.0.1:1", limits=limits)
    src.open()
    try:
        assert src._socket.maxmsgsize == max(limits.max_payload_bytes, limits.max_header_bytes)
    finally:
        src.close()
