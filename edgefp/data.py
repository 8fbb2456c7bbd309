"""Loading and checking data sets: `.npz` files, their train/test splits, and the built-in sets.

A data spec is ``SOURCE[:SPLIT][:CLASSES]``:

- ``SOURCE`` is a built-in set (``digits``: scikit-learn's 8x8 handwritten digits; ``basic_motions``,
  ``gun_point``, ``arrow_head``: sensor series from the UCR/UEA archive, shipped in ``edgefp/datasets``)
  or a path to an ``.npz`` file holding ``x`` (N, ...) and optionally ``y`` (N,), or
  ``x_train/y_train/x_test/y_test``;
- ``SPLIT`` is ``train`` or ``test`` (a built-in set without one is all of it);
- ``CLASSES`` keeps only some labels, e.g. ``0-4`` or ``0,2,5``.

Examples: ``digits:train:0-4``, ``basic_motions:test``, ``motions.npz:test``, ``target.npz``.

Everything a long run would trip over later is refused here, in one line: values beyond
:data:`MAX_VALUE`, samples without values, labels that are not integers from 0 to :data:`MAX_LABEL`.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edgefp.errors import EdgefpError

if TYPE_CHECKING:  # the manifest reads this module's preprocessing
    from edgefp.manifest import Input, Output

SPLITS = ("train", "test")
DIGITS_TEST_FRACTION = 0.25
SENSOR_SETS = ("basic_motions", "gun_point", "arrow_head")
BUILTIN = ("digits", *SENSOR_SETS)
DATASETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "datasets")
MAX_VALUE = 1e15  # largest magnitude accepted: squares and sums of such values stay far from float32's limit
MAX_LABEL = 2**31 - 1  # labels are int32 on devices
MAX_NPZ_BYTES = 2 << 30  # arrays of a data file, unpacked
_CLASSES_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


@dataclass
class Dataset:
    """Samples ``x`` (float32, N first), optional integer labels ``y`` and class names."""

    x: np.ndarray
    y: np.ndarray | None
    name: str
    label_names: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index: np.ndarray, name: str | None = None) -> Dataset:
        y = None if self.y is None else self.y[index]
        return Dataset(self.x[index], y, name or self.name, self.label_names)


def parse_spec(spec: str) -> tuple[str, str | None, list[tuple[int, int]] | None]:
    """Split a data spec into (source, split, classes), the classes as inclusive (low, high) ranges."""
    parts = spec.split(":")
    classes = None
    if len(parts) > 1 and _CLASSES_RE.match(parts[-1]):
        classes = _parse_classes(parts.pop(), spec)
    split = None
    if len(parts) > 1 and parts[-1] in SPLITS:
        split = parts.pop()
    return ":".join(parts), split, classes


def _parse_classes(text: str, spec: str) -> list[tuple[int, int]]:
    ranges = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        low, high = int(low), int(high or low)
        if high > MAX_LABEL:
            raise EdgefpError(f"{spec}: class {high} is beyond the largest label, {MAX_LABEL}")
        if low > high:
            raise EdgefpError(f"{spec}: the class range {part} is empty; write it low-high")
        ranges.append((low, high))
    return ranges


def load(spec: str, *, require_labels: bool = False) -> Dataset:
    """Load and check the data set named by ``spec``; raise EdgefpError with one clear line if bad."""
    if not spec.isprintable():
        raise EdgefpError(f"{spec!r}: a data spec cannot hold control characters such as line breaks")
    source, split, classes = parse_spec(spec)
    if source == "digits":
        x, y, names = _load_digits(split)
    elif source in SENSOR_SETS:
        x, y, names = _load_sensor_set(source, split, spec)
    else:
        x, y, names = _load_npz(source, split, spec)
    data = Dataset(x, y, spec, names)
    check(data, require_labels=require_labels)
    if classes is not None:
        if data.y is None:
            raise EdgefpError(f"{spec}: a class filter needs labels, but the file has no 'y'")
        data = data.subset(np.any([(data.y >= low) & (data.y <= high) for low, high in classes], axis=0))
        if len(data) == 0:
            raise EdgefpError(f"{spec}: no samples have labels {spec.rsplit(':', 1)[1]}")
    return data


def load_all(specs, *, require_labels: bool = False) -> Dataset:
    """Several data specs as one data set (``edgefp train --data A --data B``): old data plus reviewed
    samples, say. The samples must have one shape, and labels and class names must agree."""
    datasets = [load(spec, require_labels=require_labels) for spec in specs]
    if len(datasets) == 1:
        return datasets[0]
    first = datasets[0]
    for other in datasets[1:]:
        if other.x.shape[1:] != first.x.shape[1:]:
            raise EdgefpError(
                f"{other.name} has samples of {other.x.shape[1:]}, {first.name} of {first.x.shape[1:]}; "
                "data sets trained on together need one shape"
            )
        if (other.y is None) != (first.y is None):
            raise EdgefpError(f"{first.name} and {other.name}: either both have labels ('y') or neither")
    names: dict[int, str] = {}
    for dataset in datasets:
        present = np.unique(dataset.y) if dataset.y is not None else []
        for value in map(int, present):
            name = dataset.label_names.get(value)
            if name is not None and names.setdefault(value, name) != name:
                raise EdgefpError(
                    f"label {value} is '{names[value]}' in one data set and '{name}' in {dataset.name}; "
                    "give one class one label"
                )
    y = None if first.y is None else np.concatenate([dataset.y for dataset in datasets])
    x = np.concatenate([dataset.x for dataset in datasets])
    return Dataset(x, y, " + ".join(dataset.name for dataset in datasets), names)


def _load_digits(split: str | None):
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise EdgefpError("the built-in 'digits' set needs scikit-learn: pip install 'edgefp[train]'") from exc
    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[..., None]
    y = bunch.target.astype(np.int64)
    if split is not None:
        test = stratified_split(y, DIGITS_TEST_FRACTION, seed=0)
        index = test if split == "test" else ~test
        x, y = x[index], y[index]
    return x, y, {int(i): str(i) for i in range(10)}


def _load_sensor_set(name: str, split: str | None, spec: str):
    """A built-in sensor set: one split, or both (train first) without one."""
    path = os.path.join(DATASETS_DIR, f"{name}.npz")
    if split is not None:
        return _load_npz(path, split, spec)
    (x_train, y_train, names), (x_test, y_test, _) = (_load_npz(path, part, spec) for part in SPLITS)
    return np.concatenate([x_train, x_test]), np.concatenate([y_train, y_test]), names


def _load_npz(path: str, split: str | None, spec: str):
    if not os.path.exists(path):
        raise EdgefpError(f"{spec}: no such file; give an .npz file, or a built-in set: {', '.join(BUILTIN)}")
    check_npz_size(path, spec)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except Exception as exc:  # noqa: BLE001 - numpy raises many types for unreadable files
        raise EdgefpError(f"{spec}: not a readable .npz file ({exc})") from exc
    if split is not None:
        xkey, ykey = f"x_{split}", f"y_{split}"
        if xkey not in arrays:
            raise EdgefpError(f"{spec}: the file has no '{xkey}' array (it holds {sorted(arrays)})")
    elif "x" in arrays:
        xkey, ykey = "x", "y"
    elif "x_train" in arrays:
        raise EdgefpError(f"{spec}: the file holds train/test splits; add ':train' or ':test'")
    else:
        raise EdgefpError(f"{spec}: the file has no 'x' array (it holds {sorted(arrays)})")
    names = {}
    if "labels" in arrays and arrays["labels"].ndim == 1:
        names = {i: str(name) for i, name in enumerate(arrays["labels"])}
    x = arrays[xkey]
    if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise EdgefpError(f"{spec}: '{xkey}' must hold real numbers, not {x.dtype}")
    y = arrays.get(ykey)
    if y is not None:
        if not np.issubdtype(y.dtype, np.integer):
            if not np.issubdtype(y.dtype, np.floating) or not np.all(np.mod(y, 1) == 0):
                raise EdgefpError(f"{spec}: labels '{ykey}' must be integers, not {y.dtype}")
        if y.size and (y.min() < 0 or y.max() > MAX_LABEL):
            found = y.min() if y.min() < 0 else y.max()
            raise EdgefpError(f"{spec}: labels must be integers from 0 to {MAX_LABEL}, found {found:g}")
        y = y.astype(np.int64)
    if x.ndim >= 2 and x.size:
        check_values(x, spec)  # before float32 could turn a large value into inf
    return x.astype(np.float32), y, names


def check_npz_size(path: str, spec: str) -> None:
    """Refuse an .npz whose arrays would take more than MAX_NPZ_BYTES, from its zip directory and the
    arrays' headers, before anything is decompressed (a few compressed megabytes can expand to gigabytes)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            declared = sum(member.file_size for member in members)
            arrays = sum(_npy_bytes(archive, member) for member in members if member.filename.endswith(".npy"))
    except (OSError, ValueError, zipfile.BadZipFile):
        return  # not a zip: np.load says what is wrong with it
    if max(declared, arrays) > MAX_NPZ_BYTES:
        raise EdgefpError(
            f"{spec}: its arrays take {max(declared, arrays) / (1 << 30):.1f} GiB unpacked, more than edgefp reads "
            f"({MAX_NPZ_BYTES / (1 << 30):.0f} GiB); give fewer samples"
        )


