"""Reviewing what the model has never seen: a local web page where a person labels out-of-distribution
samples (a known class, a new class, or noise), their labels saved as they go and exported as a training
file for the next model (README, "The human in the loop")."""

from __future__ import annotations

import os

from edgefp.review.labels import LabelStore, default_path
from edgefp.review.queue import Queue
from edgefp.review.server import ReviewServer

__all__ = ["Review", "ReviewServer", "default_export_path"]


def default_export_path(data_path: str) -> str:
    return os.path.splitext(data_path)[0] + ".reviewed.npz"


class Review:
    """A data file under review: its queue, its labels file and where the training file goes."""

    def __init__(self, data_path: str, *, labels_path=None, export_path=None, force=False, **queue_options):
        self.queue = Queue(data_path, **queue_options)
        self.store = LabelStore(labels_path or default_path(data_path), self.queue)
        self.export_path = export_path or default_export_path(data_path)
        self.force = force  # replace an earlier export of the same data found at the start
        self.written: set[str] = set()  # exports this review wrote: the page may export again

    def classes_and_counts(self) -> dict:
        return {"classes": self.store.classes, "counts": self.store.counts()}

    def state(self) -> dict:
        return {
            **self.queue.describe(),
            **self.classes_and_counts(),
            "labels": self.store.labels,
            "data_sha256": self.queue.digest,
            "labels_file": self.store.path,
            "export": self.export_path,
        }

    def sample(self, index: int) -> dict:
        found = self.queue.sample(index)
        found["label"] = self.store.labels.get(found["id"])
        return found

    def export(self, out: str | None = None) -> dict:
        out = out or self.export_path
        report = self.store.export(out, force=self.force or out in self.written)
        self.written.add(out)
        return report
