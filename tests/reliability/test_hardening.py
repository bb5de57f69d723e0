"""Issue 14 (hardening round 2), safety and loud-failure items: each with the input that broke it before,
built here, asserting the defined behaviour (error text with the fix, exact accounting, documented exit code).
Real processes, real sockets on loopback, real ONNX Runtime; bounded in time."""

from __future__ import annotations

import json
import shutil
import signal
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import zmq

from medstream.runtime.config import load_config
from medstream.runtime.errors import (EXIT_REFUSED, EXIT_SUMMARY_NOT_WRITTEN, ConfigError, ContractError,
                                      ModelLoadError)
from medstream.runtime.models import MODELS_DIR, bundled_checksums
from medstream.runtime.models.loader import load_model
from medstream.runtime.stream import build_stream
from tests.conftest import free_port
from tests.reliability._helpers import Collector, assert_accounting, make_pipeline, medstream
from tests.reliability.test_config_faults import tiny_disk


# ------------------------------------------------------------------------------------ safety
def test_an_overlay_older_than_max_age_at_publish_time_is_dropped_as_stale(tiny_model, endpoint):
    # 150 ms planted between the end of the work and the send: every overlay would be 150+ ms old when sent.
    pipe = make_pipeline(tiny_model, endpoint, "synthetic://ultrasound?fps=20&width=64&height=64&frames=8",
                         max_age_ms=100, inject={"delay_ms": {"publish": 150}})
    col = Collector(endpoint)
    try:
        with pipe:
            pipe.prepare()
            time.sleep(0.3)
            summary = pipe.run()
        time.sleep(0.2)
    finally:
        col.close()
    c = summary["counters"]
    assert not col.overlays, "an overlay older than max_age_ms was published"
    # some frames also waited past 100 ms before work started (the worker is slow): stale at start, as before
    assert c["dropped"]["stale"] >= c["stale_at_publish"] > 0 and c["processed"] == 0
    assert_accounting(summary)
    status = col.statuses[-1][1]
    assert status["counters"]["stale_at_publish"] == c["stale_at_publish"]  # the status says so


def test_a_paused_runtime_never_publishes_an_old_overlay(tiny_model, tmp_path):
    """SIGSTOP for 1 s, as a loaded or swapping machine would pause it: nothing older than max_age_ms is shown."""
    port = free_port()
    proc = medstream("run", "--source", "synthetic://ultrasound?fps=30&width=64&height=64", "--model", str(tiny_model),
                     "--backend", "onnxruntime", "--threads", "1", "--publish", f"tcp://127.0.0.1:{port}",
                     "--max-age-ms", "200", "--duration", "6", "--summary", str(tmp_path / "s.json"))
    col = Collector(f"tcp://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 20
        while len(col.overlays) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert col.overlays, proc.stderr.read() if proc.poll() is not None else "no overlay"
        proc.send_signal(signal.SIGSTOP)
        time.sleep(1.0)
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=30)
        time.sleep(0.2)
    finally:
        col.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    ages = [(ov.t_publish_ns - ov.t_capture_ns) / 1e6 for _, ov in col.overlays]
    assert max(ages) <= 200, f"published an overlay {max(ages):.0f} ms old with max_age_ms 200"
    summary = json.loads((tmp_path / "s.json").read_text())
    assert_accounting(summary)  # whatever the pause caught was dropped (stale or superseded) and counted


def test_the_shipped_checksums_match_the_bundled_files():
    sums = bundled_checksums()
    onnx_files = {p.name for p in MODELS_DIR.glob("*.onnx")}
    assert onnx_files <= set(sums), "runtime/models/SHA256SUMS must list every bundled model"
    from medstream.runtime.files import sha256_file

    for name, digest in sums.items():
        assert sha256_file(MODELS_DIR / name) == digest, f"{name} differs from SHA256SUMS"


