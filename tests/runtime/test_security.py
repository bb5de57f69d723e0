"""CURVE transport security with real sockets: allowed peers work, everyone else gets and gives nothing."""

from __future__ import annotations

import stat
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

from medstream.runtime.config import load_config
from medstream.runtime.errors import ConfigError
from medstream.runtime.frame import Frame, now_ns
from medstream.runtime.security import (
    CurveServer,
    apply_curve_client,
    client_curve,
    generate_keypair,
    is_loopback_endpoint,
    load_keypair,
    load_public_key,
)
from medstream.runtime.sources import open_source
from medstream.runtime.stream import build_stream
from medstream.runtime.wire import encode_frame
from tests.conftest import free_port


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """server, allowed client and intruder key pairs; ``allowed/`` holds only the allowed client's public key."""
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("server", "client", "intruder", "sender"):
        out[name] = generate_keypair(d / "all", name)
    allowed = d / "allowed"
    allowed.mkdir()
    (allowed / "client.key").write_bytes(out["client"][0].read_bytes())
    out["allowed_dir"] = allowed
    return out


def _sub(endpoint: str, curve: dict | None) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.SUB)
    s.linger = 0
    apply_curve_client(s, curve)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    s.connect(endpoint)
    return s


def _received(sock: zmq.Socket, seconds: float) -> int:
    n, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        if sock.poll(50):
            sock.recv_multipart()
            n += 1
    return n


def test_generated_keys_load_and_the_secret_is_private(keys):
    public_file, secret_file = keys["server"]
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    public, secret = load_keypair(secret_file)
    assert len(public) == len(secret) == 40 and load_public_key(public_file) == public
    with pytest.raises(ConfigError, match="already exist"):
        generate_keypair(public_file.parent, "server")
    with pytest.raises(ConfigError, match="holds only a public key"):
        load_keypair(public_file)
    with pytest.raises(ConfigError, match="does not exist"):
        load_keypair(public_file.parent / "nope.key_secret")


def test_curve_publisher_serves_only_allow_listed_clients(keys):
    server = CurveServer.from_files(keys["server"][1], keys["allowed_dir"], domain="t-pub")
    pub = zmq.Context.instance().socket(zmq.PUB)
    pub.linger = 0
    server.apply_server(pub)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    ep = f"tcp://127.0.0.1:{port}"
    spub = keys["server"][0]
    allowed = _sub(ep, client_curve(keys["client"][1], spub))
    intruder = _sub(ep, client_curve(keys["intruder"][1], spub))
    plain = _sub(ep, None)
    time.sleep(0.5)
    counts = {}
    stop = threading.Event()

    def count(name, sock):
        counts[name] = 0
        while not stop.is_set():
            if sock.poll(20):
                sock.recv_multipart()
                counts[name] += 1

    threads = [threading.Thread(target=count, args=a) for a in
               (("allowed", allowed), ("intruder", intruder), ("plain", plain))]
    for t in threads:
        t.start()
    for i in range(50):
        pub.send_multipart([b"overlay", str(i).encode()])
        time.sleep(0.005)
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join()
    for s in (allowed, intruder, plain, pub):
        s.close(0)
    server.close()
    assert counts["allowed"] == 50
    assert counts["intruder"] == 0 and counts["plain"] == 0


def test_zmq_source_receives_only_from_the_sender_holding_the_expected_key(keys):
    """The frame SUB checks the sender's key: an impostor at the right address delivers nothing."""
    ctx = zmq.Context.instance()
    real = CurveServer.from_files(keys["sender"][1], keys["allowed_dir"], domain="t-real")
    impostor = CurveServer.from_files(keys["intruder"][1], keys["allowed_dir"], domain="t-impostor")
    curve = client_curve(keys["client"][1], keys["sender"][0])
    results = {}
    for name, server in (("impostor", impostor), ("real", real)):
        pub = ctx.socket(zmq.PUB)
        pub.linger = 0
        server.apply_server(pub)
        port = pub.bind_to_random_port("tcp://127.0.0.1")
        src = open_source(f"zmq+tcp://127.0.0.1:{port}", curve=curve)
        src.open()
        time.sleep(0.4)
        got = 0
        for i in range(20):
            pub.send_multipart(encode_frame(Frame(seq=i, t_capture_ns=now_ns(), image=np.zeros((8, 8), np.uint8))))
            if src.read(timeout=0.05) is not None:
                got += 1
        results[name] = (got, src.describe()["last_handshake_error"])
        src.close()
        pub.close(0)
        server.close()
    assert results["impostor"][0] == 0 and results["impostor"][1]
    assert results["real"][0] > 0


