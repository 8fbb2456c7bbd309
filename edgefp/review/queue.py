"""What a reviewer looks at: the samples of a data file to label, most out-of-distribution first, each
with its scores, each layer's evidence and its nearest in-distribution examples.

Scores come from the file itself (``edgefp record`` writes them), or from a bundle that scores the
samples again (``--bundle``). The known classes are that bundle's labels (or those of the bundle active
on a device, ``--port``, or of the model that recorded the file), else the reference data's. The
nearest examples come from labelled reference data (``--reference``, e.g. the training data), else from
the file's own samples the model found in distribution, labelled with its prediction.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from edgefp import data
from edgefp.errors import EdgefpError
from edgefp.manifest import Manifest
from edgefp.ood import SCORE_UNIT

NEIGHBOURS = 3


@dataclass
class Reference:
    """In-distribution examples: samples, their label names, and where they come from."""

    x: np.ndarray
    names: list[str]
    source: str


class Queue:
    """The samples of ``path`` to review, in order, and everything shown beside them."""

    def __init__(self, path: str, *, bundle=None, manifest: Manifest | None = None, reference=None, everything=False):
        dataset = data.load(path)
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
        self.path, self.x = path, dataset.x
        with open(path, "rb") as handle:
            self.digest = hashlib.sha256(handle.read()).hexdigest()
        n = len(self.x)
        if "session" in arrays and "input" in arrays:
            self.ids = [f"{int(s)}:{int(i)}" for s, i in zip(arrays["session"], arrays["input"])]
        else:
            self.ids = [str(i) for i in range(n)]
        if manifest is None and bundle is not None:
            manifest = bundle.manifest
        if bundle is not None:
            from edgefp.runtime import open_runtime

            interpreter = open_runtime(bundle.model_bytes, "litert")
            probs_q, errors_q = bundle.invoke_all(interpreter, bundle.quantize(self.x, path))
            scores = bundle.decide(probs_q, errors_q)
            arrays.update(ood_score=scores.ood_score, is_ood=scores.is_ood, pred=scores.pred)
            arrays["evidence"] = bundle.layer_evidence(errors_q) / SCORE_UNIT
        self.score = np.asarray(arrays.get("ood_score", np.full(n, np.nan)), dtype=np.float64)
        self.is_ood = np.asarray(arrays.get("is_ood", np.ones(n, bool)), dtype=bool)
        self.pred = np.asarray(arrays["pred"], np.int64) if "pred" in arrays else None
        self.evidence = np.asarray(arrays["evidence"], np.float64) if "evidence" in arrays else None
        if manifest is not None:
            self.classes = [{"value": label.value, "name": label.name} for label in manifest.labels]
            self.layers = [layer.name for layer in manifest.layers]
            self.threshold = float(manifest.score.threshold)
        else:
            values, names = arrays.get("model_label_values", []), arrays.get("model_label_names", [])
            self.classes = [{"value": int(v), "name": str(name)} for v, name in zip(values, names)]
            self.layers = [str(name) for name in arrays.get("layer_names", [])]
            self.threshold = None
        if not self.classes and reference is not None and reference.y is not None:  # the reference's classes then
            names = reference.label_names
            self.classes = [{"value": int(v), "name": names.get(int(v), str(int(v)))} for v in np.unique(reference.y)]
        self.order = [int(i) for i in np.flatnonzero(self.is_ood | everything)]
        self.order.sort(key=lambda i: (-np.nan_to_num(self.score[i], nan=-np.inf), i))
        self.reference = self._reference(reference)
        self._scale = _standardizer(self.reference.x if self.reference else self.x)

    def _reference(self, reference) -> Reference | None:
        if reference is not None:
            if reference.y is None:
                raise EdgefpError(f"{reference.name}: reference data needs labels ('y') to name the examples")
            if reference.x.shape[1:] != self.x.shape[1:]:
                raise EdgefpError(
                    f"{reference.name}: reference samples are {reference.x.shape[1:]}, "
                    f"those of {self.path} {self.x.shape[1:]}; give reference data of the same shape"
                )
            names = [reference.label_names.get(int(y), str(int(y))) for y in reference.y]
            return Reference(reference.x, names, reference.name)
        known = np.flatnonzero(~self.is_ood)
        if self.pred is None or len(known) == 0:
            return None
        by_value = {c["value"]: c["name"] for c in self.classes}
        names = [f"{by_value.get(int(p), str(int(p)))} (predicted)" for p in self.pred[known]]
        return Reference(self.x[known], names, f"{os.path.basename(self.path)}, in distribution")

    def __len__(self) -> int:
        return len(self.order)

    def kind(self) -> str:
        """How a sample is drawn: ``image`` (H, W, C), ``sequence`` (T, C) or ``vector`` (D,)."""
        return {3: "image", 2: "sequence"}.get(self.x.ndim - 1, "vector")

    def summary(self, index: int) -> dict:
        """What the queue shows of sample ``index`` before it is opened."""
        score = self.score[index]
        return {
            "id": self.ids[index],
            "index": index,
            "score": None if np.isnan(score) else round(float(score), 4),
            "ood": bool(self.is_ood[index]),
            "pred": self._name(self.pred[index]) if self.pred is not None else None,
        }

    def sample(self, index: int) -> dict:
        """Everything shown for sample ``index``: its values, evidence per layer, nearest examples."""
        found = self.summary(index)
        found["x"] = _values(self.x[index])
        if self.evidence is not None and self.layers:
            found["evidence"] = [
                {"layer": name, "z": round(float(z), 3)} for name, z in zip(self.layers, self.evidence[index])
            ]
        found["neighbours"] = self.neighbours(index)
        return found

    def neighbours(self, index: int) -> list[dict]:
        if self.reference is None:
            return []
        ref = self._scale(self.reference.x).reshape(len(self.reference.x), -1)
        target = self._scale(self.x[index : index + 1]).reshape(1, -1)
        distance = np.sqrt(np.maximum(((ref - target) ** 2).sum(axis=1), 0.0) / ref.shape[1])
        nearest = np.argsort(distance, kind="stable")[:NEIGHBOURS]
        ref_x, names = self.reference.x, self.reference.names
        return [{"label": names[j], "distance": round(float(distance[j]), 3), "x": _values(ref_x[j])} for j in nearest]

    def _name(self, value) -> str:
        return next((c["name"] for c in self.classes if c["value"] == int(value)), str(int(value)))

    def describe(self) -> dict:
        """The page's header: the file, the shape and kind of its samples, the known classes."""
        return {
            "data": os.path.basename(self.path),
            "shape": list(self.x.shape[1:]),
            "kind": self.kind(),
            "samples": len(self.x),
            "queued": len(self.order),
            "known": self.classes,
            "layers": self.layers,
            "threshold": self.threshold,
            "reference": self.reference.source if self.reference else None,
            "queue": [self.summary(i) for i in self.order],
        }


def _values(x: np.ndarray) -> list:
    return np.round(np.asarray(x, np.float64), 6).tolist()


def _standardizer(x: np.ndarray):
    """Per channel z-scores of the reference data: distances do not favour the channels of largest range."""
    axes = tuple(range(x.ndim - 1))
    mean, std = x.mean(axis=axes), x.std(axis=axes)
    std = np.where(std > 0, std, 1.0)
    return lambda values: (values - mean) / std
