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


def test_evidence_transforms_and_their_score_tables():
    from edgefp import ood

    values = np.array([[0.5, 3.0], [2.0, -1.0]])
    t = ood.transformed(values, ["log", "negate"])
    np.testing.assert_allclose(t, [[np.log(0.5 + ood.EPS), -3.0], [np.log(2.0 + ood.EPS), 1.0]])
    assert ood.inverse_transform(t[0, 0], "log") == pytest.approx(0.5)
    assert ood.inverse_transform(t[1, 1], "negate") == pytest.approx(-1.0)
    # an error's table rises with the int8 value, the largest logit's falls; both are non-negative integers
    errors = np.asarray(ood.z_table(0.01, -128, np.log(0.3), 0.5, "log"))
    logits = np.asarray(ood.z_table(0.1, 0, -2.0, 1.5, "negate"))
    assert (np.diff(errors) >= 0).all() and (np.diff(logits) <= 0).all() and errors[-1] > 0 and logits[0] > 0
    assert min(errors.min(), logits.min()) == 0 and errors.dtype.kind == logits.dtype.kind == "i"
    with pytest.raises(ValueError, match="unknown evidence transform"):
        ood.transformed(values, ["log", "sqrt"])


def test_an_int8_error_of_zero_counts_half_a_step():
    from edgefp import ood

    values = np.array([[0.0, 0.3, -5.0], [0.002, 0.0, 2.0]])
    resolved = ood.resolved(values, [0.01, 0.001, 0.1], ["log", "log", "negate"])
    np.testing.assert_array_equal(resolved, [[0.005, 0.3, -5.0], [0.005, 0.0005, 2.0]])  # the max logit is as it was
    table = np.asarray(ood.z_table(0.01, -128, np.log(1e-4), 1.0, "log"))
    half_step = (np.log(0.005 + ood.EPS) - np.log(1e-4)) * ood.SCORE_UNIT
    assert table[0] == round(half_step) > 0 and table[1] > table[0]  # 0 is as usual as half a step, no more


@pytest.mark.parametrize("scale, zero_point, factor", [(0.01, -128, 127 / 8), (3e-4, -128, 127.0), (0.2, -100, 1.25)])
def test_an_error_at_two_scales_orders_every_error_as_its_value_does(scale, zero_point, factor):
    from edgefp import ood

    table = np.asarray(ood.z_table(scale, zero_point, np.log(50 * scale), 0.7, "log", coarse_factor=factor))
    table = table.reshape(2, 256)
    errors = np.geomspace(scale / 10, 2 * factor * 255 * scale, 4000)
    fine = np.clip(np.round(errors / scale) + zero_point, -128, 127)
    coarse = np.clip(np.round(errors / (scale * factor)) + zero_point, -128, 127)
    which, q = ood.counted(np.stack([fine, coarse], axis=1))
    units = table[which, q + 128]
    assert (np.diff(units) >= 0).all()  # never less for a larger error, across the switch to the coarse value
    beyond = fine == 127
    assert (which == beyond).all() and units[beyond].min() >= units[~beyond].max()
    assert units[beyond].max() > units[~beyond].max() + ood.SCORE_UNIT  # the coarse value still orders them
    top = coarse == 127
    assert (units[top] == round(ood.OFF_SCALE_Z * ood.SCORE_UNIT)).all() and units[~top].max() < units[top][0]


def test_calibration_flags_the_target_share_and_combines_positive_z_only():
    from edgefp import ood

    rng = np.random.default_rng(0)
    holdout = np.stack([rng.lognormal(0, 0.5, 2000), rng.normal(8, 2, 2000)], axis=1)
    weights, transforms = [0.25, 0.75], ["log", "negate"]
    calibration = ood.calibrate(holdout, 0.05, transforms, weights)

    def score(values):
        return ood.ood_score(values, calibration.z_mean, calibration.z_std, weights, transforms)

    scores = score(holdout)
    assert np.mean(scores > calibration.threshold) == pytest.approx(0.05, abs=0.01)
    usual = np.array([[np.exp(calibration.z_mean[0]), -calibration.z_mean[1]]])
    assert score(usual)[0] == pytest.approx(0, abs=1e-4)
    small_logit = usual * [1, 0.1]  # a largest logit far below the usual one is evidence; a large one is not
    expected = 0.75 * (-0.1 * -calibration.z_mean[1] - calibration.z_mean[1]) / calibration.z_std[1]
    assert score(small_logit)[0] == pytest.approx(expected, rel=1e-6) and expected > 1
    assert score(usual * [0.5, 3])[0] == 0
