"""Errors that speak to the person on call.

Every medstream error carries *what* failed and *what to do*, so the message printed at 2 a.m.
is enough to act on without reading code. The CLI prints ``str(error)`` and exits non-zero.
"""

from __future__ import annotations

#: Exit codes of every ``medstream`` command (docs/FAULTS.md, "Exit codes"). A service manager restarts on any
#: non-zero code (``Restart=on-failure``); the number tells the operator which kind of failure it was.
EXIT_OK = 0
EXIT_ACCOUNTING = 1         # the run finished but received != processed + dropped (a bug: report it)
EXIT_REFUSED = 2            # refused before anything started: config, model, contract, source, port (MedstreamError)
EXIT_SOURCE_FAILED = 3      # the frame source failed in a way the runtime could not recover from
EXIT_SUMMARY_NOT_WRITTEN = 4  # the run was fine but --summary could not be written (disk full, ...): counters printed
EXIT_INTERNAL = 70          # an unexpected error (a bug): the traceback is in the log; please report it
EXIT_INTERRUPTED = 130      # Ctrl-C before the run could stop cleanly


class MedstreamError(Exception):
    """Base class: ``what`` went wrong, and ``fix``, the way out.

    Parameters
    ----------
    what
        One sentence naming the failed thing (file, socket, field) and how it failed.
    fix
        One sentence telling the reader what to do about it. Optional but expected.
    """

    exit_code = EXIT_REFUSED

    def __init__(self, what: str, fix: str | None = None) -> None:
        self.what = what
        self.fix = fix
        super().__init__(what if not fix else f"{what}\n  -> {fix}")


class ConfigError(MedstreamError):
    """A configuration or command-line value is wrong; refused before anything starts."""


class ContractError(MedstreamError):
    """A model's contract is missing, incomplete or does not match what the runtime was given."""


class ModelLoadError(MedstreamError):
    """A model or engine file cannot be loaded (missing, corrupt, wrong device)."""


class BackendError(MedstreamError):
    """Inference failed for one call. The pipeline drops that frame (reason ``backend_error``)."""


class BackendUnavailable(BackendError):  # noqa: N818 - named for what the status says
    """The backend cannot be reached at all (a remote inference server down, a lost GPU): every frame drops as
    ``backend_error`` and the status says ``backend_state: unreachable`` with the reason, until it is back."""


class MissingDependencyError(MedstreamError):
    """An optional dependency (torch, tensorrt, cuda-python, ...) is not installed."""

    def __init__(self, module: str, extra: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the Python module '{module}', which is not installed.",
            f"install it with: pip install 'medstream[{extra}]'",
        )
        self.module = module
        self.extra = extra


class SourceError(MedstreamError):
    """A frame source failed to open or lost its connection; the pipeline retries with backoff."""


class SourceEnded(Exception):  # noqa: N818 - a signal, not a failure
    """A finite source (file, ``--frames N``) has no more frames."""


def require(module: str, extra: str, purpose: str):
    """Import an optional heavy module lazily, or raise :class:`MissingDependencyError`.

    Heavy modules (torch, tensorrt, cuda.bindings, pynvml, jtop) are imported only inside the
    function that needs them, through this helper, so a CPU-only ``medstream run`` never pays
    for them and a missing one says which extra to install.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(module, extra, purpose) from exc
