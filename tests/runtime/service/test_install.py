"""`medstream service install|uninstall|status` staged into a temporary prefix (real files)."""

from __future__ import annotations

import pytest

from medstream.cli.main import main
from medstream.runtime.config import load_config
from medstream.runtime.errors import ConfigError
from medstream.runtime.service import install as inst


def test_install_stages_units_and_configs(tmp_path, capsys):
    assert main(["service", "install", "--prefix", str(tmp_path), "--user", "sono"]) == 0
    unit = (tmp_path / "etc/systemd/system/medstream.service").read_text()
    assert "User=sono\n" in unit and "User=medstream" not in unit
    assert (tmp_path / "etc/systemd/system/medstream-clocks.service").is_file()
    assert (tmp_path / "etc/medstream/medstream.env").stat().st_mode & 0o777 == 0o640
    # The example config is valid for `medstream run` as shipped.
    load_config(tmp_path / "etc/medstream/medstream.yaml")
    assert "systemctl not run" in capsys.readouterr().out
    assert main(["service", "status", "--prefix", str(tmp_path)]) == 0


def test_reinstall_keeps_site_config_but_updates_units(tmp_path):
    inst.install(tmp_path, log=lambda _: None)
    cfg = tmp_path / "etc/medstream/medstream.yaml"
    cfg.write_text("model: fluoroscopy\n")
    unit = tmp_path / "etc/systemd/system/medstream.service"
    unit.write_text("old")
    inst.install(tmp_path, log=lambda _: None)
    assert cfg.read_text() == "model: fluoroscopy\n"
    assert "Type=notify" in unit.read_text()


def test_dry_run_changes_nothing(tmp_path):
    lines = []
    assert inst.install(tmp_path, dry_run=True, log=lines.append) == 0
    assert not any(tmp_path.iterdir())
    assert any("medstream.service" in line for line in lines)


def test_uninstall_removes_units_keeps_config(tmp_path):
    inst.install(tmp_path, log=lambda _: None)
    assert main(["service", "uninstall", "--prefix", str(tmp_path)]) == 0
    assert not (tmp_path / "etc/systemd/system/medstream.service").exists()
    assert (tmp_path / "etc/medstream/medstream.yaml").exists()
    assert main(["service", "status", "--prefix", str(tmp_path)]) == 1


@pytest.mark.parametrize("action", ["install", "uninstall"])
def test_refuses_real_root_without_root(monkeypatch, action):
    monkeypatch.setattr(inst.os, "geteuid", lambda: 1000)  # this test may itself run as root
    with pytest.raises(ConfigError, match="needs root") as exc:
        getattr(inst, action)(inst.Path("/"), log=lambda _: None)
    assert "sudo" in exc.value.fix and "--dry-run" in exc.value.fix


@pytest.mark.parametrize("text, jetpack", [
    ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64", 5),
    ("# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64", 6),
    ("# R38 (release), REVISION: 2.0", 7),
])
def test_detect_jetpack(tmp_path, text, jetpack):
    f = tmp_path / "nv_tegra_release"  # a stand-in for a Jetson's /etc/nv_tegra_release
    f.write_text(text + "\n")
    assert inst.detect_jetpack(str(f)) == jetpack
    assert inst.detect_jetpack(str(tmp_path / "absent")) is None


@pytest.mark.parametrize("jetpack, node", [("5", "/dev/nvhost-ctrl-gpu"), ("6", "/dev/nvgpu/igpu0/ctrl")])
def test_jetson_dropin_installed_and_removed(tmp_path, jetpack, node):
    assert main(["service", "install", "--prefix", str(tmp_path), "--jetpack", jetpack]) == 0
    dropin = tmp_path / inst.DROPIN
    assert f"DeviceAllow={node} rw" in dropin.read_text() and "DeviceAllow=/dev/nvmap rw" in dropin.read_text()
    assert main(["service", "uninstall", "--prefix", str(tmp_path)]) == 0
    assert not dropin.exists() and not dropin.parent.exists()


def test_no_dropin_off_jetson(tmp_path):
    assert main(["service", "install", "--prefix", str(tmp_path), "--jetpack", "none"]) == 0
    assert not (tmp_path / inst.DROPIN).exists()
