"""A reviewer's labels: a JSON file beside the data, rewritten atomically after every label (so that
nothing is lost when the page or the server dies), and exported as a training file.

Each sample is labelled as one of the model's known classes, a new class named by the reviewer (it gets
the next free label value), or noise (left out of training). Schema ``edgefp.labels`` version 1::

    {"schema": "edgefp.labels", "version": 1, "data": "field.npz", "data_sha256": "...",
     "new_classes": [{"value": 5, "name": "five"}],
     "labels": {"<sample id>": {"kind": "class", "value": 5, "time": "..."} | {"kind": "noise", "time": "..."}}}
"""

from __future__ import annotations

import datetime
import io
import json
import os
import threading
import zipfile

import numpy as np

from edgefp.errors import EdgefpError, option
from edgefp.fsutil import check_file_output, read_json, write_file_atomic

SCHEMA, VERSION = "edgefp.labels", 1
NAME_MAX = 64


def default_path(data_path: str) -> str:
    return os.path.splitext(data_path)[0] + ".labels.json"


def is_export_of(path: str, digest: str) -> bool:
    """Whether ``path`` is a training file a review of the data with SHA-256 ``digest`` exported."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return "reviewed_from" in npz.files and str(npz["reviewed_from"]) == digest
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


class LabelStore:
    """The labels of one queue's samples, saved to ``path`` as they are set."""

    def __init__(self, path: str, queue):
        self.path, self.queue = path, queue
        self.lock = threading.Lock()
        self.new_classes: list[dict] = []
        self.labels: dict[str, dict] = {}
        if os.path.exists(path):
            self._load()

    def _load(self) -> None:
        saved = read_json(self.path, "labels file")
        try:
            if saved.get("schema") != SCHEMA or saved.get("version") != VERSION:
                raise ValueError(f"not {SCHEMA} version {VERSION}")
            self.new_classes = [{"value": int(c["value"]), "name": str(c["name"])} for c in saved["new_classes"]]
            self.labels = {str(key): dict(label) for key, label in saved["labels"].items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EdgefpError(
                f"{self.path}: not a labels file to continue ({exc}); give another {option('labels_path')}"
            ) from None

    @property
    def classes(self) -> list[dict]:
        """The classes a sample may get: the model's known ones, then the new ones, each with its value."""
        return [{**c, "new": False} for c in self.queue.classes] + [{**c, "new": True} for c in self.new_classes]

    def set(self, sample_id: str, label: dict) -> dict:
        """Label one sample (``{"kind": "class", "value": V}``, ``{"kind": "class", "name": N}`` for a class
        by name, new or not, ``{"kind": "noise"}``, ``{"kind": "clear"}``) and save; returns the label."""
        if sample_id not in self.queue.ids:
            raise EdgefpError(f"no sample '{sample_id}' in {self.queue.path}")
        kind = label.get("kind")
        with self.lock:
            if kind == "clear":
                self.labels.pop(sample_id, None)
                saved = None
            elif kind == "noise":
                saved = self.labels[sample_id] = {"kind": "noise", "time": _now()}
            elif kind == "class":
                value = self._value(label)
                saved = self.labels[sample_id] = {"kind": "class", "value": value, "time": _now()}
            else:
                raise EdgefpError(f"a label's kind is class, noise or clear, not {kind!r}")
            self.save()
        return saved

    def _value(self, label: dict) -> int:
        classes = self.classes
        if "name" in label:
            name = str(label["name"]).strip()
            if not name or len(name) > NAME_MAX or not name.isprintable():
                raise EdgefpError(f"a class name is 1 to {NAME_MAX} printable characters, not {name!r}")
            found = next((c["value"] for c in classes if c["name"] == name), None)
            if found is not None:
                return found
            value = max((c["value"] for c in classes), default=-1) + 1
            self.new_classes.append({"value": value, "name": name})
            return value
        value = label.get("value")
        if not isinstance(value, int) or value not in {c["value"] for c in classes}:
            raise EdgefpError(f"no class with value {value!r}; name a new class instead")
        return value

    def save(self) -> None:
        content = {
            "schema": SCHEMA,
            "version": VERSION,
            "data": os.path.basename(self.queue.path),
            "data_sha256": self.queue.digest,
            "new_classes": self.new_classes,
            "labels": self.labels,
        }
        write_file_atomic(self.path, json.dumps(content, indent=1).encode())

    def counts(self) -> dict:
        found = {"labelled": 0, "noise": 0, "classes": {}}
        names = {c["value"]: c["name"] for c in self.classes}
        for label in self.labels.values():
            found["labelled"] += 1
            if label["kind"] == "noise":
                found["noise"] += 1
            else:
                name = names.get(label["value"], str(label["value"]))
                found["classes"][name] = found["classes"].get(name, 0) + 1
        return found

    def export(self, out: str, *, force: bool = False) -> dict:
        """Write the samples labelled with a class as a training file: ``x``, ``y``, ``labels`` (the
        class names, indexed by label value) and ``reviewed_from`` (the data's SHA-256). An existing
        ``out`` is replaced only with ``force`` and when it is such a file, exported from the same data."""
        out = check_file_output(
            out,
            force=force,
            written_by_edgefp=lambda path: is_export_of(path, self.queue.digest),
            kind=f"training file exported from {self.queue.path}",
        )
        with self.lock:
            index = {sample_id: i for i, sample_id in enumerate(self.queue.ids)}
            chosen = [(index.get(key), label.get("value")) for key, label in self.labels.items()]
            chosen = [(i, value) for i, value in chosen if i is not None and value is not None]
            if not chosen:
                raise EdgefpError(f"no sample of {self.queue.path} is labelled with a class yet; label some first")
            chosen.sort()
            names = {c["value"]: c["name"] for c in self.classes}
            y = np.asarray([value for _, value in chosen], np.int64)
            label_names = np.asarray([names.get(v, str(v)) for v in range(int(y.max()) + 1)], dtype=str)
            buffer = io.BytesIO()
            x = self.queue.x[[i for i, _ in chosen]].astype(np.float32)
            np.savez(buffer, x=x, y=y, labels=label_names, reviewed_from=np.asarray(self.queue.digest))
            write_file_atomic(out, buffer.getvalue())
        per_class = {str(label_names[v]): int(np.sum(y == v)) for v in np.unique(y)}
        return {"out": out, "samples": len(y), "classes": per_class, "noise": self.counts()["noise"]}
