"""Entry point of the ``medstream`` console script."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Sequence

from medstream.runtime.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, MedstreamError

#: A stop signal that arrives while the program is still starting (the heavy imports and the model load
#: come later: a second or more) is remembered from here on, so ``medstream run`` still stops cleanly and
#: writes its summary. Only light standard-library modules are imported above.
EARLY_STOP = threading.Event()


def _remember_stop(signum, _frame) -> None:
    EARLY_STOP.set()


for _sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(_sig, _remember_stop)

# Subcommand name -> module under medstream.cli.commands. Modules are imported lazily, only for the
# subcommand asked for (so a missing optional extra breaks only the command that needs it), except
# for --help, which imports each to read its HELP line.
COMMANDS: dict[str, str] = {
    "run": "run",
    "simulate": "simulate",
    "view": "view",
    "record": "record",
    "export": "export_cmd",
    "train": "train",
    "evaluate": "evaluate",
    "calibrate": "calibrate",
    "check-int8": "check_int8",
    "build": "build",
    "doctor": "doctor",
    "bench": "bench",
    "status": "status",
    "service": "service",
    "keys": "keys",
    "soup": "soup",
    "triton-repo": "triton_repo",
    "inspect": "inspect",
    "contract": "contract",
}

log = logging.getLogger("medstream")


def _load(name: str):
    return importlib.import_module(f"medstream.cli.commands.{COMMANDS[name]}")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    from medstream.runtime.version import __version__

    parser = argparse.ArgumentParser(
        prog="medstream",
        description="Real-time AI overlays for live ultrasound and fluoroscopy, over ZeroMQ.",
    )
    parser.add_argument("--version", action="version", version=f"medstream {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--log-json", action="store_true", help="one JSON object per log line (for journald / log shippers)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if only is not None and name != only:
            continue
        try:
            module = _load(name)
        except ModuleNotFoundError as exc:
            if only is not None:
                raise
            # A command whose module is missing is not offered (should not happen in a release).
            log.debug("command %s unavailable: %s", name, exc)
            continue
        p = sub.add_parser(name, help=module.HELP, description=(module.__doc__ or module.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # keep examples' line breaks
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Parse only the chosen subcommand's module when we can tell which it is (fast start-up).
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen if chosen in COMMANDS else None)
    args = parser.parse_args(argv)
    from medstream.runtime.logs import setup_logging

    setup_logging(args.log_level, json_lines=args.log_json)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    if chosen != "run":  # only `run` finishes its work on a stop signal; every other command stops at once
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if EARLY_STOP.is_set():
            return EXIT_INTERRUPTED
    try:
        return int(args._module.main(args) or 0)
    except MedstreamError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception:  # a bug: say so plainly, keep the traceback for the report, exit with its own code
        log.exception("medstream %s failed with an unexpected error (a bug). The traceback below is what to send "
                      "to the developers; the service manager will restart the service.", chosen)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
