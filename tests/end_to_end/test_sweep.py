"""The whole chain on data of every shape a user may bring: train -> convert -> score on LiteRT and on
TFLite Micro -> the C firmware (its results equal TFLite Micro's on the host) -> select.

The cells cover every listed value once or more rather than every combination: sequences of T steps
in {8, 13, 29, 64, 100, 257} with C channels in {1, 3, 12}, images HxWxC in {8x8x1, 12x20x1, 28x28x1,
32x32x3}, vectors of D values in {3, 17, 64, 300}, classes in {2, 5, 10, 26}, 40 to 2,000 training
samples, values from 1e-6 to 1e14 in size. The data are learnable: one smooth prototype per class plus
noise, fixed seeds. Cells that cannot work are refused before any training, in one line.
"""

import math
import time

import numpy as np
import pytest

from edgefp import data
from edgefp.bundle import Bundle
from edgefp.errors import EdgefpError
from edgefp.firmware_host.firmware.build import build
from edgefp.firmware_host.firmware.launch import start_native
from edgefp.firmware_host.link import client
from edgefp.repository import Repository
from edgefp.selection import select
from tests.conftest import synthetic

pytestmark = pytest.mark.heavy  # trains, converts and builds the firmware for every cell

CLASSIFIER_STEPS, AUTOENCODER_EPOCHS = 150, 3  # a few epochs of a large set, more of a small one
N_TEST = 60
MAX_FRAME = 4096  # a 32x32x3 image (3,072 bytes) does not fit the default 2,048-byte frame

# (shape, classes, training samples, scale of the values)
CELLS = [
    ((8, 12), 5, 150, 1.0),
    ((13, 1), 2, 40, 1.0),
    ((29, 12), 10, 300, 1.0),
    ((64, 3), 26, 520, 1.0),
    ((100, 1), 2, 60, 1e-6),
    ((257, 3), 5, 200, 1.0),
    ((8, 8, 1), 10, 2000, 1.0),
    ((12, 20, 1), 2, 100, 1.0),
    ((28, 28, 1), 5, 250, 1.0),
    ((32, 32, 3), 10, 400, 255.0),
    ((3,), 2, 80, 1.0),
    ((17,), 26, 780, 1.0),
    ((64,), 5, 150, 1e14),
    ((300,), 10, 1000, 1.0),
]
# (shape, classes, training samples, what the one line says)
REFUSED = [
    ((17,), 2, 20, r"too few samples to fingerprint \(16 to fit, 4 held out\); give at least 50 samples"),
    ((29, 12), 1, 100, r"a classifier needs at least two classes, found only \[0\]"),
    ((8, 0), 2, 100, r"the samples hold no values \(shape \(8, 0\)\)"),
]


def cell_id(cell) -> str:
    shape, classes, n = cell[:3]
    return f"{'x'.join(map(str, shape))}-{classes}c-{n}"


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """What the cells share: a firmware device (native build, larger frame), a repository, results."""
    root = tmp_path_factory.mktemp("sweep")
    executable = build("native", max_frame=MAX_FRAME)
    with start_native(executable, str(root / "flash.bin")) as native, client.open_device(native.url) as device:
        yield {"root": root, "device": device, "repo": Repository(str(root / "repo")), "targets": {}, "seconds": {}}


@pytest.mark.parametrize("cell", CELLS, ids=cell_id)
def test_every_shape_runs_the_whole_chain(chain, cell):
    from edgefp.converter.convert import convert
    from edgefp.trainer import train

    started = time.monotonic()
    shape, classes, n, scale = cell
    name = "cell_" + cell_id(cell).replace("-", "_")
    train_set, test_set = synthetic(shape, classes, n, N_TEST, scale)
    run, out = str(chain["root"] / name), str(chain["root"] / f"{name}.efp")
    epochs = max(3, math.ceil(CLASSIFIER_STEPS / math.ceil(0.8 * n / 32)))
    fingerprint = train(train_set, epochs=epochs, autoencoder_epochs=AUTOENCODER_EPOCHS, seed=0, progress=False)
    fingerprint.save(run)
    manifest = convert(run, train_set, out)
    assert manifest.parity["runtime_pred_agreement"] >= 0.95
    bundle = Bundle.load(out)
    chance = 1 / classes
    scores = {runtime: bundle.score(test_set.x, runtime) for runtime in ("litert", "tflm")}
    for runtime, found in scores.items():
        accuracy = np.mean(found.pred == test_set.y)
        assert accuracy >= min(0.8, 3 * chance), f"{runtime} accuracy {accuracy:.2f}"
        assert np.isfinite(found.ood_score).all() and found.is_ood.mean() <= 0.5
    assert np.mean(scores["litert"].pred == scores["tflm"].pred) >= 0.95
    device = chain["device"]
    client.flash(device, bundle.archive_bytes())
    on_device, _ = client.infer_samples(device, test_set.x[:20])
    expected = bundle.score(test_set.x[:20], "tflm")
    for key in ("pred", "probs", "ood_score", "is_ood", "layer_errors"):
        np.testing.assert_array_equal(getattr(on_device, key), getattr(expected, key), err_msg=key)
    chain["repo"].add(out, {"cell": cell_id(cell)})
    chain["targets"][manifest.name] = test_set.x
    chain["seconds"][cell_id(cell)] = time.monotonic() - started


def test_selection_picks_each_cells_own_bundle(chain):
    assert len(chain["targets"]) == len(CELLS), "every cell must have passed first"
    for name, x in chain["targets"].items():
        report = select(chain["repo"], x)
        assert report["selected"] == name, (name, report["candidates"][:2])
    slowest = sorted(chain["seconds"].items(), key=lambda item: -item[1])[:3]
    print(f"\nsweep: {len(CELLS)} cells passed, {len(REFUSED)} refused up front, 0 crashed; slowest {slowest}")


@pytest.mark.parametrize("cell", REFUSED, ids=cell_id)
def test_cells_that_cannot_work_are_refused_before_training(cell, monkeypatch):
    import sys

    from edgefp.trainer import train

    def never(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(sys.modules["edgefp.trainer.train"], "train_classifier", never)
    shape, classes, n, message = cell
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    dataset = data.Dataset(x, (np.arange(n) % classes).astype(np.int64), "cell")
    with pytest.raises(EdgefpError, match=message) as refused:
        train(dataset, epochs=1, progress=False)
    assert "\n" not in str(refused.value)


def test_the_cells_cover_every_listed_value():
    sequences = [cell[0] for cell in CELLS if len(cell[0]) == 2]
    assert {t for t, _ in sequences} == {8, 13, 29, 64, 100, 257} and {c for _, c in sequences} == {1, 3, 12}
    assert {cell[0] for cell in CELLS if len(cell[0]) == 3} == {(8, 8, 1), (12, 20, 1), (28, 28, 1), (32, 32, 3)}
    assert {cell[0][0] for cell in CELLS if len(cell[0]) == 1} == {3, 17, 64, 300}
    assert {cell[1] for cell in CELLS} == {2, 5, 10, 26}
    sizes = [cell[2] for cell in CELLS] + [cell[2] for cell in REFUSED]
    assert min(sizes) == 20 and max(sizes) == 2000
