"""Detection metrics with out-of-distribution as the positive class (higher score = more OOD)."""

from __future__ import annotations

import numpy as np


def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Probability that a random OOD sample scores above a random ID sample (ties count half)."""
    scores = np.concatenate([id_scores, ood_scores]).astype(np.float64)
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks over ties
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    n_id, n_ood = len(id_scores), len(ood_scores)
    return float((ranks[n_id:].sum() - n_ood * (n_ood + 1) / 2.0) / (n_id * n_ood))


def fpr_at_tpr(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95) -> float:
    """Share of ID samples flagged when the threshold flags ``tpr`` of the OOD samples."""
    caught = int(np.ceil(tpr * len(ood_scores)))  # the threshold is the score of the last OOD sample caught
    threshold = np.sort(ood_scores)[::-1][caught - 1]
    return float(np.mean(id_scores >= threshold))


def aupr(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """Average precision of detecting OOD samples."""
    scores = np.concatenate([id_scores, ood_scores])
    truth = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    order = np.argsort(-scores, kind="mergesort")
    hits = truth[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def detection_report(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    return {
        "auroc": auroc(id_scores, ood_scores),
        "fpr_at_95tpr": fpr_at_tpr(id_scores, ood_scores, 0.95),
        "aupr": aupr(id_scores, ood_scores),
    }
