"""Show a running pipeline's health from its ``status`` topic; usable as a health check.

Live (default): refreshes a one-screen summary (rates, latency percentiles, drops, source state,
device telemetry) at each status message, and exits when the pipeline stops or goes silent.
``--once``: waits for one fresh status and exits with the verdict, for scripts and monitoring:

  0 healthy (fresh status, running, source live)   2 absent or stale (nothing for --timeout seconds)
  3 source not live (stalled/reconnecting)         4 pipeline stopping/stopped, or source ended
"""

from __future__ import annotations

import sys

from medstream.cli.commands._curve import add_client_curve_arguments, client_curve_from_args

HELP = "live summary of a running pipeline from its status topic; exit code = health (0 ok, 2 absent, 3 source, 4 stopped)"


def add_arguments(p) -> None:
    add_client_curve_arguments(p)
    p.add_argument("--connect", default="tcp://127.0.0.1:5556",
                   help="the pipeline's publish endpoint (default tcp://127.0.0.1:5556)")
    p.add_argument("--timeout", type=float, default=2.5,
                   help="seconds without a fresh status before giving up with exit code 2 (default 2.5: status comes "
                        "at least once a second, so a stopped pipeline is reported within 3 s)")
    p.add_argument("--stale-s", type=float, default=3.0,
                   help="a status older than this (by its timestamp) counts as stale (default 3; raise it for clock skew)")
    p.add_argument("--once", action="store_true", help="one verdict and exit (health check)")
    p.add_argument("--json", action="store_true", help="print each status as one JSON line with a 'health' field")


def main(args) -> int:
    from medstream.runtime.errors import ConfigError
    from medstream.runtime.service.health import watch

    if not args.connect.startswith(("tcp://", "ipc://", "inproc://")):
        raise ConfigError(f"--connect {args.connect} is not a ZeroMQ endpoint",
                          "use the pipeline's publish endpoint, e.g. tcp://127.0.0.1:5556")
    if args.timeout <= 0 or args.stale_s <= 0:
        raise ConfigError("--timeout and --stale-s must be positive", "e.g. --timeout 3")

    def emit(text: str) -> None:
        print(text, flush=True)

    clear = sys.stdout.isatty() and not args.once
    return watch(args.connect, curve=client_curve_from_args(args), timeout_s=args.timeout, stale_s=args.stale_s, once=args.once, emit=emit,
                 json_lines=args.json, clear=clear)
