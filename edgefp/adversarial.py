"""Adversarial inputs against a fingerprinted classifier, and what each detector makes of them.

Three white-box L-infinity attacks on the float classifier of a RUN, each within a budget given as a share
of every channel's value range and kept inside that range (valid data):

- ``fgsm``: one step of the budget along the sign of the cross-entropy's gradient (Goodfellow et al., 2015);
- ``pgd``: a random start, then PGD_STEPS signed steps on the cross-entropy, projected back into the
  budget after each (Madry et al., 2018);
- ``adaptive``: PGD on the class margin, capped at ADAPTIVE_MARGIN, minus the fingerprint's OOD score:
  an attacker who knows the detector and wants a wrong class that the fingerprint does not flag; it keeps,
  per sample, the iterate misclassified with the lowest score.

The fingerprint's score is differentiable on the float RUN (the classifier's taps and the autoencoders):
:class:`DifferentiableScore` computes it in TensorFlow as :mod:`edgefp.ood` does in NumPy. :func:`evaluate`
attacks samples and reports, per attack and budget, the share of correct predictions turned wrong, each
detector's AUROC of clean samples against the successful adversarial ones, the share of attacks that
succeed unflagged, and, for an int8 bundle, the same on each runtime it is given (TFLite Micro, the
firmware's engine) from the same adversarial samples: whether quantisation changes the picture.
"""

from __future__ import annotations

import time

import numpy as np

from edgefp import metrics, ood
from edgefp.errors import EdgefpError

ATTACKS = ("fgsm", "pgd", "adaptive")
BUDGETS = (0.05, 0.1, 0.2)  # shares of each channel's value range
QUICK_BUDGETS = (0.2,)
PGD_STEPS, QUICK_PGD_STEPS = 20, 8
STEP_SHARE = 2.5  # PGD's step: this many budgets spread over the steps
ADAPTIVE_MARGIN = 1.0  # logits: once a wrong class leads by this much, the adaptive attack only lowers the score
ADAPTIVE_WEIGHT = 1.0  # the score's weight against the margin in the adaptive objective
DETECTION_FPR = 0.05  # every detector's threshold for "undetected": this share of clean samples flagged
BATCH = 512


