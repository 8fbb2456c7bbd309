import json
import os
import subprocess
import sys

import numpy as np
import pytest

from edgefp.ood import Scores


def edgefp(*args, env=None, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "edgefp", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
        cwd=cwd,
    )


def test_help_and_version_do_not_import_tensorflow():
    code = (
        "import sys; from edgefp.cli import main\n"
        "try: main(['--help'])\nexcept SystemExit: pass\n"
        "print('tensorflow' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "Commands:" in result.stdout and result.stdout.strip().endswith("False")
    assert edgefp("--version").stdout.startswith("edgefp, version")


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--data", "missing.npz", "--out", "x"], "missing.npz: no such file"),
        (["train", "--out", "x"], "Missing option '--data'"),
        (["score", "no-such-run", "--data", "digits"], "no such RUN directory or bundle"),
        (["train", "--data", "digits", "--out", "x", "--fpr", "1.5"], "--fpr"),
        (["train", "--data", "digits", "--out", "x", "--fpr", "nan"], "'--fpr': nan is not a number"),
        (["train", "--data", "digits", "--out", "x", "--seed", "-1"], "'--seed': -1 is not in the range"),
        (["fingerprint", "--model", "m", "--data", "d", "--out", "x", "--seed", "4294967296"], "'--seed'"),
        (["train", "--data", "digits:test:0-99999999999999999999", "--out", "x"], "beyond the largest label"),
        (["frobnicate"], "No such command"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(args, message):
    result = edgefp(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("edgefp: error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.full((40, 4), 3e38, np.float32)}, "40 samples hold values beyond +-1e+15"),
        ({"x": np.zeros((40, 0), np.float32)}, "the samples hold no values"),
        ({"x": np.zeros((40, 4), np.float32), "y": np.full(40, 1e30)}, "labels must be integers from 0 to 2147483647"),
    ],
)
def test_hostile_data_is_refused_in_one_line_before_training(tmp_path, arrays, message):
    np.savez(tmp_path / "d.npz", **{"y": np.arange(40) % 2, **arrays})
    result = edgefp("train", "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr
    assert not os.path.exists(tmp_path / "run")


def test_debug_shows_the_traceback():
    result = edgefp("--debug", "score", "no-such-run", "--data", "digits")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_environment_variables_set_option_defaults(tmp_path):
    result = edgefp("train", "--out", str(tmp_path / "x"), env={"EDGEFP_TRAIN_DATA": "missing-from-env.npz"})
    assert result.returncode == 2 and "missing-from-env.npz" in result.stderr


def test_score_writes_the_score_file_and_reports_json(digits_run, tmp_path):
    fingerprint, run_dir = digits_run
    out = tmp_path / "scores.npz"
    result = edgefp("score", run_dir, "--data", "digits:test:0-4", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    scores = Scores.load(str(out))
    n = report["n"]
    assert (
        scores.pred.shape == (n,)
        and scores.probs.shape == (n, 5)
        and scores.layer_errors.shape == (n, len(fingerprint.layers_))
    )
    assert scores.is_ood.dtype == bool and np.array_equal(scores.is_ood, scores.ood_score > report["threshold"])
    assert report["accuracy"] > 0.95 and report["n_known"] == n
    assert report["ood_rate"] == pytest.approx(scores.is_ood.mean())


def test_existing_out_is_refused_without_force(digits_run, tmp_path):
    _, run_dir = digits_run
    result = edgefp("train", "--data", "digits:train:0-1", "--out", run_dir)
    assert result.returncode == 2 and "already exists" in result.stderr
