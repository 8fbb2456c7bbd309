"""The fingerprint's arithmetic that every runtime shares: evidence values -> one OOD score -> verdict.

Kept free of TensorFlow so that devices (agent, simulator) compute exactly what the host computes.
Each piece of evidence (an autoencoder's reconstruction error, the classifier's largest logit) is one
value per sample. A fixed transform makes it "larger = less usual" (``log``: ``ln(v + EPS)`` of an
error; ``negate``: ``-v`` of a confidence), a z-score against its held-out distribution standardises
it, ``z = (t(v) - z_mean) / z_std``, and the OOD score is the weighted mean over the evidence of
``max(z, 0)`` (only values less usual than usual count; each kind of evidence weighs the same); a
sample is OOD when its score exceeds the threshold calibrated at the target false-positive rate.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass

import numpy as np

from edgefp.fsutil import check_file_output, write_file_atomic

EPS = 1e-6
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 101)
SCORE_UNIT = 1 << 16  # fixed-point units per unit of z in an int8 bundle's score tables
TABLE_MAX = (1 << 31) - 1
COMBINE = "mean_positive_z"
OFF_SCALE_Z = 100.0  # the z an int8 output counts when it saturates at its least usual end
# An error's int8 output holds it twice: the second value's int8 weights are COARSE_WEIGHT where the
# first's are 127, so that it is exactly COARSE_FACTOR times coarser (docs/bundle.md).
COARSE_WEIGHT = 8
COARSE_FACTOR = 127 / COARSE_WEIGHT


def transformed(values: np.ndarray, transforms: list[str]) -> np.ndarray:
    """Evidence values (N, L) -> the transformed values whose z-scores are combined."""
    values = np.asarray(values, dtype=np.float64)
    out = np.empty_like(values)
    for j, kind in enumerate(transforms):
        if kind == "log":
            out[:, j] = np.log(np.maximum(values[:, j], 0.0) + EPS)
        elif kind == "negate":
            out[:, j] = -values[:, j]
        else:
            raise ValueError(f"unknown evidence transform {kind!r}")
    return out


def inverse_transform(t: float, kind: str) -> float:
    """The evidence value whose transform is ``t``."""
    return float(np.exp(t) - EPS) if kind == "log" else -float(t)


def zscores(values: np.ndarray, z_mean: np.ndarray, z_std: np.ndarray, transforms: list[str]) -> np.ndarray:
    """Standardised transformed evidence, (N, L)."""
    return (transformed(values, transforms) - z_mean) / z_std


def ood_score(values: np.ndarray, z_mean, z_std, weights, transforms: list[str]) -> np.ndarray:
    """Combine evidence (N, L) into one score per sample; higher = more out-of-distribution."""
    return np.maximum(zscores(values, z_mean, z_std, transforms), 0.0) @ np.asarray(weights, dtype=np.float64)


def z_stats(values: np.ndarray, transforms: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the transformed evidence of in-distribution samples, per column."""
    t = transformed(values, transforms)
    return t.mean(axis=0), np.maximum(t.std(axis=0), 1e-3)


def resolved(values: np.ndarray, steps, transforms: list[str]) -> np.ndarray:
    """int8 evidence (N, L), dequantised, as its transform is to see it: an error that rounds to 0 lies
    somewhere below half an int8 ``step`` and counts half a step (as 0, its logarithm would make it the
    most usual value by decades, and a few such held-out values would swamp the z statistics)."""
    floors = np.asarray([step / 2 if kind == "log" else -np.inf for step, kind in zip(steps, transforms)])
    return np.maximum(values, floors)


def z_table(
    scale: float,
    zero_point: int,
    z_mean: float,
    z_std: float,
    transform: str,
    scale_by: float = 1.0,
    coarse_factor: float | None = None,
):
    """One evidence output of an int8 bundle: ``scale_by x max(z, 0)`` in fixed point for each int8 value
    q = -128..127 of each of its values (``scale_by``: the output's weight times the number of outputs,
    so that a bundle's score is the table sum over ``unit x L``); 256 entries per value, value after value.
    An error output may hold a second value, the same error ``coarse_factor`` times coarser.

    The table makes an int8 bundle's score integer arithmetic (a sum of table entries), identical on
    every runtime and platform, host or microcontroller: no logarithm or float rounding to disagree on.
    Of an output's values, the first below the top of its range counts (:func:`counted`). No entry of a
    coarser value counts less than the finer value's last in its range, and the least usual end of the
    last value stands for everything beyond, off the scale the held-out data set: it counts OFF_SCALE_Z,
    so that a saturated output always outranks values within the range.
    """
    q = np.arange(-128, 128, dtype=np.float32)
    tables = []
    for step in [np.float32(scale)] + ([np.float32(scale) * np.float32(coarse_factor)] if coarse_factor else []):
        found = resolved(((q - np.float32(zero_point)) * step).astype(np.float64)[:, None], [scale], [transform])
        z = np.maximum((transformed(found, [transform])[:, 0] - z_mean) / z_std, 0.0)
        tables.append(np.maximum(z, tables[-1][254]) if tables else z)
    tables[-1][least_usual_q(transform) + 128] = max(tables[-1].max(), OFF_SCALE_Z)
    z = np.concatenate(tables)
    return np.minimum(np.round(z * scale_by * SCORE_UNIT), TABLE_MAX).astype(np.int64).tolist()


