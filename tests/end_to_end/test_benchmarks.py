"""Each benchmark runs end to end in its quick mode, its main called in this process (TensorFlow imported
once), so that the suite cannot rot; where a quick mode still repeats a code path (a second sensor set,
classifier epochs), the options shrink it. Where a benchmark trains what a session fixture trained
already (digits 0-4, arrow_head's split; seed 0), it loads that RUN rather than train it again
(benchmarks/common.py, EDGEFP_BENCH_RUNS): training is tested in tests/trainer."""

import importlib
import json
import os
import shutil

import numpy as np
import pytest

from benchmarks.common import RUNS, keep_run
from tests.conftest import arrow_head_split

pytestmark = pytest.mark.heavy  # the benchmarks train and build

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
QEMU = all(shutil.which(tool) for tool in ("make", "arm-none-eabi-gcc", "qemu-system-arm"))
KEPT = {"ood_quality": 2, "int8": 1, "link": 1}  # how many of the kept RUNs each benchmark loads


@pytest.fixture(scope="module")
def kept_runs(digits_run, arrow_head_run, tmp_path_factory):
    """A folder of the session's RUNs for the benchmarks to find (benchmarks.common.trained)."""
    from edgefp import data

    folder = str(tmp_path_factory.mktemp("runs"))
    keep_run(digits_run[0], data.load("digits:train:0-4"), {"seed": 0}, folder)
    keep_run(arrow_head_run[0], arrow_head_split()[0], {"seed": 0}, folder)
    return folder


@pytest.mark.parametrize(
    "name, options, keys",
    [
        # an image set, a sensor set, and the attacks on both
        ("ood_quality", ["--sets", "digits,arrow_head", "--adversarial"], ["summary", "runs"]),
        ("int8", [], ["timing", "results"]),
        ("overhead_scale", [], ["timing", "results"]),
        ("link", [], []),
        ("many_devices", [], ["boards"]),
        ("selection", ["--epochs", "5"], []),  # every path still runs; its goals are still met
        pytest.param(
            "firmware", [], ["sizes", "templates", "upload"], marks=pytest.mark.skipif(not QEMU, reason="no QEMU")
        ),
        pytest.param("signing", [], ["instructions_accept"], marks=pytest.mark.skipif(not QEMU, reason="no QEMU")),
    ],
)
def test_benchmark_quick_mode_writes_its_results(name, options, keys, kept_runs, tmp_path, monkeypatch, capsys):
    """What ``python -m benchmarks.NAME --quick OPTIONS`` runs."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("EDGEFP_BENCH_RESULTS", str(tmp_path))
    monkeypatch.setenv(RUNS, kept_runs)
    assert importlib.import_module(f"benchmarks.{name}").main(["--quick", *options]) in (None, 0)
    assert capsys.readouterr().err.count(": loaded the kept RUN ") == KEPT.get(name, 0)
    chosen = "_" + options[options.index("--sets") + 1].replace(",", "_") if "--sets" in options else ""
    stem = name + chosen + ("_adversarial" if "--adversarial" in options else "") + "_quick"
    with open(tmp_path / f"{stem}.json") as handle:
        saved = json.load(handle)
    assert all(key in saved for key in keys) and saved["environment"]["versions"]
    assert (tmp_path / f"{stem}.md").read_text().count("|") > 10
    assert "--adversarial" not in options or all("adversarial" in s for s in saved["summary"].values())


def _ranks(values):
    return np.argsort(np.argsort(values))


def test_the_int8_classifier_evidence_reads_the_bundles_own_tensors(digits_run, digits_bundle):
    """The OOD benchmark's float evidence from the int8 model's features, class means and logits reads the
    tensors the bundle computes its own evidence from: its max logit is the bundle's, and its errors order
    samples as the bundle's int8 errors do (they differ by the autoencoders' quantisation alone)."""
    from benchmarks.ood_quality import int8_classifier_evidence
    from edgefp import data
    from edgefp.bundle import Bundle

    bundle = Bundle.load(digits_bundle[1])
    x = np.concatenate([data.load("digits:test:0-4").x[:150], data.load("digits:test:5-9").x[:50]])
    evidence, int8 = int8_classifier_evidence(digits_run[0], bundle)(x), bundle.score(x).layer_errors
    assert evidence.shape == int8.shape == (200, len(bundle.manifest.layers))
    np.testing.assert_allclose(evidence[:, -1], int8[:, -1], rtol=1e-6)
    for j in range(evidence.shape[1] - 1):
        assert np.corrcoef(_ranks(evidence[:, j]), _ranks(int8[:, j]))[0, 1] > 0.95


def test_the_floor_adds_four_operators_to_the_classifier(digits_run):
    """The overhead benchmark's floor is what it says: the classifier and one autoencoder in 4 operators,
    its clip fused into the encoder (a converter that stopped fusing it would raise the floor)."""
    from benchmarks.common import floor
    from benchmarks.int8 import classifier_int8, graph_parts
    from edgefp import data

    fingerprint = digits_run[0]
    x = fingerprint.prepare(data.load("digits:train:0-4").x[:100])
    classifier, least = graph_parts(classifier_int8(fingerprint, x)), graph_parts(floor(fingerprint, x))
    assert least["ops"] == classifier["ops"] + 4