def value_range(*samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (smallest, largest) value of the samples together (channels last): the valid range."""
    x = np.concatenate([np.asarray(s, dtype=np.float32) for s in samples])
    axes = tuple(range(x.ndim - 1))
    return x.min(axis=axes), x.max(axis=axes)


class DifferentiableScore:
    """The fingerprint's logits and OOD score of raw samples as TensorFlow tensors, with gradients.

    >>> logits, score = DifferentiableScore(fingerprint)(tf.constant(x))   # score == fingerprint.ood_score(x)
    """

    def __init__(self, fingerprint):
        import keras

        from edgefp.trainer import taps

        self.fingerprint = fingerprint
        logits, _ = taps.logits_and_probs(fingerprint.model_)
        monitor = fingerprint.monitor_
        self.model = keras.Model(monitor.inputs, [logits, *monitor.outputs[1:]])
        pre = fingerprint.preprocessing_
        standardize = pre["type"] == "standardize"
        self.mean = np.asarray(pre["mean"] if standardize else 0.0, np.float32)
        self.std = np.asarray(pre["std"] if standardize else 1.0, np.float32)
        self.z_mean, self.z_std, self.weights = fingerprint.z_stats_()
        self.transforms = fingerprint.transforms_

    def __call__(self, x):
        """(logits (N, C) float32, OOD score (N,) float64) of raw samples ``x`` (a tensor of the input shape)."""
        import tensorflow as tf

        logits, *values = self.model([(x - self.mean) / self.std], training=False)
        score = tf.zeros(tf.shape(logits)[:1], tf.float64)
        for j, value in enumerate(values):
            v = tf.cast(value[:, 0], tf.float64)  # an error's first value: the second is it scaled for int8
            t = tf.math.log(tf.nn.relu(v) + ood.EPS) if self.transforms[j] == "log" else -v
            score += self.weights[j] * tf.nn.relu((t - self.z_mean[j]) / self.z_std[j])
        return logits, score


def _objective(kind: str, logits, score, labels):
    """Per-sample value the attack ascends."""
    import tensorflow as tf

    if kind != "adaptive":
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    true = tf.gather(logits, labels, batch_dims=1)
    others = tf.reduce_max(logits - 1e9 * tf.one_hot(labels, tf.shape(logits)[1]), axis=1)
    margin = tf.minimum(others - true, ADAPTIVE_MARGIN)
    return margin - ADAPTIVE_WEIGHT * tf.cast(score, tf.float32)


def attack(
    differentiable: DifferentiableScore,
    x: np.ndarray,
    labels: np.ndarray,
    kind: str,
    budget: float,
    bounds: tuple[np.ndarray, np.ndarray],
    *,
    steps: int = PGD_STEPS,
    seed: int = 0,
) -> np.ndarray:
    """Adversarial copies of raw samples ``x`` (class indices ``labels``): each value within ``budget`` times
    its channel's range of the original and inside ``bounds`` (per-channel low, high)."""
    import tensorflow as tf

    if kind not in ATTACKS:
        raise EdgefpError(f"unknown attack '{kind}'; choose one of {', '.join(ATTACKS)}")
    if not 0.0 < budget <= 1.0:
        raise EdgefpError(f"an attack budget is a share of the data's range, between 0 and 1; got {budget}")
    low, high = (np.asarray(b, np.float32) for b in bounds)
    x = np.asarray(x, np.float32)
    eps = np.float32(budget) * (high - low)
    lower, upper = np.maximum(x - eps, low), np.minimum(x + eps, high)
    labels = tf.constant(np.asarray(labels, np.int32))

    def step(current):
        """Signed gradient of the objective, misclassified mask and score of ``current``."""
        variable = tf.constant(current)
        with tf.GradientTape() as tape:
            tape.watch(variable)
            logits, score = differentiable(variable)
            objective = _objective(kind, logits, score, labels)
        gradient = tape.gradient(objective, variable)
        wrong = tf.argmax(logits, axis=1, output_type=tf.int32) != labels
        return np.sign(gradient.numpy()).astype(np.float32), wrong.numpy(), score.numpy()

    if kind == "fgsm":
        return np.clip(x + eps * step(x)[0], lower, upper)
    rng = np.random.default_rng(seed)
    current = np.clip(x + eps * rng.uniform(-1, 1, x.shape).astype(np.float32), lower, upper)
    best, best_wrong, best_score = current.copy(), np.zeros(len(x), bool), np.full(len(x), np.inf)

    def keep(current, wrong, score):
        """The adaptive attack's best so far: misclassified, with the lowest score."""
        better = wrong & (~best_wrong | (score < best_score))
        best[better], best_wrong[better], best_score[better] = current[better], True, score[better]

    for _ in range(steps):
        sign, wrong, score = step(current)
        if kind == "adaptive":
            keep(current, wrong, score)
        current = np.clip(current + STEP_SHARE * eps / steps * sign, lower, upper)
    if kind == "pgd":
        return current
    keep(current, *step(current)[1:])
    best[~best_wrong] = current[~best_wrong]
    return best


def attack_all(fingerprint, x, labels, kind, budget, bounds, *, steps=PGD_STEPS, seed=0) -> np.ndarray:
    """:func:`attack` in batches of BATCH samples, on a fingerprint."""
    differentiable = DifferentiableScore(fingerprint)
    parts = [
        attack(differentiable, x[i : i + BATCH], labels[i : i + BATCH], kind, budget, bounds, steps=steps, seed=seed)
        for i in range(0, len(x), BATCH)
    ]
    return np.concatenate(parts)


def _detection(clean: np.ndarray, adversarial: np.ndarray, success: np.ndarray, flagged: np.ndarray | None):
    """A detector's AUROC of clean scores against the successful adversarial ones, and the share of attacks
    that succeed unflagged at DETECTION_FPR on the clean samples (and at ``flagged``, its own threshold)."""
    threshold = ood.threshold_at_fpr(clean, DETECTION_FPR)
    row = {
        "auroc": metrics.auroc(clean, adversarial[success]) if success.any() else None,
        "undetected_at_fpr": float(np.mean(success & (adversarial <= threshold))),
    }
    if flagged is not None:
        row["undetected_at_threshold"] = float(np.mean(success & ~flagged))
    return row


def evaluate(
    fingerprint,
    x: np.ndarray,
    y: np.ndarray,
    *,
    detectors: dict | None = None,
    bundle=None,
    runtimes: tuple[str, ...] = (),
    budgets: tuple[float, ...] = BUDGETS,
    steps: int = PGD_STEPS,
    seed: int = 0,
    progress=None,
) -> dict:
    """Attack labelled raw samples ``x, y`` of the fingerprint's classes with every attack and budget.

    ``detectors``: more detectors, name -> function of raw samples -> OOD scores (the baselines). With a
    ``bundle`` (the int8 conversion of the fingerprint), ``runtimes`` score the same adversarial samples
    with it. Success is counted over the samples a model classifies correctly when clean: the float
    classifier for the float detectors, the int8 model on each runtime for that runtime's row.
    ``progress(task, done, total)`` is told after each attack.
    """
    started, detectors = time.monotonic(), detectors or {}
    known = np.zeros(len(x), bool) if y is None else np.isin(y, fingerprint.label_values_)
    if not known.any():
        raise EdgefpError("adversarial samples are made of labelled samples of the model's classes; give such data")
    x, y = np.asarray(x, np.float32)[known], np.asarray(y)[known]
    labels = np.searchsorted(fingerprint.label_values_, y)
    bounds = value_range(fingerprint.holdout_x_, x)
    clean = fingerprint.score(x)
    clean_detectors = {name: score(x) for name, score in detectors.items()}
    clean_int8 = {runtime: bundle.score(x, runtime) for runtime in runtimes}
    correct = clean.pred == y
    result = {
        "samples": int(len(x)),
        "accuracy": float(correct.mean()),
        "accuracy_int8": {r: float(np.mean(s.pred == y)) for r, s in clean_int8.items()},
        "attacks": {},
    }
    plan = [(kind, budget) for kind in ATTACKS for budget in budgets]
    for done, (kind, budget) in enumerate(plan, 1):
        adversarial = attack_all(fingerprint, x, labels, kind, budget, bounds, steps=steps, seed=seed)
        scores = fingerprint.score(adversarial)
        success = correct & (scores.pred != y)
        row = {
            "budget": budget,
            "accuracy": float(np.mean(scores.pred == y)),
            "success": float(success.sum() / max(correct.sum(), 1)),
            "mean_score": float(scores.ood_score[correct].mean()) if correct.any() else None,
            "detectors": {"fingerprint": _detection(clean.ood_score, scores.ood_score, success, scores.is_ood)},
            "runtimes": {},
        }
        for name, score in detectors.items():
            row["detectors"][name] = _detection(clean_detectors[name], score(adversarial), success, None)
        reference = None
        for runtime, clean_scores in clean_int8.items():
            device = bundle.score(adversarial, runtime)
            right = clean_scores.pred == y
            fooled = right & (device.pred != y)
            detection = _detection(clean_scores.ood_score, device.ood_score, fooled, device.is_ood)
            row["runtimes"][runtime] = {
                "success": float(fooled.sum() / max(right.sum(), 1)),
                "success_of_float_successes": float(np.mean(device.pred[success] != y[success]))
                if success.any()
                else None,
                **detection,
                "same_as_first_runtime": None if reference is None else float(np.mean(device.ood_score == reference)),
            }
            reference = device.ood_score if reference is None else reference
        result["attacks"].setdefault(kind, []).append(row)
        if progress:
            progress("attacking", done, len(plan))
    result["seconds"] = time.monotonic() - started
    return result