def counted(values_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The int8 values (N, W) of one evidence output, each coarser than the one before -> which of them
    counts for each sample, and its int8 value: the first below 127 (the top of an error's range: the
    evidence lies beyond it), else the last."""
    values_q = np.asarray(values_q, dtype=np.int64)
    counts = values_q != 127
    counts[:, -1] = True
    which = np.argmax(counts, axis=1)
    return which, values_q[np.arange(len(values_q)), which]


def least_usual_q(transform: str) -> int:
    """The int8 value at an output's least usual end: the top of an error's range, the bottom of a max logit's."""
    return 127 if transform == "log" else -128


def threshold_at_fpr(id_scores: np.ndarray, fpr: float) -> float:
    """The score above which ``fpr`` of in-distribution samples lie."""
    return float(np.quantile(id_scores, 1.0 - fpr, method="higher"))


def quantiles(values: np.ndarray) -> list[float]:
    """The distribution of ``values`` at QUANTILE_LEVELS (0 %, 1 %, ..., 100 %)."""
    return [float(v) for v in np.quantile(values, QUANTILE_LEVELS)]


@dataclass
class Calibration:
    """What held-out in-distribution evidence (N, L) says: per-column z statistics and value quantiles,
    and the threshold at the target false-positive rate with the scores' quantiles."""

    z_mean: np.ndarray
    z_std: np.ndarray
    value_quantiles: list[list[float]]
    threshold: float
    score_quantiles: list[float]


def calibrate(holdout_values: np.ndarray, fpr: float, transforms: list[str], weights) -> Calibration:
    z_mean, z_std = z_stats(holdout_values, transforms)
    scores = ood_score(holdout_values, z_mean, z_std, weights, transforms)
    return Calibration(
        z_mean=z_mean,
        z_std=z_std,
        value_quantiles=[quantiles(column) for column in np.asarray(holdout_values).T],
        threshold=threshold_at_fpr(scores, fpr),
        score_quantiles=quantiles(scores),
    )


@dataclass
class Scores:
    """The score file of the contract: one row per sample."""

    pred: np.ndarray  # (N,) predicted label values
    probs: np.ndarray  # (N, C) class probabilities
    ood_score: np.ndarray  # (N,) higher = more out-of-distribution
    is_ood: np.ndarray  # (N,) bool, ood_score above the calibrated threshold
    layer_errors: np.ndarray  # (N, L) the evidence values, one column per entry of the fingerprint's layers

    def save(self, path: str, *, force: bool = False) -> None:
        """Write the score file (all at once); an existing file is replaced only with ``force`` and only
        when it is a score file."""
        path = check_file_output(path, force=force, written_by_edgefp=is_score_file, kind="score file")
        buffer = io.BytesIO()
        np.savez(
            buffer,
            pred=np.asarray(self.pred, dtype=np.int64),
            probs=np.asarray(self.probs, dtype=np.float32),
            ood_score=np.asarray(self.ood_score, dtype=np.float32),
            is_ood=np.asarray(self.is_ood, dtype=bool),
            layer_errors=np.asarray(self.layer_errors, dtype=np.float32),
        )
        write_file_atomic(path, buffer.getvalue())

    def summary(self, y: np.ndarray | None, label_values: np.ndarray) -> dict:
        """Sample count, accuracy on the samples of the model's classes (when labelled), share flagged OOD."""
        known = None if y is None else np.isin(y, label_values)
        accuracy = float(np.mean(self.pred[known] == y[known])) if known is not None and known.any() else None
        return {
            "n": int(len(self.pred)),
            "n_known": None if known is None else int(known.sum()),
            "accuracy": accuracy,
            "ood_rate": float(np.mean(self.is_ood)),
        }

    @classmethod
    def load(cls, path: str) -> Scores:
        with np.load(path) as npz:
            return cls(**{name: npz[name] for name in cls.__dataclass_fields__})


def is_score_file(path: str) -> bool:
    """Whether ``path`` is a score file: an .npz of exactly the score arrays, or of a bundle without a
    fingerprint's outputs (``output``, ``output_1``..., ``pred``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False
    raw = {"output.npy", "pred.npy"} <= names and all(
        re.fullmatch(r"output(_[1-9][0-9]*)?\.npy|pred\.npy", name) for name in names
    )
    return raw or names == {f"{name}.npy" for name in Scores.__dataclass_fields__}