def _collector(ep, curve):
    sock = _sub(ep, curve)
    box = {"n": 0, "stop": threading.Event()}

    def loop():
        while not box["stop"].is_set():
            if sock.poll(20):
                sock.recv_multipart()
                box["n"] += 1
        sock.close(0)

    box["t"] = threading.Thread(target=loop, daemon=True)
    box["t"].start()
    return box


def test_pipeline_with_curve_end_to_end(keys, tiny_model, endpoint):
    """Frames in over CURVE from an allow-listing sender; overlays out over CURVE to allowed clients only."""
    ctx = zmq.Context.instance()
    sender = CurveServer.from_files(keys["sender"][1], keys["allowed_dir"], domain="t-sender")
    fpub = ctx.socket(zmq.PUB)
    fpub.linger = 0
    sender.apply_server(fpub)
    fport = fpub.bind_to_random_port("tcp://127.0.0.1")
    cfg = load_config(None, {
        "source": f"zmq+tcp://127.0.0.1:{fport}", "model": str(tiny_model), "publish": endpoint, "backend": "onnxruntime",
        "threads": 1, "security": {"curve": True, "server_secret_key": str(keys["server"][1]),
                                   "allowed_clients_dir": str(keys["allowed_dir"]),
                                   "client_secret_key": str(keys["client"][1]),
                                   "frames_server_key": str(keys["sender"][0])}})
    pipe = build_stream(cfg)
    good = _collector(endpoint, client_curve(keys["client"][1], keys["server"][0]))
    bad = _collector(endpoint, client_curve(keys["intruder"][1], keys["server"][0]))
    plain = _collector(endpoint, None)
    result = {}
    t = threading.Thread(target=lambda: result.update(pipe.run(max_frames=15)), daemon=True)
    t.start()
    time.sleep(1.0)
    for i in range(15):
        fpub.send_multipart(encode_frame(Frame(seq=i, t_capture_ns=now_ns(), image=np.full((64, 64), 100, np.uint8))))
        time.sleep(0.03)
    t.join(10)
    time.sleep(0.2)
    pipe.publisher.close()
    pipe.security.close()
    for box in (good, bad, plain):
        box["stop"].set()
        box["t"].join(2)
    fpub.close(0)
    sender.close()
    assert result["accounting_ok"] and result["counters"]["received"] == 15
    assert good["n"] >= result["counters"]["processed"] > 0
    assert bad["n"] == 0 and plain["n"] == 0


@pytest.mark.parametrize("ep", ["tcp://0.0.0.0:{p}", "tcp://*:{p}"])
def test_refuses_to_bind_a_remote_address_without_keys(tiny_model, ep):
    ep = ep.format(p=free_port())
    cfg = load_config(None, {"source": "synthetic://ultrasound?fps=10&width=64&height=64", "model": str(tiny_model),
                             "publish": ep, "backend": "onnxruntime"})
    with pytest.raises(ConfigError) as err:
        build_stream(cfg)
    assert ep in err.value.what and "allow_insecure_remote" in err.value.fix
    # The explicit opt-out binds (all interfaces) and the pipeline is usable.
    cfg = load_config(None, {"source": "synthetic://ultrasound?fps=10&width=64&height=64", "model": str(tiny_model),
                             "publish": ep, "backend": "onnxruntime", "security": {"allow_insecure_remote": True}})
    pipe = build_stream(cfg)
    assert pipe.publisher.bound_endpoint.startswith("tcp://0.0.0.0:")
    pipe.publisher.close()


