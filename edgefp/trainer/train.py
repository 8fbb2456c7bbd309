"""The trainer's two entry points: train a classifier and fingerprint it, or fingerprint the user's own."""

from __future__ import annotations

import os

import numpy as np

from edgefp import data
from edgefp.errors import EdgefpError
from edgefp.isolation import step
from edgefp.trainer.fingerprint import NeuralFingerprint, check_sample_counts
from edgefp.trainer.models import train_classifier

HOLDOUT = 0.2
FINGERPRINTING = "fingerprinting the classifier (TensorFlow)"


def train(
    dataset: data.Dataset, *, epochs=None, autoencoder_epochs=None, seed=0, layers=None, fpr=0.05, progress=None
) -> NeuralFingerprint:
    """Train a classifier suited to the samples' shape on labelled ``dataset``, then fingerprint it.

    A stratified share HOLDOUT of the data is kept out of all training; it calibrates the fingerprint.
    ``epochs`` and ``autoencoder_epochs`` default to automatic counts (about 1,500 steps each).
    ``progress(task, done, total)`` is told each epoch (:mod:`edgefp.progress`).
    """
    data.check(dataset, require_labels=True)
    if not 0.0 < fpr < 1.0:
        raise EdgefpError(f"the target false-positive rate must be between 0 and 1, got {fpr}")
    values = np.unique(dataset.y)
    if len(values) < 2:
        raise EdgefpError(f"{dataset.name}: a classifier needs at least two classes, found only {values.tolist()}")
    labels = [
        {"index": i, "value": int(v), "name": dataset.label_names.get(int(v), str(v))} for i, v in enumerate(values)
    ]
    held = data.stratified_split(dataset.y, HOLDOUT, seed)
    x_fit, x_holdout = dataset.x[~held], dataset.x[held]
    check_sample_counts(len(x_fit), len(x_holdout), HOLDOUT)
    preprocessing = data.standardizer(x_fit)
    y_fit = np.searchsorted(values, dataset.y[~held])
    x_model = data.apply_preprocessing(x_fit, preprocessing)
    with step("training the classifier (TensorFlow)"):
        model = train_classifier(x_model, y_fit, len(values), epochs=epochs, seed=seed, progress=progress)
    fingerprint = NeuralFingerprint(
        layers=layers, fpr=fpr, holdout=HOLDOUT, epochs=autoencoder_epochs, seed=seed, progress=progress
    )
    with step(FINGERPRINTING):
        return fingerprint.fit(model, x_fit, x_holdout, preprocessing=preprocessing, labels=labels)


def fingerprint_model(
    model_path: str, dataset: data.Dataset, *, layers=None, fpr=0.05, epochs=None, seed=0, progress=None
) -> NeuralFingerprint:
    """Fingerprint the user's Keras classifier on unlabeled in-distribution ``dataset``.

    The samples are given as the model takes them (no preprocessing is added)."""
    import keras

    if not os.path.exists(model_path):
        raise EdgefpError(f"{model_path}: no such model file; give a Keras model saved with model.save('model.keras')")
    try:
        with step("loading the Keras model"):
            model = keras.models.load_model(model_path, compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for unreadable models
        raise EdgefpError(f"{model_path}: cannot load the Keras model ({str(exc).splitlines()[0]})") from exc
    label_names = dataset.label_names
    n_classes = int(model.outputs[0].shape[-1])
    labels = [{"index": i, "value": i, "name": label_names.get(i, str(i))} for i in range(n_classes)]
    fingerprint = NeuralFingerprint(layers=layers, fpr=fpr, epochs=epochs, seed=seed, progress=progress)
    with step(FINGERPRINTING):
        return fingerprint.fit(model, dataset.x, labels=labels)
