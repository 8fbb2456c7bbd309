"""Shared by the benchmark scripts: where results go and what is recorded with them, and RUNs trained before."""

from __future__ import annotations

import datetime
import hashlib
import inspect
import json
import os
import platform
import sys
import time
from importlib import metadata

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
RUNS = "EDGEFP_BENCH_RUNS"  # a folder of RUNs trained before (keep_run), loaded rather than trained again


def environment() -> dict:
    versions = {}
    for package in ("edgefp", "numpy", "tensorflow", "tensorflow-cpu", "keras", "ai-edge-litert", "tflite-micro"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "versions": versions,
    }


def save(name: str, results: dict, markdown: str) -> None:
    """Write ``NAME.json`` (with the environment) and ``NAME.md`` into ``results/`` (or the folder
    ``EDGEFP_BENCH_RESULTS`` names), and print the table."""
    folder = os.environ.get("EDGEFP_BENCH_RESULTS", RESULTS)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}.json"), "w") as handle:
        json.dump({"environment": environment(), **results}, handle, indent=1)
    with open(os.path.join(folder, f"{name}.md"), "w") as handle:
        handle.write(markdown)
    print(markdown)
    print(f"saved {os.path.join(folder, name)}.json and .md")


def run_key(dataset, options: dict) -> str:
    """What identifies a training: the samples, labels and label names, and every option of ``train``
    (defaults filled in). Training is deterministic for a seed, so equal keys give equal RUNs."""
    from edgefp.trainer import train

    defaults = {name: p.default for name, p in inspect.signature(train).parameters.items() if name != "dataset"}
    settings = {**defaults, **options, "progress": None}
    digest = hashlib.sha256(json.dumps([settings, sorted(dataset.label_names.items())], default=str).encode())
    for array in (dataset.x, dataset.y):
        digest.update(f"{array.dtype}{array.shape}".encode() + array.tobytes())
    return digest.hexdigest()[:24]


def keep_run(fingerprint, dataset, options: dict, folder: str) -> None:
    """Keep a RUN trained by ``train(dataset, **options)`` in ``folder`` for :func:`trained` to find."""
    path = os.path.join(folder, run_key(dataset, options))
    fingerprint.save(path)
    seconds = {"fit_seconds": fingerprint.fit_seconds_, "train_seconds": getattr(fingerprint, "train_seconds_", None)}
    with open(path + ".json", "w") as handle:  # written last: the RUN is complete
        json.dump(seconds, handle)


def trained(dataset, **options):
    """``edgefp.trainer.train(dataset, **options)``, with ``train_seconds_`` the seconds it took; where the
    environment's ``EDGEFP_BENCH_RUNS`` names a folder, the same training's RUN kept there (:func:`keep_run`),
    trained and kept when it is not yet (``train_seconds_`` as measured then, None when unknown)."""
    from edgefp.trainer import NeuralFingerprint, train

    path = os.path.join(os.environ.get(RUNS, ""), run_key(dataset, options))
    if RUNS not in os.environ or not os.path.exists(path + ".json"):
        started = time.monotonic()
        fingerprint = train(dataset, progress=False, **options)
        fingerprint.train_seconds_ = time.monotonic() - started
        if RUNS in os.environ:
            keep_run(fingerprint, dataset, options, os.environ[RUNS])
        return fingerprint
    print(f"{dataset.name}: loaded the kept RUN {path}", file=sys.stderr)
    fingerprint = NeuralFingerprint.load(path)
    with open(path + ".json") as handle:
        kept = json.load(handle)
    fingerprint.fit_seconds_ = kept["fit_seconds"]
    fingerprint.train_seconds_ = kept.get("train_seconds")
    return fingerprint


def vector_set(name: str):
    """One of scikit-learn's small tabular sets (``wine``, ``iris``, ``breast_cancer``), every sample, as
    flat vectors (an ``edgefp.data.Dataset``)."""
    import numpy as np
    from sklearn import datasets

    from edgefp import data

    bunch = getattr(datasets, f"load_{name}")()
    names = {i: str(label) for i, label in enumerate(bunch.target_names)}
    return data.Dataset(bunch.data.astype(np.float32), bunch.target.astype(np.int64), name, names)


FLOOR = (
    "The floor: the classifier with the least any autoencoder fingerprint adds (`floor` in benchmarks/common.py: one "
    "autoencoder of one unit on the features the logits are made from, 4 operators)"
)


def floor(fingerprint, calib_x) -> bytes:
    """The least an autoencoder fingerprint can add to the classifier with TensorFlow Lite's built-in
    operators: one autoencoder of a single unit on the features the logits are made from, its clip to
    [-1, 1] fused into the encoder's FULLY_CONNECTED, the decoder's FULLY_CONNECTED, a SQUARED_DIFFERENCE
    and a FULLY_CONNECTED that averages it into the error; no pooling, class mean or max logit. Its
    weights are left untrained: they change no byte count or time."""
    import keras

    from edgefp.converter.convert import int8_tflite, strip
    from edgefp.trainer import taps

    model = fingerprint.model_
    logits, probs = taps.logits_and_probs(model)
    features = logits._keras_history.operation.input
    code = keras.ops.clip(keras.layers.Dense(1, name="floor_encode")(features), -1.0, 1.0)
    square = keras.ops.square(keras.layers.Dense(features.shape[-1], name="floor_decode")(code) - features)
    error = keras.layers.Dense(1, use_bias=False, name="floor_error")(square)
    return strip(int8_tflite(keras.Model(model.inputs, [probs, error], name="floor"), calib_x, name="edgefp_model"))
