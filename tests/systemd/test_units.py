"""The unit files pass `systemd-analyze verify`, and keep the properties the service relies on."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from medstream.runtime.service import install as inst

SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
UNITS = ["medstream.service", "medstream-clocks.service"]


def _with_existing_executables(text: str) -> str:
    """`systemd-analyze verify` checks that each Exec*= binary exists. The real paths
    (/opt/medstream/venv/bin/medstream, nvpmodel, jetson_clocks) do not exist on a CI box, so only
    the executable path is swapped for one that does; every other line is verified as shipped."""
    true = shutil.which("true") or "/bin/true"

    def swap(m: re.Match) -> str:
        return m.group(1) + (m.group(2) if Path(m.group(2)).exists() else true)

    return re.sub(r"^(Exec\w+=[-@:+!]*)(\S+)", swap, text, flags=re.M)


@pytest.fixture
def verify(tmp_path):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (apt-get install -y systemd); CI installs it")

    def run(texts: dict[str, str]) -> subprocess.CompletedProcess:
        paths = []
        for name, text in texts.items():
            p = tmp_path / name
            p.write_text(_with_existing_executables(text))
            paths.append(str(p))
        return subprocess.run([exe, "verify", "--man=no", *paths], capture_output=True, text=True, timeout=60)

    return run


def test_units_verify_cleanly(verify):
    r = verify({u: (SYSTEMD / u).read_text() for u in UNITS})
    # verify exits 0 even for unknown keys and unparsable values: it only warns, so warnings fail too.
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


@pytest.mark.parametrize("jetpack", [5, 6])
def test_unit_with_jetson_dropin_verifies(verify, jetpack):
    # verify does not read drop-in folders next to an arbitrary file, so the drop-in's lines are appended.
    dropin = (SYSTEMD / "medstream.service.d" / f"jetpack{jetpack}.conf").read_text()
    r = verify({"medstream.service": (SYSTEMD / "medstream.service").read_text() + "\n" + dropin})
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_installed_unit_for_another_user_verifies(verify):
    r = verify({"medstream.service": inst.render_unit((SYSTEMD / "medstream.service").read_text(), "sono")})
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_verify_would_catch_a_broken_unit(verify):
    bad = (SYSTEMD / "medstream.service").read_text().replace("WatchdogSec=10", "WatchdogSec=ten\nWachdogSec=10")
    r = verify({"medstream.service": bad})
    assert "WatchdogSec" in r.stderr or "Wachdog" in r.stderr


def _directives(unit: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (SYSTEMD / unit).read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";")):
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def test_service_properties():
    d = _directives("medstream.service")
    for key, value in {"Type": "notify", "NotifyAccess": "main", "WatchdogSec": "10", "Restart": "on-failure",
                       "TimeoutStartSec": "20min", "DevicePolicy": "closed", "ProtectSystem": "strict",
                       "NoNewPrivileges": "yes", "StateDirectory": "medstream",
                       "EnvironmentFile": "-/etc/medstream/medstream.env", "User": "medstream"}.items():
        assert d[key] == [value], key
    assert "--config /etc/medstream/medstream.yaml" in d["ExecStart"][0]
    assert "StartLimitBurst" in d and "StartLimitIntervalSec" in d
    allowed = " ".join(d["DeviceAllow"])
    for group in ("char-nvidia-frontend", "char-nvidia-uvm", "char-video4linux"):  # GPU and capture still reachable
        assert f"{group} rw" in allowed, group
    assert d["RestrictAddressFamilies"][0].split()[:3] == ["AF_UNIX", "AF_INET", "AF_INET6"]  # AF_UNIX: sd_notify


def test_clocks_unit_runs_before_the_service():
    d = _directives("medstream-clocks.service")
    assert d["Type"] == ["oneshot"] and d["Before"] == ["medstream.service"]
    assert any("nvpmodel" in x for x in d["ExecStart"]) and any("jetson_clocks" in x for x in d["ExecStart"])