@pytest.fixture
def damaged_bundle(tmp_path, monkeypatch):
    """A copy of the bundled models folder, checksums included, with 200 bytes of the U-Net flipped."""
    import medstream.runtime.models as models
    import medstream.runtime.models.loader as loader

    folder = tmp_path / "models"
    shutil.copytree(MODELS_DIR, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    target = folder / "ultrasound_unet.onnx"
    data = bytearray(target.read_bytes())
    rng = np.random.default_rng(0)
    for i in rng.choice(np.arange(len(data) // 2, len(data)), 200, replace=False):  # weights, not the header
        data[i] ^= 0xFF
    target.write_bytes(bytes(data))
    monkeypatch.setattr(models, "MODELS_DIR", folder)
    monkeypatch.setattr(models, "CHECKSUMS", folder / "SHA256SUMS")
    monkeypatch.setattr(loader, "MODELS_DIR", folder)
    return target


def test_a_damaged_bundled_model_is_refused(damaged_bundle):
    with pytest.raises(ModelLoadError) as exc:
        load_model(damaged_bundle, backend="onnxruntime")
    assert "is damaged" in str(exc.value) and "reinstall" in str(exc.value)


def test_a_user_model_can_be_pinned_by_hash(tiny_model, tmp_path):
    from medstream.runtime.files import sha256_file

    good = sha256_file(tiny_model)
    assert load_model(tiny_model, backend="onnxruntime", sha256=good).path == tiny_model
    with pytest.raises(ModelLoadError, match="does not match the pinned hash"):
        load_model(tiny_model, backend="onnxruntime", sha256="0" * 64)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model:\n  file: {tiny_model}\n  sha256: '{'0' * 64}'\n")
    proc = medstream("run", "--config", str(cfg), "--publish", f"tcp://127.0.0.1:{free_port()}", "--duration", "1")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_REFUSED and "pinned hash" in err and "->" in err


# ------------------------------------------------------------------------------ loud failures
def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def test_a_png_bomb_in_a_folder_is_rejected_and_counted_and_the_rest_plays(tiny_model, endpoint, tmp_path):
    import cv2

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(4):
        cv2.imwrite(str(folder / f"{i:03d}.png"), np.full((64, 64), 60 * i, np.uint8))
    (folder / "001b.png").write_bytes(_png_claiming(100_000, 100_000))  # sorts between frame 1 and 2
    with make_pipeline(tiny_model, endpoint, f"file://{folder}?fps=20") as pipe:
        summary = pipe.run()
    c = summary["counters"]
    assert c["received"] == 5 and c["processed"] == 4
    assert c["dropped"] == {"invalid": 1} and c["invalid_by_reason"] == {"too_large": 1}
    assert summary["source_state"] == "ended"
    assert_accounting(summary)


@pytest.mark.parametrize("content", [b"", bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8))],
                         ids=["zero-bytes", "random-bytes"])
def test_an_undecodable_video_is_refused_before_anything_is_bound(tiny_model, tmp_path, content):
    video = tmp_path / "clip.mp4"
    video.write_bytes(content)
    port = free_port()
    proc = medstream("run", "--source", str(video), "--model", str(tiny_model), "--backend", "onnxruntime",
                     "--publish", f"tcp://127.0.0.1:{port}")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_REFUSED, err
    assert str(video) in err and "not a video" in err and "->" in err and "Traceback" not in err
    sock = zmq.Context.instance().socket(zmq.PUB)  # the publisher was never bound
    try:
        sock.bind(f"tcp://127.0.0.1:{port}")
    finally:
        sock.close(0)


def test_summary_on_a_full_disk_prints_the_counters_and_exits_with_its_own_code(tiny_model, tmp_path):
    with tiny_disk(tmp_path / "disk") as disk:
        filler = open(disk / "filler", "wb")  # noqa: SIM115 - fill the disk to the last block
        try:
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
        except OSError:
            pass
        finally:
            try:
                filler.close()
            except OSError:
                pass
        proc = medstream("run", "--source", "synthetic://ultrasound?fps=0&width=64&height=64&frames=5", "--model",
                         str(tiny_model), "--backend", "onnxruntime", "--threads", "1",
                         "--publish", f"tcp://127.0.0.1:{free_port()}", "--summary", str(disk / "summary.json"))
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_SUMMARY_NOT_WRITTEN, err
    printed = json.loads(out.strip().splitlines()[-1])
    assert printed["received"] == 5 and printed["accounting_ok"]
    assert "could not write the summary" in err and "Traceback" not in err


def test_sigterm_right_after_start_still_writes_a_summary(tiny_model, tmp_path):
    summary = tmp_path / "s.json"
    proc = medstream("run", "--source", "synthetic://ultrasound?fps=30&width=64&height=64", "--model", str(tiny_model),
                     "--backend", "onnxruntime", "--publish", f"tcp://127.0.0.1:{free_port()}", "--summary", str(summary))
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(summary.read_text())["accounting_ok"]


# -------------------------------------------------------------------- tracebacks and wrong messages
@pytest.mark.parametrize("text, needle", [
    ("publish:\n  max_age_ms: .inf\n", "publish.max_age_ms"),
    ("max_age_ms: .nan\n", "max_age_ms"),
    ("threads: true\n", "'threads'"),
    ("render_rgba: 'yes'\n", "'render_rgba'"),
    ("a: &a [1, 2]\nsource: *a\n", "YAML alias"),
])
def test_config_values_that_used_to_be_coerced_or_crash_are_refused(tmp_path, text, needle):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(p, {})
    assert needle in str(exc.value) and str(p) in str(exc.value)


def test_a_billion_laughs_config_is_refused_at_once(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 10)]
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="alias"):
        load_config(p, {})
    assert time.perf_counter() - t0 < 2.0  # refused before the expansion, not after it


