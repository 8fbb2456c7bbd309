import numpy as np
import pytest

from edgefp import metrics


def test_auroc_known_values_and_ties():
    assert metrics.auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert metrics.auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert metrics.auroc(np.array([1.0, 1.0]), np.array([1.0, 1.0])) == 0.5
    assert metrics.auroc(np.array([0.0, 2.0]), np.array([1.0, 3.0])) == 0.75


def test_auroc_matches_pairwise_definition():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=40).round(1), rng.normal(0.5, size=30).round(1)
    pairwise = np.mean([(y > x) + 0.5 * (y == x) for x in a for y in b])
    assert metrics.auroc(a, b) == pytest.approx(pairwise)


def test_fpr_at_95_tpr_and_aupr():
    id_scores = np.arange(100, dtype=float)
    ood_scores = np.arange(90, 110, dtype=float)
    # 95% of OOD lie at or above 91: ID samples 91..99 are flagged
    assert metrics.fpr_at_tpr(id_scores, ood_scores) == pytest.approx(0.09)
    assert metrics.aupr(np.zeros(5), np.ones(5)) == 1.0
