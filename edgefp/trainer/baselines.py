"""Standard OOD baselines on the same classifier, for comparison with the fingerprint score.

Each has ``fit`` returning ``self`` and ``ood_score`` giving one score per sample, higher = more
out-of-distribution, as :meth:`edgefp.trainer.NeuralFingerprint.ood_score` (scikit-learn's
``score_samples`` is the opposite: higher = more normal). Inputs are preprocessed samples, as the
classifier takes them.
"""

from __future__ import annotations

import numpy as np

from edgefp.trainer import taps


def _logsumexp(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]


class _LogitBaseline:
    def fit(self, model, x=None, y=None):
        import keras

        self.logit_model_ = keras.Model(model.inputs, taps.logits_and_probs(model)[0])
        return self

    def _logits(self, x) -> np.ndarray:
        return np.asarray(self.logit_model_.predict(x, verbose=0, batch_size=256), dtype=np.float64)


class MaxSoftmax(_LogitBaseline):
    """One minus the largest class probability (Hendrycks & Gimpel, 2017)."""

    def ood_score(self, x) -> np.ndarray:
        logits = self._logits(x)
        return 1.0 - np.exp(logits.max(axis=1) - _logsumexp(logits))


class Energy(_LogitBaseline):
    """Negative log-sum-exp of the logits, the free energy (Liu et al., 2020)."""

    def ood_score(self, x) -> np.ndarray:
        return -_logsumexp(self._logits(x))


def _penultimate_model(model):
    """Keras model: preprocessed samples -> (penultimate features, logits)."""
    import keras

    logits, _ = taps.logits_and_probs(model)
    return keras.Model(model.inputs, [logits._keras_history.operation.input, logits])


class _FeatureBaseline:
    """Detectors on the penultimate features (the input of the logits layer) of the training samples."""

    def _features(self, x):
        features, logits = self.feature_model_.predict(x, verbose=0, batch_size=256)
        return np.asarray(features, dtype=np.float64).reshape(len(x), -1), logits

    def _fit_features(self, model, x, y):
        """Penultimate features of ``x`` and their classes (the labels, else the classifier's predictions)."""
        self.feature_model_ = _penultimate_model(model)
        features, logits = self._features(x)
        return features, np.argmax(logits, axis=1) if y is None else np.asarray(y)


def _precision(centered: np.ndarray) -> np.ndarray:
    cov = centered.T @ centered / len(centered)
    return np.linalg.pinv(cov + 1e-6 * np.eye(len(cov)))


def _squared_distances(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of every sample (N, D) to every mean (K, D): (N, K)."""
    diff = features[:, None, :] - means[None]
    return np.einsum("ncd,de,nce->nc", diff, precision, diff)


class Mahalanobis(_FeatureBaseline):
    """Smallest Mahalanobis distance to a class mean of the penultimate features, with one shared
    covariance (Lee et al., 2018, without input preprocessing). Uses the classifier's predictions
    as classes when no labels are given."""

    def fit(self, model, x, y=None):
        features, classes = self._fit_features(model, x, y)
        values, index = np.unique(classes, return_inverse=True)
        self.means_ = np.stack([features[index == c].mean(axis=0) for c in range(len(values))])
        self.precision_ = _precision(features - self.means_[index])
        return self

    def ood_score(self, x) -> np.ndarray:
        return _squared_distances(self._features(x)[0], self.means_, self.precision_).min(axis=1)


class RelativeMahalanobis(Mahalanobis):
    """Mahalanobis minus the distance to one Gaussian fit to all training features, the background
    (Ren et al., 2021): directions in which every class varies stop counting as evidence."""

    def fit(self, model, x, y=None):
        super().fit(model, x, y)
        features = self._features(x)[0]
        self.background_mean_ = features.mean(axis=0)
        self.background_precision_ = _precision(features - self.background_mean_)
        return self

    def ood_score(self, x) -> np.ndarray:
        features = self._features(x)[0]
        background = _squared_distances(features, self.background_mean_[None], self.background_precision_)[:, 0]
        return _squared_distances(features, self.means_, self.precision_).min(axis=1) - background


class KNN(_FeatureBaseline):
    """Distance to the k-th nearest training sample of the L2-normalised penultimate features (Sun et
    al., 2022). Without ``k``, the paper's ratio of k to training-set size (50 of 50,000), at least 1."""

    def __init__(self, k: int | None = None):
        self.k = k

    def fit(self, model, x, y=None):
        features, _ = self._fit_features(model, x, y)
        self.bank_ = _normalised(features)
        self.k_ = int(min(len(features), self.k or max(1, round(len(features) / 1000))))
        return self

    def ood_score(self, x) -> np.ndarray:
        features = _normalised(self._features(x)[0])
        distances = np.sqrt(np.maximum(2.0 - 2.0 * features @ self.bank_.T, 0.0))
        return np.partition(distances, self.k_ - 1, axis=1)[:, self.k_ - 1]


def _normalised(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


BASELINES = {
    "max_softmax": MaxSoftmax,
    "energy": Energy,
    "mahalanobis": Mahalanobis,
    "relative_mahalanobis": RelativeMahalanobis,
    "knn": KNN,
}
