import os

import numpy as np
import pytest

DATASETS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets")


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """A classifier trained on digits 0-4 and its fingerprint, saved as a RUN (fixed seed)."""
    from edgefp import data
    from edgefp.trainer import train

    fingerprint = train(data.load("digits:train:0-4"), seed=0, progress=False)
    run_dir = str(tmp_path_factory.mktemp("digits") / "run")
    fingerprint.save(run_dir)
    return fingerprint, run_dir


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture(scope="session")
def digits_bundle(digits_run, tmp_path_factory):
    """The digits RUN converted to an int8 bundle, with unseen digits 5-9 as OOD data for the parity report."""
    from edgefp import data
    from edgefp.converter.convert import convert

    _, run_dir = digits_run
    out = str(tmp_path_factory.mktemp("bundle") / "digits04")
    manifest = convert(run_dir, data.load("digits:train:0-4"), out, ood_data=data.load("digits:test:5-9"))
    return manifest, out


@pytest.fixture(scope="session")
def motions_bundle(tmp_path_factory):
    """A small sequence bundle (basic_motions, 30 epochs, fixed seed): the 1-D template, as an archive path."""
    from edgefp import data
    from edgefp.converter.convert import convert
    from edgefp.trainer import train

    dataset = data.load(os.path.join(DATASETS, "basic_motions.npz") + ":train")
    fingerprint = train(dataset, epochs=30, seed=0, progress=False)
    root = tmp_path_factory.mktemp("motions")
    fingerprint.save(str(root / "run"))
    convert(str(root / "run"), dataset, str(root / "motions.efp"))
    return str(root / "motions.efp")
