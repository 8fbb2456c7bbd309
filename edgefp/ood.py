"""The fingerprint's arithmetic that every runtime shares: per-layer errors -> one OOD score -> verdict.

Kept free of TensorFlow so that devices (agent, simulator) compute exactly what the host computes.
Each layer's reconstruction error ``e`` becomes a z-score of its log against the held-out error
distribution, ``z = (ln(e + EPS) - mu) / sigma``; the OOD score is the mean over layers of
``max(z, 0)`` (only errors larger than usual count as evidence), and a sample is OOD when its score
exceeds the threshold calibrated at the target false-positive rate.
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


def layer_zscores(layer_errors: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Standardised log errors, (N, L)."""
    return (np.log(np.asarray(layer_errors, dtype=np.float64) + EPS) - mu) / sigma


def ood_score(layer_errors: np.ndarray, mu: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Combine per-layer errors (N, L) into one score per sample; higher = more out-of-distribution."""
    return np.maximum(layer_zscores(layer_errors, mu, sigma), 0.0).mean(axis=1)


def log_error_stats(layer_errors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the log errors of in-distribution samples, per layer."""
    logs = np.log(np.asarray(layer_errors, dtype=np.float64) + EPS)
    return logs.mean(axis=0), np.maximum(logs.std(axis=0), 1e-3)


def z_table(scale: float, zero_point: int, mu: float, sigma: float, eps: float = EPS) -> list[int]:
    """One layer of an int8 bundle: ``max(z, 0)`` in fixed point for each int8 error q = -128..127.

    The table makes an int8 bundle's score integer arithmetic (a sum of table entries), identical on
    every runtime and platform, host or microcontroller: no logarithm or float rounding to disagree on.
    """
    q = np.arange(-128, 128, dtype=np.float32)
    errors = np.maximum((q - np.float32(zero_point)) * np.float32(scale), 0.0).astype(np.float64)
    z = np.maximum((np.log(errors + eps) - mu) / sigma, 0.0)
    return np.minimum(np.round(z * SCORE_UNIT), TABLE_MAX).astype(np.int64).tolist()


def threshold_at_fpr(id_scores: np.ndarray, fpr: float) -> float:
    """The score above which ``fpr`` of in-distribution samples lie."""
    return float(np.quantile(id_scores, 1.0 - fpr, method="higher"))


def quantiles(values: np.ndarray) -> list[float]:
    """The distribution of ``values`` at QUANTILE_LEVELS (0 %, 1 %, ..., 100 %)."""
    return [float(v) for v in np.quantile(values, QUANTILE_LEVELS)]


@dataclass
class Calibration:
    """What held-out in-distribution errors (N, L) say: per-layer log-error statistics and error
    quantiles, and the threshold at the target false-positive rate with the scores' quantiles."""

    mu: np.ndarray
    sigma: np.ndarray
    error_quantiles: list[list[float]]
    threshold: float
    score_quantiles: list[float]


def calibrate(holdout_errors: np.ndarray, fpr: float) -> Calibration:
    mu, sigma = log_error_stats(holdout_errors)
    scores = ood_score(holdout_errors, mu, sigma)
    return Calibration(
        mu=mu,
        sigma=sigma,
        error_quantiles=[quantiles(column) for column in np.asarray(holdout_errors).T],
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
    layer_errors: np.ndarray  # (N, L) reconstruction error of each fingerprinted layer

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
