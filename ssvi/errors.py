"""The errors ssvi raises on purpose, and the one way they are shown to a user.

Every :class:`SSVIError` carries a one-line message that says what was wrong and what to do.
The command line (``python -m ssvi``) and the notebooks show exactly that line, without a
traceback; ``--debug`` or ``SSVI_DEBUG=1`` shows the traceback as well.

Exit codes of the command line: 2 for bad input (:class:`ConfigError`, :class:`DataError`),
1 for a failure (:class:`CheckpointError`, :class:`ResultsFileError`, :class:`DivergenceError`
and any other :class:`SSVIError`), 130 for Ctrl-C.

    from ssvi import errors
    with errors.report_errors():        # a script: one line on stderr, then exit non-zero
        ...
    errors.notebook_mode()              # a notebook: SSVIError shows as one line
"""
from __future__ import annotations

import contextlib
import os
import sys
import traceback

EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class SSVIError(Exception):
    """A failure ssvi explains in one line: what was wrong and what to do."""
    exit_code = EXIT_FAILURE


class ConfigError(SSVIError, ValueError):
    """A bad setting: an option value, a preset, a device, or a run directory that holds a
    different configuration (also a ValueError)."""
    exit_code = EXIT_BAD_INPUT


class DataError(SSVIError):
    """The data are missing, corrupt, or cannot give the requested split."""
    exit_code = EXIT_BAD_INPUT


class CheckpointError(SSVIError, RuntimeError):
    """A checkpoint is missing, corrupt, or not an ssvi checkpoint (also a RuntimeError)."""


class ResultsFileError(SSVIError, ValueError):
    """A results JSON file is truncated, corrupt or not a results file; the message names it."""


class DivergenceError(SSVIError, FloatingPointError):
    """Training diverged: the loss or the evaluation metrics became NaN or infinite."""


def debug_enabled(argv=None) -> bool:
    """True when tracebacks are wanted: ``--debug`` in ``argv`` or SSVI_DEBUG set to 1/true."""
    if argv is not None and "--debug" in argv:
        return True
    return os.environ.get("SSVI_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def one_line(exc: BaseException) -> str:
    """``exc``'s message as one line (newlines folded), e.g. for ``error: <line>``."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def interrupted_message(exc: BaseException | None = None) -> str:
    """``interrupted`` plus what to do; the trainer puts that advice ("run the same command
    again to resume from ...") into the KeyboardInterrupt's args."""
    hint = one_line(exc) if exc is not None and str(exc) else ""
    return "interrupted" + (f"; {hint}" if hint else "")


def exit_code(exc: BaseException) -> int:
    """The command line's exit status for ``exc``."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return getattr(exc, "exit_code", EXIT_FAILURE)


@contextlib.contextmanager
def report_errors(debug: bool | None = None, *, stream=None):
    """Turn an :class:`SSVIError` or Ctrl-C inside the block into ``error: <one line>`` (or
    ``interrupted; ...``) on stderr and ``SystemExit`` with the code of :func:`exit_code`.

    Other exceptions (bugs) propagate with their traceback. ``debug`` (default: SSVI_DEBUG)
    re-raises the original exception so its traceback is shown.
    """
    debug = debug_enabled() if debug is None else debug
    try:
        yield
    except SSVIError as e:
        if debug:
            raise
        print(f"error: {one_line(e)}", file=stream or sys.stderr, flush=True)
        raise SystemExit(exit_code(e)) from None
    except KeyboardInterrupt as e:
        if debug:
            raise
        print(interrupted_message(e), file=stream or sys.stderr, flush=True)
        raise SystemExit(EXIT_INTERRUPTED) from None


def cli_main(fn, argv=None) -> int:
    """Run ``fn(argv)`` under :func:`report_errors` (``--debug`` in argv: tracebacks); returns
    its exit status, or the error's."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled(argv)
    try:
        with report_errors(debug):
            return int(fn(argv) or 0)
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return int(e.code or 0)
        print(e.code, file=sys.stderr, flush=True)
        return EXIT_FAILURE


def _ipython_handler(shell, etype, value, tb, tb_offset=None):
    """IPython custom exception handler: shows the one line (the full traceback under
    SSVI_DEBUG=1) as the cell's error output; the cell still counts as failed."""
    if debug_enabled():
        stb = shell.InteractiveTB.structured_traceback(etype, value, tb, tb_offset=tb_offset)
    else:
        stb = [f"error: {one_line(value)}"]
    show = getattr(shell, "_showtraceback", None)   # ipykernel: an "error" message
    if show is not None:
        show(etype, value, stb)
    else:
        print("\n".join(stb), file=sys.stderr, flush=True)
    return stb


def notebook_mode() -> bool:
    """In IPython/Jupyter: show an :class:`SSVIError` as its one line instead of a traceback
    (the cell still fails, so papermill stops). Returns False outside IPython."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False
    shell.set_custom_exc((SSVIError,), _ipython_handler)
    return True


def format_exception(exc: BaseException, debug: bool = False) -> str:
    """The text :func:`report_errors` prints for ``exc`` (with the traceback when ``debug``)."""
    if debug:
        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"error: {one_line(exc)}"


class SlowRunWarning(UserWarning):
    """A run is estimated to take very long on this device (e.g. the paper preset on a CPU)."""