def _npy_bytes(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> int:
    """The bytes an .npy member's header says its array takes."""
    with archive.open(member) as handle:
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(handle)
    return math.prod(shape) * dtype.itemsize


def check(data: Dataset, *, require_labels: bool = False) -> None:
    """Raise EdgefpError if the samples or labels cannot be used."""
    x, y, name = data.x, data.y, data.name
    if x.ndim < 2:
        raise EdgefpError(f"{name}: x must be (N, features...) with one sample per row, got shape {x.shape}")
    if len(x) == 0:
        raise EdgefpError(f"{name}: the data set is empty")
    if x.size == 0:
        raise EdgefpError(f"{name}: the samples hold no values (shape {x.shape[1:]}); give at least one per sample")
    check_values(x, name)
    if y is None:
        if require_labels:
            raise EdgefpError(f"{name}: labels are needed here, but there is no 'y' array")
        return
    if y.shape != (len(x),):
        raise EdgefpError(f"{name}: y must have shape ({len(x)},) to match x, got {y.shape}")
    if (y < 0).any() or (y > MAX_LABEL).any():
        found = int(y.min()) if (y < 0).any() else int(y.max())
        raise EdgefpError(f"{name}: labels must be integers from 0 to {MAX_LABEL}, found {found}")


def check_values(x: np.ndarray, name: str) -> None:
    """Refuse samples (N first, any real dtype) holding NaN, inf or values beyond +-MAX_VALUE."""
    flat = x.reshape(len(x), -1)
    bad = ~np.isfinite(flat).all(axis=1)
    if bad.any():
        raise EdgefpError(f"{name}: {int(bad.sum())} samples hold NaN or inf (first at index {int(np.argmax(bad))})")
    huge = (np.abs(flat) > MAX_VALUE).any(axis=1)
    if huge.any():
        raise EdgefpError(
            f"{name}: {int(huge.sum())} samples hold values beyond +-{MAX_VALUE:g} (first at index "
            f"{int(np.argmax(huge))}, largest {float(np.abs(flat).max()):g}); rescale the data"
        )


def shape_fits(sample_shape: tuple[int, ...], model_shape: tuple[int, ...]) -> bool:
    """Whether samples of ``sample_shape`` fit a model input: the same shape, or without its last axis of 1."""
    sample_shape, model_shape = tuple(sample_shape), tuple(model_shape)
    return sample_shape == model_shape or (model_shape[-1:] == (1,) and sample_shape == model_shape[:-1])


def fit_input_shape(x: np.ndarray, expected: tuple[int, ...], name: str) -> np.ndarray:
    """Return ``x`` shaped for a model taking samples of shape ``expected``, or raise a clear error."""
    if x.shape[1:] == tuple(expected):
        return x
    if shape_fits(x.shape[1:], expected):
        return x[..., None]
    raise EdgefpError(
        f"{name}: samples have shape {x.shape[1:]} but the model expects {tuple(expected)}; "
        "give data of the shape the model was trained on"
    )


def stratified_split(y: np.ndarray | None, fraction: float, seed: int, n: int | None = None) -> np.ndarray:
    """Boolean mask choosing about ``fraction`` of each class (at least one sample per class)."""
    rng = np.random.default_rng(seed)
    if y is None:
        y = np.zeros(n, dtype=np.int64)
    mask = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = np.flatnonzero(y == label)
        take = max(1, int(round(fraction * len(members)))) if len(members) > 1 else 0
        mask[rng.choice(members, size=take, replace=False)] = True
    return mask


def standardizer(x: np.ndarray) -> dict:
    """Per-channel standardisation fitted on ``x``, as stored with a model (channels last).

    A channel that barely varies (a border pixel always 0) keeps a tenth of the average spread, so
    that an unusual value there stays a large number rather than an astronomical one."""
    axes = tuple(range(x.ndim - 1))
    std = x.std(axis=axes)
    floor = 0.1 * std.mean() if std.mean() > 0 else 1.0
    return {"type": "standardize", "mean": x.mean(axis=axes).tolist(), "std": np.maximum(std, floor).tolist()}


def apply_preprocessing(x: np.ndarray, preprocessing: dict) -> np.ndarray:
    """Apply a stored preprocessing (``none`` or per-channel ``standardize``) to raw samples."""
    if preprocessing["type"] == "none":
        return x.astype(np.float32)
    mean, std = np.asarray(preprocessing["mean"], np.float32), np.asarray(preprocessing["std"], np.float32)
    return ((x - mean) / std).astype(np.float32)


def undo_preprocessing(x: np.ndarray, preprocessing: dict) -> np.ndarray:
    """Model inputs back to raw samples: the inverse of :func:`apply_preprocessing`."""
    if preprocessing["type"] == "none":
        return x.astype(np.float32)
    mean, std = np.asarray(preprocessing["mean"], np.float32), np.asarray(preprocessing["std"], np.float32)
    return (x * std + mean).astype(np.float32)


def dequantize(values_q: np.ndarray, spec: Input | Output) -> np.ndarray:
    """A tensor's int8 values -> its float values, by the manifest's scale and zero point of that input or
    output (model inputs come back still preprocessed)."""
    return (np.asarray(values_q, dtype=np.float32) - np.float32(spec.zero_point)) * np.float32(spec.scale)


def to_raw(x_q: np.ndarray, input_spec: Input) -> np.ndarray:
    """Int8 model inputs -> raw samples: dequantise, then undo the preprocessing (the inverse of
    :meth:`edgefp.bundle.Bundle.quantize`, up to rounding and clipping)."""
    return input_spec.preprocessing.undo(dequantize(x_q, input_spec))
