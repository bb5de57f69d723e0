"""Put the systemd units and example configuration in place (``medstream service install``).

Files (relative to ``prefix``, ``/`` on a real install):

* ``etc/systemd/system/medstream.service`` and ``medstream-clocks.service`` (always replaced, so an
  upgrade brings the new hardening; local changes belong in ``systemctl edit medstream`` drop-ins);
* on a Jetson, ``etc/systemd/system/medstream.service.d/jetson.conf``: the device nodes of its JetPack
  (5 or 6; JetPack 7 uses the same /dev/nvidia* nodes as a discrete GPU, already in the unit);
* ``etc/medstream/medstream.env`` and ``medstream.yaml`` (only when absent: a site's configuration is
  never overwritten).

``systemctl daemon-reload`` and ``enable`` run only for a real install (``prefix`` is ``/``, not a dry
run, ``systemctl`` present); a ``--prefix DIR`` install just stages the files (packaging, tests).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medstream.runtime.errors import ConfigError, MedstreamError

UNITS = ("medstream.service", "medstream-clocks.service")
CONFIGS = ("medstream.env", "medstream.yaml")
DEFAULT_USER = "medstream"
DROPIN = "etc/systemd/system/medstream.service.d/jetson.conf"


def detect_jetpack(release_file: str = "/etc/nv_tegra_release") -> int | None:
    """JetPack major version from L4T's release file (R35 -> 5, R36 -> 6, R38+ -> 7), None off Jetson."""
    try:
        head = Path(release_file).read_text().split(",")[0]
    except OSError:
        return None
    digits = "".join(ch for ch in head.split("R", 1)[-1] if ch.isdigit())[:2]
    if not digits:
        return None
    l4t = int(digits)
    return 5 if l4t <= 35 else 6 if l4t <= 37 else 7


def units_dir() -> Path:
    """Where the unit files ship: ``$MEDSTREAM_SYSTEMD_DIR``, the source tree's ``systemd/``, or
    ``<venv>/share/medstream/systemd``."""
    candidates = [os.environ.get("MEDSTREAM_SYSTEMD_DIR"), Path(__file__).resolve().parents[2] / "systemd",
                  Path(sys.prefix) / "share" / "medstream" / "systemd"]
    for c in candidates:
        if c and (Path(c) / UNITS[0]).is_file():
            return Path(c)
    raise MedstreamError("the medstream systemd unit files were not found (looked in "
                         + ", ".join(str(c) for c in candidates if c) + ")",
                         "set MEDSTREAM_SYSTEMD_DIR to the folder holding medstream.service (systemd/ in the source tree)")


@dataclass
class Step:
    src: Path
    dest: Path
    replace: bool

    def describe(self) -> str:
        if self.dest.exists() and not self.replace:
            return f"keep    {self.dest} (exists; example at {self.src})"
        return f"{'replace' if self.dest.exists() else 'write  '} {self.dest}"


def _is_real_root(prefix: Path) -> bool:
    return prefix.resolve() == Path("/")


def _require_root(prefix: Path, dry_run: bool, action: str) -> None:
    if _is_real_root(prefix) and not dry_run and os.geteuid() != 0:
        raise ConfigError(f"'medstream service {action}' changes /etc/systemd/system and /etc/medstream, which needs root",
                          f"run it with sudo (sudo {sys.argv[0]} service {action}), or add --dry-run to see what it "
                          "would do, or --prefix DIR to stage the files elsewhere")


def plan(prefix: Path, source: Path | None = None, jetpack: int | None = None) -> list[Step]:
    source = source or units_dir()
    steps = [Step(source / u, prefix / "etc/systemd/system" / u, True) for u in UNITS]
    if jetpack in (5, 6):
        steps.append(Step(source / "medstream.service.d" / f"jetpack{jetpack}.conf", prefix / DROPIN, True))
    steps += [Step(source / c, prefix / "etc/medstream" / c, False) for c in CONFIGS]
    return steps


def render_unit(text: str, user: str) -> str:
    """The unit text for ``user`` (``User=`` rewritten; the group is the user's primary group)."""
    return "".join(f"User={user}\n" if line.startswith("User=") else line for line in text.splitlines(keepends=True))


