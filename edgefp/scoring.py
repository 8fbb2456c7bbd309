"""Scoring data with a RUN (the float model, on the host) or a bundle (the int8 model, on a chosen
runtime): one entry point that tells them apart by what is on disk."""

from __future__ import annotations

import os
from dataclasses import dataclass

from edgefp.errors import EdgefpError


@dataclass
class Scored:
    """What :func:`score` found: the score file (``ood.Scores``, or ``wrap.Outputs`` for a bundle without
    a fingerprint), the data it scored, the runtime ("float" for a RUN), and the model's label values and
    OOD threshold (None without a fingerprint)."""

    scores: object
    dataset: object
    runtime: str
    labels: object = None
    threshold: float | None = None
    source: str = ""

    @property
    def fingerprinted(self) -> bool:
        return self.threshold is not None

    def summary(self) -> dict:
        """Accuracy and OOD share (or, without a fingerprint, the outputs' shapes and argmax accuracy)."""
        if not self.fingerprinted:
            return self.scores.summary(self.dataset.y)
        return self.scores.summary(self.dataset.y, self.labels)


def load_for(bundle, data: str):
    """The data ``data`` as ``bundle`` takes it: raw samples for a fingerprinted bundle (it quantises
    them), else as the model's input tensor holds them."""
    if bundle.fingerprinted:
        from edgefp.data import load

        return load(data)
    from edgefp.wrap import load_inputs

    return load_inputs(data, bundle)


def score(model: str, data: str, runtime: str = "litert") -> Scored:
    """Score the data ``data`` (a data spec, :func:`edgefp.data.load`) with ``model``: a RUN directory
    (float, on the host; ``runtime`` is not used) or a bundle (int8 on ``runtime``). A bundle without a
    fingerprint takes the data as its input tensor holds it and gives its raw outputs."""
    from edgefp.data import load

    if not os.path.exists(model):
        raise EdgefpError(
            f"{model}: no such RUN directory or bundle; create one with 'edgefp train' or 'edgefp convert'"
        )
    if os.path.isdir(model) and os.path.exists(os.path.join(model, "fingerprint.json")):
        from edgefp.trainer import NeuralFingerprint

        dataset = load(data)
        fp = NeuralFingerprint.load(model)
        return Scored(fp.score(dataset.x), dataset, "float", fp.label_values_, fp.threshold_, model)
    from edgefp.bundle import Bundle

    bundle = Bundle.load(model)
    dataset = load_for(bundle, data)
    if not bundle.fingerprinted:
        return Scored(bundle.score(dataset.x, runtime), dataset, runtime, source=bundle.source)
    return Scored(bundle.score(dataset.x, runtime), dataset, runtime, bundle.label_values, bundle.threshold, model)
