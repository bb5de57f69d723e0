"""Fuzz the wire decoders (``decode_frame``, ``decode_overlay``, ``decode_status``) with Hypothesis.

::

    python -m medstream.benchmarks.fuzz_wire --examples 100000 [--seed 0] [--json out.json]

Inputs mix three families: random multipart messages (any bytes), structure-aware messages (a valid
header whose fields are replaced by hostile values: huge or negative numbers, ``1e999``, 10**400-digit
integers, ``NaN``, wrong types, deep nesting, duplicate keys, non-UTF-8, declared shapes far larger
than the payload) and byte-level mutations of valid messages (truncation, bit flips, insertions).

A *crash* is any exception other than :class:`~medstream.runtime.wire.WireError`; each is printed with
its input and makes the exit status 1. Every rejection is counted by its ``reason``. The script also
checks that a message declaring a huge image (8192x8192x4, 16-bit) with a tiny payload is rejected
without allocating: the ``tracemalloc`` peak of decoding it must stay under 1 MiB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import resource
import sys
import time
import tracemalloc
from collections import Counter
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hseed
from hypothesis import strategies as st

from medstream.runtime.frame import Contour, Frame, Overlay
from medstream.runtime.wire import (
    WireError,
    decode_frame,
    decode_overlay,
    decode_status,
    encode_frame,
    encode_overlay,
    encode_status,
)

DECODERS = {b"frame": decode_frame, b"overlay": decode_overlay, b"status": decode_status}


def valid_messages() -> dict[str, list[bytes]]:
    """One valid message of each kind (the mutation seeds)."""
    img = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    frame = encode_frame(Frame(seq=7, t_capture_ns=123, image=img, source_id="probe-A",
                               truth=np.zeros((16, 16), np.uint8)))
    ov = encode_overlay(Overlay(seq=7, t_capture_ns=123, source_id="probe-A", model_id="m", class_names=("bg", "v"),
                                class_colors=((0, 0, 0), (255, 0, 0)), mask=np.zeros((16, 16), np.uint8),
                                frame_size=(16, 16), contours=[Contour(class_id=1, points=np.zeros((3, 2), np.int32))],
                                areas_px={"v": 3}, stages_ms={"infer": 1.0}, t_publish_ns=456))
    status = encode_status({"source_id": "probe-A", "seq": 1, "t_capture_ns": 5, "counters": {"received": 1}})
    return {k: [bytes(p) for p in parts] for k, parts in (("frame", frame), ("overlay", ov), ("status", status))}


VALID = valid_messages()

# Hostile JSON fragments spliced in as field values (raw text, so NaN/1e999/huge ints reach the parser).
NASTY_VALUES = [
    "null", "true", "false", "-1", "0", "1e999", "-1e999", "NaN", "Infinity", "-Infinity", "1" + "0" * 400,
    "-" + "9" * 400, "9" * 5000, "1.5", "9223372036854775808", "18446744073709551616", '""', '"' + "A" * 5000 + '"',
    '"\\ud800"', '"\\u0000"', "[]", "{}", "[" * 40 + "]" * 40, "[1,2,3,4]", "[65536,65536]", "[8192,8192,4]",
    "[100000,100000]", "[0,5]", "[-1,5]", "[5,5,2]", "[1e3,5]", "[true,5]", '"|u1"', '"<u2"', '"<f8"', '"O"', '"|V8"',
    '">u2"', '{"dtype":"|u1","shape":[4,4]}', '{"dtype":"|u1","shape":[8192,8192]}', '[[1,1000000000]]', "[[1,-1]]",
    '[{"name":1,"color":[1,2,3]}]', '[{"name":"x","color":[256,0,0]}]', '{"a":1,"a":2}',
]


def mutate(data: bytes, rnd: random.Random) -> bytes:
    """Truncate, flip, insert or duplicate bytes."""
    if not data:
        return bytes([rnd.randrange(256)])
    b = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(5)
        i = rnd.randrange(len(b)) if b else 0
        if op == 0:
            del b[i:]
        elif op == 1 and b:
            b[i] ^= 1 << rnd.randrange(8)
        elif op == 2:
            b[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
        elif op == 3:
            b[i:i] = b[i:i + rnd.randint(1, 64)]
        elif op == 4 and b:
            b[i] = rnd.choice(b'{}[]",:0-9eE\\')
    return bytes(b)


def splice_field(header: bytes, rnd: random.Random, value: str) -> bytes:
    """Replace one field value of a JSON header with ``value`` (or add a duplicate key)."""
    text = header.decode("utf-8", "replace")
    try:
        obj = json.loads(header)
    except ValueError:  # already hostile: append instead
        return (text.rstrip("}") + f',"seq":{value}}}').encode()
    if not isinstance(obj, dict):
        return header
    key = rnd.choice([*obj.keys(), "extra"])
    if rnd.random() < 0.15:  # duplicate key: the original stays, a second copy follows
        return (text[:-1] + f',"{key}":{value}}}').encode()
    obj[key] = "\x00PLACEHOLDER\x00"
    return json.dumps(obj, separators=(",", ":")).replace('"\\u0000PLACEHOLDER\\u0000"', value).encode()


@st.composite
def messages(draw: Any) -> list[bytes]:
    family = draw(st.integers(0, 9))
    kind = draw(st.sampled_from(list(VALID)))
    parts = list(VALID[kind])
    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))
    if family == 0:  # anything at all
        return draw(st.lists(st.binary(max_size=64), max_size=6))
    if family <= 4:  # hostile field values
        for _ in range(draw(st.integers(1, 3))):
            parts[1] = splice_field(parts[1], rnd, draw(st.sampled_from(NASTY_VALUES)))
    elif family <= 6:  # structured values Hypothesis invents
        value = draw(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False)
                                  | st.text(max_size=20), lambda c: st.lists(c, max_size=4)
                                  | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=12))
        parts[1] = splice_field(parts[1], rnd, json.dumps(value))
    else:  # byte-level mutation of a header or a payload part
        i = draw(st.integers(1, len(parts) - 1))
        parts[i] = mutate(parts[i], rnd)
    if draw(st.integers(0, 9)) == 0:  # wrong number of parts
        parts = parts[: draw(st.integers(0, len(parts)))] if draw(st.booleans()) else [*parts, b"x"]
    if draw(st.integers(0, 19)) == 0:  # the topic of another kind
        parts[:1] = [draw(st.sampled_from(list(DECODERS)))] if parts else []
    return parts


def decode(parts: list[bytes]) -> Any:
    """Route like a subscriber would: by topic (unknown topic: try the frame decoder)."""
    decoder = DECODERS.get(parts[0] if parts else b"", decode_frame)
    return decoder(parts)


class Stats:
    def __init__(self) -> None:
        self.count = 0
        self.accepted = 0
        self.reasons: Counter[str] = Counter()
        self.crashes: list[dict[str, Any]] = []

    def feed(self, parts: list[bytes]) -> None:
        self.count += 1
        try:
            decode(parts)
            self.accepted += 1
        except WireError as exc:
            self.reasons[exc.reason] += 1
        except Exception as exc:  # a crash: anything but WireError
            if len(self.crashes) < 20:
                self.crashes.append({"error": repr(exc)[:300], "parts": [p[:200].hex() for p in parts]})


def huge_shape_peak_bytes() -> int:
    """tracemalloc peak of rejecting a frame that declares 8192x8192x4 16-bit pixels but carries 16 bytes."""
    header = json.loads(VALID["frame"][1])
    header.update(shape=[8192, 8192, 4], dtype="<u2")
    header.pop("truth")
    msg = [b"frame", json.dumps(header).encode(), b"\x00" * 16]
    tracemalloc.start()
    with contextlib.suppress(WireError):
        decode_frame(msg)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def run(examples: int, seed: int = 0, per_example: int = 16) -> dict[str, Any]:
    stats = Stats()

    @hseed(seed)
    @settings(max_examples=-(-examples // per_example), database=None, deadline=None, phases=[Phase.generate], derandomize=False,
              suppress_health_check=list(HealthCheck))
    @given(messages(), st.integers(0, 2**32 - 1))
    def target(parts: list[bytes], mseed: int) -> None:
        # Hypothesis's per-example overhead dwarfs a decode, so each drawn message also seeds a family of
        # cheap byte-level mutants of itself (the stream stays reproducible from --seed).
        stats.feed(parts)
        rnd = random.Random(mseed)
        for _ in range(per_example - 1):
            if stats.count >= examples:
                return
            mutant = list(parts)
            if mutant:
                i = rnd.randrange(len(mutant))
                mutant[i] = mutate(mutant[i], rnd)
            stats.feed(mutant)

    t0 = time.perf_counter()
    target()
    elapsed = time.perf_counter() - t0
    return {
        "inputs": stats.count, "hypothesis_examples": -(-examples // per_example), "crashes": len(stats.crashes), "accepted": stats.accepted,
        "rejections_by_reason": dict(stats.reasons.most_common()), "seconds": round(elapsed, 1),
        "inputs_per_s": round(stats.count / elapsed), "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "huge_shape_tracemalloc_peak_bytes": huge_shape_peak_bytes(), "crash_samples": stats.crashes, "seed": seed,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-example", type=int, default=16, help="byte-level mutants decoded per Hypothesis example")
    p.add_argument("--json", default=None, help="also write the figures to this file")
    args = p.parse_args(argv)
    result = run(args.examples, args.seed, args.per_example)
    print(f"inputs={result['inputs']} crashes={result['crashes']} accepted={result['accepted']} "
          f"inputs/s={result['inputs_per_s']} peak_rss={result['peak_rss_mib']} MiB "
          f"huge-shape tracemalloc peak={result['huge_shape_tracemalloc_peak_bytes']} B")
    for reason, n in result["rejections_by_reason"].items():
        print(f"  rejected {reason:18s} {n}")
    for crash in result["crash_samples"]:
        print("CRASH", json.dumps(crash))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    ok = result["crashes"] == 0 and result["huge_shape_tracemalloc_peak_bytes"] < 1 << 20
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