def test_config_files_that_are_not_text_not_files_or_too_big(tmp_path):
    binary = tmp_path / "latin1.yaml"
    binary.write_bytes("source: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary, {})
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, {})
    big = tmp_path / "big.yaml"
    big.write_text("# padding\n" * 40_000)
    with pytest.raises(ConfigError, match="more than the"):
        load_config(big, {})


def test_a_300_character_key_file_name_is_a_clear_error(tiny_model, endpoint):
    name = "k" * 300 + ".key_secret"
    cfg = load_config(None, {"model": str(tiny_model), "publish": endpoint, "backend": "onnxruntime",
                             "security": {"curve": True, "server_secret_key": name, "allowed_client_keys": ["x" * 40]}})
    with pytest.raises(ConfigError) as exc:
        build_stream(cfg)
    assert "File name too long" in str(exc.value) and "->" in str(exc.value)


@pytest.mark.parametrize("raw", ['["a", "list"]', '{"contract_version": "abc"}'], ids=["a-list", "version-abc"])
def test_a_malformed_embedded_contract_is_named_as_such(tmp_path, raw):
    import onnx

    from medstream.runtime.contract import CONTRACT_KEY
    from tests.fixtures.models import intensity_classifier

    model = intensity_classifier(with_contract=False)
    entry = model.metadata_props.add()
    entry.key, entry.value = CONTRACT_KEY, raw
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ContractError) as exc:
        load_model(path)
    text = str(exc.value)
    assert "contract" in text and str(path) in text and "corrupt or truncated" not in text


def test_metrics_on_a_non_loopback_address_needs_the_explicit_flag(tiny_model):
    port = free_port()
    proc = medstream("run", "--model", str(tiny_model), "--backend", "onnxruntime", "--metrics-port", str(port),
                     "--publish", f"tcp://127.0.0.1:{free_port()}", "--duration", "1",
                     "--config", _write(Path(_tmp()) / "m.yaml", "service:\n  metrics_host: 0.0.0.0\n"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_REFUSED and "Prometheus metrics endpoint" in err and "allow_insecure_remote" in err


def _tmp() -> str:
    import tempfile

    return tempfile.mkdtemp()


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_a_bug_in_a_source_ends_the_run_and_is_reported(tiny_model, endpoint):
    from medstream.runtime.sources.base import Source, parse_uri

    class BuggySource(Source):  # a source with a bug (not a SourceError): the receiver must not hide it
        def _open(self):
            pass

        def _close(self):
            pass

        def read(self, timeout):
            raise RuntimeError("index out of range in the capture SDK")

    pipe = make_pipeline(tiny_model, endpoint, "synthetic://ultrasound")
    pipe.source = pipe.receiver.source = BuggySource(parse_uri("buggy://x"))
    with pipe:
        summary = pipe.run(duration_s=5)
    assert summary["source_crash"] == "RuntimeError: index out of range in the capture SDK"
    assert summary["source_state"] == "stopped" and summary["duration_s"] < 4


def test_an_unexpected_error_exits_70_saying_it_is_a_bug(monkeypatch, capfd):
    from medstream.cli import main as cli_main
    from medstream.cli.commands import doctor
    from medstream.runtime.errors import EXIT_INTERNAL

    monkeypatch.setattr(doctor, "main", lambda args: (_ for _ in ()).throw(KeyError("surprise")))
    assert cli_main.main(["doctor"]) == EXIT_INTERNAL
    err = capfd.readouterr().err
    assert "unexpected error (a bug)" in err and "KeyError: 'surprise'" in err
