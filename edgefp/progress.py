"""Progress reporting: a bar on a terminal, a few plain lines otherwise, always on stderr."""

from __future__ import annotations

import sys
import time

import click


class Progress:
    """Report ``total`` steps of one task: ``with Progress("training", 100) as p: p.update(1)``."""

    def __init__(self, label: str, total: int, *, enabled: bool = True):
        self.label, self.total, self.enabled = label, max(1, total), enabled
        self.done = 0
        self._bar = None
        self._next_line = 0.0
        self._start = 0.0

    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        if self.enabled and sys.stderr.isatty():
            self._bar = click.progressbar(length=self.total, label=self.label, file=sys.stderr)
            self._bar.__enter__()
        elif self.enabled:
            click.echo(f"{self.label} ...", err=True)
            self._next_line = self._start + 10.0
        return self

    def update(self, steps: int = 1) -> None:
        self.done += steps
        if self._bar is not None:
            self._bar.update(steps)
        elif self.enabled and time.monotonic() >= self._next_line > 0:
            click.echo(f"{self.label}: {100 * self.done // self.total}%", err=True)
            self._next_line = time.monotonic() + 10.0

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        elif self.enabled and exc[0] is None:
            click.echo(f"{self.label}: done in {time.monotonic() - self._start:.1f} s", err=True)
