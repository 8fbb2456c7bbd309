"""Standard OOD baselines on the same classifier, for comparison with the fingerprint score.

Each follows the estimator contract: ``fit`` returns ``self``, ``score_samples`` gives one score per
sample, higher = more out-of-distribution. Inputs are preprocessed samples, as the classifier takes them.
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

    def score_samples(self, x) -> np.ndarray:
        logits = self._logits(x)
        return 1.0 - np.exp(logits.max(axis=1) - _logsumexp(logits))


class Energy(_LogitBaseline):
    """Negative log-sum-exp of the logits, the free energy (Liu et al., 2020)."""

    def score_samples(self, x) -> np.ndarray:
        return -_logsumexp(self._logits(x))


class Mahalanobis:
    """Smallest Mahalanobis distance to a class mean of the penultimate features, with one shared
    covariance (Lee et al., 2018, without input preprocessing). Uses the classifier's predictions
    as classes when no labels are given."""

    def fit(self, model, x, y=None):
        import keras

        logits, _ = taps.logits_and_probs(model)
        penultimate = logits._keras_history.operation.input
        self.feature_model_ = keras.Model(model.inputs, [penultimate, logits])
        features, logit_values = self._features(x)
        classes = np.argmax(logit_values, axis=1) if y is None else np.asarray(y)
        self.means_ = np.stack([features[classes == c].mean(axis=0) for c in np.unique(classes)])
        centered = features - self.means_[np.searchsorted(np.unique(classes), classes)]
        cov = centered.T @ centered / len(features)
        self.precision_ = np.linalg.pinv(cov + 1e-6 * np.eye(len(cov)))
        return self

    def _features(self, x):
        features, logits = self.feature_model_.predict(x, verbose=0, batch_size=256)
        return np.asarray(features, dtype=np.float64).reshape(len(x), -1), logits

    def score_samples(self, x) -> np.ndarray:
        features, _ = self._features(x)
        diff = features[:, None, :] - self.means_[None]
        return np.einsum("ncd,de,nce->nc", diff, self.precision_, diff).min(axis=1)


BASELINES = {"max_softmax": MaxSoftmax, "energy": Energy, "mahalanobis": Mahalanobis}
