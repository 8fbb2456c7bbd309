"""The repository stands on its own: no test reads beside it (conftest's audit hook fails any that does),
and CI runs the suite in a fresh clone alone in an empty folder (.ci/run)."""

import os
import sys
import tempfile

import pytest

from tests import conftest


def test_the_guard_tells_beside_the_repository_from_everywhere_else():
    beside = os.path.join(os.path.dirname(conftest.ROOT), "data-next-to-the-clone", "x.npz")  # a path, never opened
    assert conftest._beside_the_repository(beside)
    inside = [os.path.join(conftest.ROOT, "edgefp", "datasets", "gun_point.npz"), tempfile.gettempdir()]
    inside += [os.path.join(sys.prefix, "lib"), os.path.join(os.path.expanduser("~"), ".cache", "edgefp")]
    for path in inside:
        assert not conftest._beside_the_repository(path), path


def test_a_read_beside_the_repository_is_caught_even_when_it_fails():
    path = os.path.join(os.path.dirname(conftest.ROOT), "no-such-folder", "data.npz")
    with pytest.raises(FileNotFoundError):
        open(path, "rb")
    caught = list(conftest._READ_BESIDE)
    conftest._READ_BESIDE.clear()  # this test's read was on purpose
    assert caught == [path]
