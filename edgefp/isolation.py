"""Native crashes reported, not suffered: a command runs in a child process, and when native code
(TensorFlow, LiteRT, TFLite Micro, the firmware's engine) kills it with a signal, the parent prints one
line naming the step it was in and exits with status 2, like any other error.

Library code marks its steps with :func:`step`; outside a supervised command that costs next to nothing.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import sys
from collections.abc import Callable

CRASHES = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT, signal.SIGKILL}
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
STEP_BYTES = 512

_board: mmap.mmap | None = None  # shared with the supervising parent: the current step, NUL-terminated
_current = ""


@contextlib.contextmanager
def step(what: str):
    """Mark what the code inside is doing (``converting the model to int8``), for a crash report."""
    global _current
    previous, _current = _current, what
    _publish(what)
    try:
        yield
    finally:
        _current = previous
        _publish(previous)


def _publish(what: str) -> None:
    if _board is not None:
        text = what.encode()[: STEP_BYTES - 1] + b"\0"
        _board[: len(text)] = text


def supervised(run: Callable[[], None], command: str) -> None:
    """Run ``run`` (which ends the process with ``sys.exit``) in a forked child and exit as it does;
    when a signal in :data:`CRASHES` ended it, print which step crashed and exit with status 2.

    The parent passes on SIGTERM, SIGHUP and SIGQUIT and ignores SIGINT (a terminal sends Ctrl-C to both);
    the child gets SIGTERM if the parent dies. Where ``os.fork`` is missing, ``run`` runs in this process."""
    global _board
    if not hasattr(os, "fork"):
        run()
        return
    _board = mmap.mmap(-1, STEP_BYTES)
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        _end_with(parent)
        run()
        sys.exit(0)
    for signum in FORWARDED:
        signal.signal(signum, lambda signum, _frame: os.kill(child, signum))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _, status = os.waitpid(child, 0)
    if not os.WIFSIGNALED(status):
        sys.exit(os.waitstatus_to_exitcode(status))
    signum = os.WTERMSIG(status)
    if signum not in CRASHES:
        signal.signal(signum, signal.SIG_DFL)  # end the way the child ended
        os.kill(os.getpid(), signum)
    name = signal.Signals(signum).name + (", out of memory?" if signum == signal.SIGKILL else "")
    where = _board[:].split(b"\0")[0].decode(errors="replace") or f"running 'edgefp {command}'"
    print(
        f"edgefp: error: crashed ({name}) while {where}; native code failed there, "
        "so please report it with the model and data that caused it",
        file=sys.stderr,
    )
    sys.exit(2)


def _end_with(parent: int) -> None:
    """Have Linux send this process SIGTERM when its parent dies (elsewhere: nothing)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl
            os.kill(os.getpid(), signal.SIGTERM)