def _run(cmd: list[str], log: Callable[[str], None]) -> int:
    log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=False).returncode


def install(prefix: Path, user: str = DEFAULT_USER, dry_run: bool = False, log: Callable[[str], None] = print,
            jetpack: int | str | None = "auto") -> int:
    """Copy units and example configs under ``prefix``; on a real install also create the user,
    reload systemd and enable the service. ``jetpack``: ``"auto"`` (detect this machine), 5, 6, 7 or
    None (not a Jetson). Returns 0 on success."""
    _require_root(prefix, dry_run, "install")
    if jetpack == "auto":
        jetpack = detect_jetpack()
        if jetpack is not None:
            log(f"Jetson with JetPack {jetpack} detected")
    steps = plan(prefix, jetpack=int(jetpack) if jetpack is not None else None)
    for step in steps:
        log(("(dry run) " if dry_run else "") + step.describe())
        if dry_run or (step.dest.exists() and not step.replace):
            continue
        step.dest.parent.mkdir(parents=True, exist_ok=True)
        text = step.src.read_text()
        if step.dest.suffix == ".service":
            text = render_unit(text, user)
        step.dest.write_text(text)
        step.dest.chmod(0o644 if step.dest.suffix != ".env" else 0o640)
    real = _is_real_root(prefix) and not dry_run
    if real:
        try:
            pwd.getpwnam(user)
        except KeyError:
            if shutil.which("useradd"):
                groups = ",".join(g for g in ("video", "render") if _group_exists(g))
                rc = _run(["useradd", "--system", "--user-group", "--home-dir", "/var/lib/medstream", "--no-create-home",
                           "--shell", "/usr/sbin/nologin", *(["--groups", groups] if groups else []), user], log)
                if rc:
                    log(f"could not create user {user}: create it yourself before starting the service")
            else:
                log(f"user {user} does not exist: create it (system user, groups video,render) before starting")
    if real and shutil.which("systemctl"):
        if _run(["systemctl", "daemon-reload"], log) or _run(["systemctl", "enable", "medstream.service"], log):
            log("systemctl failed (see above); the files are in place")
            return 1
        log("installed and enabled. Edit /etc/medstream/medstream.yaml, then: systemctl start medstream; "
            "journalctl -u medstream -f")
    elif real:
        log("systemctl not found: files are in place; reload and enable the service with your init system")
    elif not dry_run:
        log(f"files staged under {prefix} (systemctl not run for a --prefix install)")
    return 0


def _group_exists(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def uninstall(prefix: Path, dry_run: bool = False, log: Callable[[str], None] = print) -> int:
    """Stop, disable and remove the units. Configuration (/etc/medstream) and the engine cache
    (/var/lib/medstream) are kept: remove them by hand if you mean to."""
    _require_root(prefix, dry_run, "uninstall")
    real = _is_real_root(prefix) and not dry_run
    if real and shutil.which("systemctl"):
        _run(["systemctl", "disable", "--now", *UNITS], log)
    for dest in [prefix / "etc/systemd/system" / u for u in UNITS] + [prefix / DROPIN]:
        if dest.exists():
            log(("(dry run) " if dry_run else "") + f"remove  {dest}")
            if not dry_run:
                dest.unlink()
                if dest.parent.name.endswith(".service.d"):
                    with contextlib.suppress(OSError):  # not empty: the admin's own drop-ins stay
                        dest.parent.rmdir()
    if real and shutil.which("systemctl"):
        _run(["systemctl", "daemon-reload"], log)
    log(f"kept {prefix / 'etc/medstream'} (configuration) and /var/lib/medstream (engine cache)")
    return 0


def status(prefix: Path, log: Callable[[str], None] = print) -> int:
    """Which files are installed; on a real system also ``systemctl status``. 0 when installed."""
    installed = True
    for step in plan(prefix):
        present = step.dest.exists()
        installed &= present or step.dest.suffix != ".service"
        log(f"{'present' if present else 'missing'} {step.dest}")
    if _is_real_root(prefix) and shutil.which("systemctl"):
        return _run(["systemctl", "status", "--no-pager", "--lines=10", "medstream.service"], log)
    return 0 if installed else 1
