"""Adversarial inputs: the differentiable score is the library's, the attacks work within their budget and the
data's range, the adaptive attack evades the fingerprint better than plain PGD, and the report draws them."""

import json
import os
import re

import numpy as np
import pytest
from click.testing import CliRunner

from edgefp import adversarial, data, shifts
from edgefp.bundle import Bundle
from edgefp.errors import EdgefpError
from edgefp.report import build_report
from tests.cli.test_cli import edgefp


@pytest.fixture(scope="module")
def fingerprint(digits_run):
    return digits_run[0]


@pytest.fixture(scope="module")
def test_set():
    """A third of digits 0-4's test samples."""
    return data.load("digits:test:0-4").subset(slice(None, None, 3))


@pytest.fixture(scope="module")
def attacked(fingerprint, test_set, digits_bundle):
    """The quick evaluation on the test samples, the int8 bundle scored on LiteRT and TFLite Micro."""
    return adversarial.evaluate(
        fingerprint,
        test_set.x,
        test_set.y,
        bundle=Bundle.load(digits_bundle[1]),
        runtimes=("litert", "tflm"),
        budgets=adversarial.QUICK_BUDGETS,
        steps=adversarial.QUICK_PGD_STEPS,
    )


def test_the_differentiable_score_is_the_librarys(fingerprint):
    import keras
    import tensorflow as tf

    from edgefp.trainer import taps

    clean = data.load("digits:test").x[::4]  # the model's classes and unseen ones
    x = np.concatenate([clean, *(shifts.apply(clean[:40], kind, seed=1) for kind in ("gaussian", "invert", "stuck"))])
    logits, score = adversarial.DifferentiableScore(fingerprint)(tf.constant(x))
    library = fingerprint.score(x).ood_score
    np.testing.assert_allclose(score.numpy(), library, rtol=1e-5, atol=1e-6)
    assert (library > fingerprint.threshold_).mean() > 0.2 and (library == 0).mean() < 0.8  # not only zeros
    model_logits = keras.Model(fingerprint.model_.inputs, taps.logits_and_probs(fingerprint.model_)[0])
    np.testing.assert_allclose(logits.numpy(), model_logits([fingerprint.prepare(x)]).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("budget", [0.01, 0.2])
def test_attacks_turn_predictions_wrong_within_the_budget_and_the_range(fingerprint, test_set, budget):
    labels = np.searchsorted(fingerprint.label_values_, test_set.y)
    x = test_set.x.copy()
    x[:5], x[5:10] = x.max(), x.min()  # samples at an end of the range already: nowhere to go there
    low, high = adversarial.value_range(fingerprint.holdout_x_, x)
    eps = budget * (high - low)
    clean = np.mean(fingerprint.score(x).pred == test_set.y)
    accuracy = {}
    for kind in adversarial.ATTACKS:
        adv = adversarial.attack_all(
            fingerprint, x, labels, kind, budget, (low, high), steps=adversarial.QUICK_PGD_STEPS
        )
        assert adv.shape == x.shape and adv.dtype == np.float32
        change = np.abs(adv - x)
        assert change.max() <= eps.max() * (1 + 1e-5) and change.max() >= 0.5 * eps.max()  # used, never exceeded
        assert adv.min() >= low.min() and adv.max() <= high.max()
        accuracy[kind] = np.mean(fingerprint.score(adv).pred == test_set.y)
    if budget == 0.2:
        assert clean > 0.85 and accuracy["fgsm"] < clean - 0.3 and accuracy["pgd"] < 0.35
        assert accuracy["pgd"] <= accuracy["fgsm"] + 0.05 and accuracy["adaptive"] < 0.35
    else:
        assert min(accuracy.values()) > clean - 0.2  # a hundredth of the range hardly moves 8x8 digits


def test_attacks_on_sensor_channels_keep_each_channels_budget_and_range(motions_run):
    """basic_motions' six channels have ranges of their own: each attack moves each channel within its share
    of its own range, and never out of that range."""
    fingerprint = motions_run[0]
    test = data.load("basic_motions:test").subset(slice(None, 16))
    labels = np.searchsorted(fingerprint.label_values_, test.y)
    low, high = adversarial.value_range(fingerprint.holdout_x_, test.x)
    assert low.shape == (6,) and np.ptp(high - low) > 0.1 * (high - low).max()  # ranges that differ
    eps = 0.1 * (high - low)
    for kind in adversarial.ATTACKS:
        adv = adversarial.attack_all(
            fingerprint, test.x, labels, kind, 0.1, (low, high), steps=adversarial.QUICK_PGD_STEPS
        )
        change = np.abs(adv - test.x).max(axis=(0, 1))
        assert adv.shape == test.x.shape and (change <= eps * (1 + 1e-5)).all() and (change >= 0.5 * eps).any(), kind
        assert (adv >= low).all() and (adv <= high).all(), kind


def test_the_adaptive_attack_evades_the_fingerprint_more_than_pgd(attacked):
    (pgd,), (adaptive,) = attacked["attacks"]["pgd"], attacked["attacks"]["adaptive"]
    assert pgd["success"] > 0.6 and adaptive["success"] > 0.8 * pgd["success"]
    assert adaptive["mean_score"] < 0.85 * pgd["mean_score"]
    fooled = {row["detectors"]["fingerprint"]["undetected_at_threshold"] for row in (pgd, adaptive)}
    assert adaptive["detectors"]["fingerprint"]["undetected_at_threshold"] == max(fooled)
    assert adaptive["detectors"]["fingerprint"]["auroc"] < pgd["detectors"]["fingerprint"]["auroc"]


def test_the_int8_bundle_scores_the_same_adversarial_samples_on_every_runtime(attacked, test_set):
    assert attacked["samples"] == len(test_set)
    assert attacked["accuracy"] > 0.85 and attacked["accuracy_int8"]["tflm"] > 0.85
    for kind in adversarial.ATTACKS:
        (row,) = attacked["attacks"][kind]
        litert, tflm = row["runtimes"]["litert"], row["runtimes"]["tflm"]
        assert litert["same_as_first_runtime"] is None and 0.5 < tflm["same_as_first_runtime"] <= 1.0
        assert abs(litert["success"] - row["success"]) < 0.15 and abs(tflm["success"] - litert["success"]) < 0.05
        assert 0.0 <= tflm["undetected_at_threshold"] <= tflm["success"]
        assert litert["success_of_float_successes"] > 0.8  # the attacks transfer to the int8 model


def test_bad_attacks_are_refused(fingerprint, test_set):
    labels = np.zeros(3, np.int64)
    bounds = adversarial.value_range(test_set.x)
    differentiable = adversarial.DifferentiableScore(fingerprint)
    for kind, budget, match in [
        ("cw", 0.1, "unknown attack 'cw'"),
        ("pgd", 0.0, "between 0 and 1"),
        ("pgd", 2, "between 0 and 1"),
    ]:
        with pytest.raises(EdgefpError, match=match):
            adversarial.attack(differentiable, test_set.x[:3], labels, kind, budget, bounds)
    for y in (None, np.full(len(test_set), 9)):
        with pytest.raises(EdgefpError, match="labelled samples of the model's classes"):
            adversarial.evaluate(fingerprint, test_set.x, y, budgets=(0.1,), steps=1)


def test_the_report_draws_the_adversarial_panel(attacked, digits_bundle, tmp_path):
    bundle = Bundle.load(digits_bundle[1])
    index = build_report(bundle, data.load("digits:test:0-4"), [], [], None, str(tmp_path / "r"), adversarial=attacked)
    page = open(index, encoding="utf-8").read()
    assert re.findall(r'<img src="([^"]+)"', page) == ["fingerprint.png", "confusion.png", "adversarial.png"]
    assert "Adversarial inputs" in page and all(f"<td>{kind}</td>" in page for kind in adversarial.ATTACKS)
    (pgd,) = attacked["attacks"]["pgd"]
    assert f"{pgd['runtimes']['litert']['undetected_at_threshold']:.1%}" in page


def test_report_adversarial_through_the_command(digits_run, digits_bundle, motions_bundle, test_set, tmp_path):
    from edgefp.cli.main import cli

    samples = tmp_path / "few.npz"
    np.savez(samples, x=test_set.x[:24], y=test_set.y[:24])
    out = tmp_path / "report"
    args = ["report", digits_bundle[1], "--data", str(samples), "--adversarial", digits_run[1], "--budget", "0.2"]
    result = CliRunner().invoke(cli, [*args, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["report"] == str(out / "index.html")
    assert "adversarial.png" in os.listdir(out) and "<td>adaptive</td><td>0.2</td>" in (out / "index.html").read_text()

    result = edgefp(
        "report",
        motions_bundle,
        "--data",
        "basic_motions:test",
        "--adversarial",
        digits_run[1],
        "--out",
        str(tmp_path / "x"),
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "is not the RUN the bundle was converted from" in result.stderr and "--adversarial" in result.stderr
    assert not (tmp_path / "x").exists()
    result = edgefp("report", digits_bundle[1], "--data", str(samples), "--budget", "0.1", "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "--budget sets the budget of the attacks of --adversarial" in result.stderr
