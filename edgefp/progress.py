"""Progress of long work, told to a callback the caller gives: ``progress(task, done, total)``, e.g.
``progress("training classifier", 3, 40)``; None (or False) tells nobody. The library shows nothing
itself: the CLI draws a bar on stderr."""

from __future__ import annotations


class Steps:
    """``total`` steps of one task told to ``progress``: ``steps = Steps(progress, "training", 100)``,
    then ``steps.update(1)`` after each (the task's start is told at once, as 0 done)."""

    def __init__(self, progress, task: str, total: int):
        self.progress, self.task, self.total = progress or None, task, max(1, total)
        self.done = 0
        self._tell()

    def update(self, steps: int = 1) -> None:
        self.done += steps
        self._tell()

    def _tell(self) -> None:
        if self.progress is not None:
            self.progress(self.task, self.done, self.total)
