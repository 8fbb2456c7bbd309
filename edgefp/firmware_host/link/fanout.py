"""One operation on several devices at once: each port in its own thread, with its own result, error and
time, so that one device failing (refusing, dropping its link, never answering) disturbs none of the others."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from edgefp.errors import EdgefpError

WAKE_S = 0.2  # how often the waiting thread wakes to see a Ctrl-C
JOIN_S = 5.0  # after Ctrl-C: how long the devices' work may take to end when told to stop


@dataclass
class Outcome:
    """What one device's share of the work came to: ``result`` when it succeeded, else ``error``."""

    port: str
    ok: bool = False
    result: object = None
    error: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready, the port named as the device it reaches."""
        return {"device": self.port, "ok": self.ok, "error": self.error, "seconds": self.seconds, "result": self.result}


def on_each(ports, work, *, on_progress=None, on_done=None, stop: threading.Event | None = None) -> list[Outcome]:
    """``work(port, progress)`` for every port at once, each in a thread of its own; the ``progress(done,
    total)`` a port's work tells goes to ``on_progress(port, done, total)``, its end to ``on_done(outcome)``
    (both called from the workers' threads). Whatever a device's work raises ends that work alone and is
    its outcome's error. On Ctrl-C, ``stop`` (which the work watches) is set and the work given
    :data:`JOIN_S` seconds to end before KeyboardInterrupt goes on. Returns the outcomes in the order of ``ports``."""
    outcomes = [Outcome(port) for port in ports]

    def run(outcome: Outcome, ended: threading.Event) -> None:
        start = time.monotonic()

        def progress(done: int, total: int) -> None:
            if on_progress is not None:
                on_progress(outcome.port, done, total)

        try:
            outcome.result, outcome.ok = work(outcome.port, progress), True
        except Exception as exc:  # any failure is this device's alone, reported as its outcome
            outcome.error = error_text(exc)
        outcome.seconds = time.monotonic() - start
        try:
            if on_done is not None:
                on_done(outcome)
        finally:
            ended.set()

    # Waited on through events, not Thread.join: a join that Ctrl-C interrupts can mark a thread that
    # still runs as ended (CPython 3.11), and the work would be left behind unwaited.
    ended = [threading.Event() for _ in outcomes]
    threads = [threading.Thread(target=run, args=pair, daemon=True) for pair in zip(outcomes, ended)]
    try:
        for thread in threads:
            thread.start()
        for event in ended:
            while not event.wait(WAKE_S):  # Ctrl-C is seen even when its signal reached another thread
                pass
    except KeyboardInterrupt:
        if stop is not None:
            stop.set()
            deadline = time.monotonic() + JOIN_S
            for thread, event in zip(threads, ended):
                if thread.ident is not None:  # started
                    event.wait(max(0.0, deadline - time.monotonic()))
        raise
    return outcomes


def error_text(exc: BaseException) -> str:
    """One line saying what went wrong: the message of an edgefp or system error, else also the error's kind."""
    text = str(exc) if isinstance(exc, (EdgefpError, OSError)) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())
