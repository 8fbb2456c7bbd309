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
