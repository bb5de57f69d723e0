"""Install, remove or inspect the systemd service (units in systemd/, config in /etc/medstream/).

``install`` copies medstream.service and medstream-clocks.service to /etc/systemd/system, the example
medstream.env and medstream.yaml to /etc/medstream (never overwriting a site's own), creates the
service user, then runs ``systemctl daemon-reload`` and ``systemctl enable medstream``. ``--prefix DIR``
stages the files under DIR without touching systemd; ``--dry-run`` only prints. See systemd/README.md.
"""

from __future__ import annotations

from pathlib import Path

HELP = "install|uninstall|status the systemd service (Type=notify, watchdog, hardening)"


def add_arguments(p) -> None:
    p.add_argument("action", choices=["install", "uninstall", "status"])
    p.add_argument("--prefix", "--root", dest="prefix", default="/",
                   help="filesystem root to install under (default /; a directory stages files, systemctl is not run)")
    p.add_argument("--dry-run", action="store_true", help="print what would be done, change nothing")
    p.add_argument("--user", default="medstream", help="user the service runs as (default medstream)")
    p.add_argument("--jetpack", choices=["auto", "none", "5", "6", "7"], default="auto",
                   help="Jetson device nodes to allow (default: detect from /etc/nv_tegra_release)")


def main(args) -> int:
    from medstream.runtime.service import install as inst

    prefix = Path(args.prefix)
    if args.action == "install":
        jetpack = None if args.jetpack == "none" else args.jetpack if args.jetpack == "auto" else int(args.jetpack)
        return inst.install(prefix, user=args.user, dry_run=args.dry_run, jetpack=jetpack)
    if args.action == "uninstall":
        return inst.uninstall(prefix, dry_run=args.dry_run)
    return inst.status(prefix)