def test_a_binding_frame_source_on_a_remote_address_needs_keys_too(tiny_model, endpoint):
    cfg = load_config(None, {"source": f"zmq+tcp://0.0.0.0:{free_port()}?bind=1", "model": str(tiny_model),
                             "publish": endpoint, "backend": "onnxruntime"})
    with pytest.raises(ConfigError, match="frame source"):
        build_stream(cfg)


def test_curve_without_keys_is_refused_naming_the_missing_setting(tiny_model, endpoint):
    base = {"source": "zmq+tcp://127.0.0.1:5999", "model": str(tiny_model), "publish": endpoint, "backend": "onnxruntime"}
    with pytest.raises(ConfigError, match="server_secret_key"):
        build_stream(load_config(None, {**base, "security": {"curve": True}}))


@pytest.mark.parametrize(("ep", "local"), [
    ("tcp://127.0.0.1:5556", True), ("tcp://127.0.0.2:1", True), ("tcp://localhost:5556", True),
    ("tcp://[::1]:5556", True), ("ipc:///run/medstream/o", True), ("inproc://x", True),
    ("tcp://0.0.0.0:5556", False), ("tcp://*:5556", False), ("tcp://192.168.1.20:5556", False),
    ("tcp://eth0:5556", False), ("tcp://[::]:5556", False), ("tcp://10.0.0.1;127.0.0.1:5556", True),
])
def test_loopback_detection(ep, local):
    assert is_loopback_endpoint(ep) is local


def test_keys_cli_and_simulate_as_a_curve_server(keys, tmp_path):
    """``medstream keys generate`` then ``medstream simulate --curve-secret`` serves an allowed receiver only."""
    r = subprocess.run([sys.executable, "-m", "medstream.cli.main", "keys", "generate", "--out", str(tmp_path),
                        "--name", "sim"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and (tmp_path / "sim.key_secret").is_file()
    port = free_port()
    sim = subprocess.Popen([sys.executable, "-m", "medstream.cli.main", "simulate", "--publish",
                            f"tcp://127.0.0.1:{port}", "--rate", "50", "--width", "64", "--height", "64",
                            "--curve-secret", str(tmp_path / "sim.key_secret"), "--curve-allow", str(keys["allowed_dir"])],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ep = f"tcp://127.0.0.1:{port}"
        good = _sub(ep, client_curve(keys["client"][1], tmp_path / "sim.key"))
        bad = _sub(ep, client_curve(keys["intruder"][1], tmp_path / "sim.key"))
        time.sleep(2.0)  # interpreter start-up of the simulator
        assert _received(good, 1.0) > 10
        assert _received(bad, 0.5) == 0
        good.close(0)
        bad.close(0)
    finally:
        sim.terminate()
        sim.wait(10)


def test_status_command_speaks_curve_and_a_plain_one_hears_nothing(keys, tiny_model, endpoint):
    """`medstream status` (a real subprocess) with the allowed key sees the live pipeline; without keys it
    hears nothing and reports the pipeline absent (exit 2)."""
    import subprocess
    import sys

    cfg = load_config(None, {
        "source": "synthetic://ultrasound?fps=20&width=64&height=64", "model": str(tiny_model), "publish": endpoint,
        "backend": "onnxruntime", "threads": 1,
        "security": {"curve": True, "server_secret_key": str(keys["server"][1]),
                     "allowed_clients_dir": str(keys["allowed_dir"])}})
    pipe = build_stream(cfg)
    t = threading.Thread(target=lambda: pipe.run(duration_s=12), daemon=True)
    t.start()
    try:
        def status(*extra):
            return subprocess.run([sys.executable, "-m", "medstream.cli.main", "status", "--connect", endpoint, "--once",
                                   "--timeout", "4", *extra], capture_output=True, text=True, timeout=60)

        allowed = status("--curve-client-secret", str(keys["client"][1]), "--curve-server-key", str(keys["server"][0]))
        plain = status()
    finally:
        pipe.stop()
        t.join(10)
        pipe.publisher.close()
        pipe.security.close()
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert plain.returncode == 2
