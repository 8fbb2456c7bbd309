import os

import numpy as np
import pytest

from edgefp import data, shifts
from edgefp.errors import EdgefpError
from tests.conftest import write_npz


def test_digits_splits_are_disjoint_and_cover_the_set():
    train, test = data.load("digits:train"), data.load("digits:test")
    assert train.x.shape[1:] == (8, 8, 1) and train.x.dtype == np.float32
    assert len(train) + len(test) == 1797
    assert 0.2 < len(test) / 1797 < 0.3
    assert set(np.unique(test.y)) == set(range(10))


def test_class_filter_and_split_parse():
    assert data.parse_spec("digits:train:0-2,5") == ("digits", "train", [(0, 2), (5, 5)])
    assert data.parse_spec("C:/data/x.npz:test") == ("C:/data/x.npz", "test", None)
    subset = data.load("digits:test:5-9")
    assert set(np.unique(subset.y)) == {5, 6, 7, 8, 9}


def test_npz_with_x_and_optional_y(tmp_path):
    path = write_npz(tmp_path / "a.npz", x=np.zeros((4, 3)))
    loaded = data.load(path)
    assert loaded.y is None and loaded.x.shape == (4, 3)
    with pytest.raises(EdgefpError, match="labels are needed"):
        data.load(path, require_labels=True)


@pytest.mark.parametrize(
    "arrays, spec_suffix, message",
    [
        ({"x": np.zeros((0, 3))}, "", "empty"),
        ({"x": np.array([[1.0, np.nan], [0.0, 1.0]])}, "", "NaN or inf"),
        ({"x": np.array([[1.0, np.inf]])}, "", "NaN or inf"),
        ({"x": np.zeros(5)}, "", "one sample per row"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, -1, 1])}, "", "integers from 0 to 2147483647, found -1"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, 1e30, 1])}, "", "integers from 0 to 2147483647, found 1e"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, 2**63, 1], np.uint64)}, "", "from 0 to 2147483647, found 9"),
        ({"x": np.full((3, 2), 3e38, np.float32)}, "", r"3 samples hold values beyond \+-1e\+15 .*rescale"),
        ({"x": np.array([[1.0, -2e15]])}, "", "values beyond"),
        ({"x": np.array([[1e300]])}, "", r"largest 1e\+300"),
        ({"x": np.array([[2**62, 1]])}, "", "values beyond"),
        ({"x": np.zeros((4, 0))}, "", r"the samples hold no values \(shape \(0,\)\)"),
        ({"x": np.zeros((4, 3, 0))}, "", "hold no values"),
        ({"x": np.zeros((3, 2)), "y": np.array([0.5, 1, 1])}, "", "must be integers"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, 1])}, "", "must have shape"),
        ({"x": np.array([["a", "b"]])}, "", "real numbers"),
        ({"x_train": np.zeros((3, 2))}, "", "add ':train' or ':test'"),
        ({"x_train": np.zeros((3, 2))}, ":test", "no 'x_test'"),
        ({"z": np.zeros((3, 2))}, "", "no 'x' array"),
        ({"x": np.zeros((3, 2))}, ":0-1", "needs labels"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, 1, 1])}, ":7", "no samples have labels 7"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, 1, 1])}, ":5-2", "class range 5-2 is empty"),
        ({"x": np.zeros((3, 2)), "y": np.array([0, 1, 1])}, ":0-99999999999999999999", "beyond the largest label"),
    ],
)
def test_bad_data_gets_one_clear_line_naming_the_file(tmp_path, arrays, spec_suffix, message):
    path = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(EdgefpError, match=message) as info:
        data.load(path + spec_suffix)
    assert "bad.npz" in str(info.value) and "\n" not in str(info.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(EdgefpError, match="no such file"):
        data.load(str(tmp_path / "missing.npz"))
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"not a zip")
    with pytest.raises(EdgefpError, match="not a readable .npz"):
        data.load(str(broken))


def test_fit_input_shape_adds_a_channel_or_refuses():
    x = np.zeros((2, 10), np.float32)
    assert data.fit_input_shape(x, (10, 1), "d").shape == (2, 10, 1)
    with pytest.raises(EdgefpError, match=r"samples have shape \(10,\) but the model expects \(8, 8, 1\)"):
        data.fit_input_shape(x, (8, 8, 1), "d")


def test_stratified_split_takes_a_share_of_every_class():
    y = np.repeat([0, 1, 2], [10, 20, 5])
    mask = data.stratified_split(y, 0.2, seed=0)
    assert [int(mask[y == c].sum()) for c in range(3)] == [2, 4, 1]
    assert (data.stratified_split(y, 0.2, seed=0) == mask).all()


@pytest.mark.parametrize("shape", [(6, 8, 8, 1), (6, 50, 3)])
@pytest.mark.parametrize("kind", sorted(shifts.SHIFTS))
def test_every_shift_keeps_shape_and_changes_the_data(shape, kind):
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    shifted = shifts.apply(x, kind, seed=1)
    assert shifted.shape == x.shape and shifted.dtype == np.float32
    assert np.isfinite(shifted).all() and not np.allclose(shifted, x)


@pytest.mark.parametrize("shape", [(4,), (13,), (20, 1), (4, 4, 3)])
def test_range_samples_hold_as_many_noisy_copies_for_few_calibration_samples_as_for_many(shape):
    x = np.random.default_rng(0).standard_normal((2000, *shape)).astype(np.float32)
    assert len(shifts.range_samples(x, seed=0)) == shifts.RANGE_SAMPLES + shifts.RANGE_NOISY
    for n in (12, 60):
        few = shifts.range_samples(x[:n], seed=0)
        assert len(few) == n + shifts.RANGE_NOISY and few.shape[1:] == shape
        assert np.array_equal(np.sort(few[:n], axis=0), np.sort(x[:n], axis=0))  # the samples, then the copies
        channels = shape[-1]
        spread = few[n:].reshape(-1, channels).std(axis=0) / x[:n].reshape(-1, channels).std(axis=0)
        assert np.all(np.abs(spread - np.sqrt(2)) < 0.3)  # each copy: a sample plus noise as strong as the signal


def test_unknown_shift_is_refused():
    with pytest.raises(EdgefpError, match="unknown shift"):
        shifts.apply(np.zeros((2, 3, 1)), "melt")


def test_standardizer_floors_constant_channels():
    x = np.stack([np.zeros(50), np.random.default_rng(0).normal(3.0, 2.0, 50)], axis=1).astype(np.float32)
    spec = data.standardizer(x)
    assert spec["std"][0] == pytest.approx(0.1 * np.mean([0.0, x[:, 1].std()]), rel=1e-5)
    shifted = data.apply_preprocessing(np.array([[1.0, 3.0]], np.float32), spec)
    assert abs(shifted[0, 0]) < 100 and abs(shifted[0, 1]) < 1


@pytest.mark.parametrize(
    "name, shape, classes", [("basic_motions", (100, 6), 4), ("gun_point", (150, 1), 2), ("arrow_head", (251, 1), 3)]
)
def test_built_in_sensor_sets_ship_with_the_package(name, shape, classes):
    train, test, both = data.load(f"{name}:train"), data.load(f"{name}:test"), data.load(name)
    assert train.x.shape[1:] == shape and train.x.dtype == np.float32 and len(np.unique(train.y)) == classes
    assert len(both) == len(train) + len(test) and (both.x[: len(train)] == train.x).all()
    assert os.path.dirname(data.DATASETS_DIR) == os.path.dirname(data.__file__)
    subset = data.load(f"{name}:test:1")
    assert set(subset.y) == {1} and subset.label_names == train.label_names


def test_huge_class_ranges_filter_without_listing_every_label():
    everything = data.load("digits:test")
    assert len(data.load("digits:test:0-2000000000")) == len(everything)
    assert set(data.load("digits:test:3,7-2147483647").y) == {3, 7, 8, 9}
    with pytest.raises(EdgefpError, match="class 2147483648 is beyond the largest label"):
        data.load("digits:test:2147483648")


def test_several_data_sets_load_as_one(tmp_path):
    reviewed = str(tmp_path / "reviewed.npz")
    np.savez(reviewed, x=np.ones((3, 8, 8, 1), np.float32), y=np.array([5, 5, 2]), labels=[*"01234", "five"])
    both = data.load_all(["digits:train:0-4", reviewed], require_labels=True)
    assert len(both) == len(data.load("digits:train:0-4")) + 3 and both.label_names[5] == "five"
    assert both.label_names[2] == "2" and both.name == f"digits:train:0-4 + {reviewed}"
    renamed = str(tmp_path / "renamed.npz")
    np.savez(renamed, x=np.ones((3, 8, 8, 1), np.float32), y=np.array([2, 2, 2]), labels=["a", "b", "two"])
    with pytest.raises(EdgefpError, match="label 2 is '2' in one data set and 'two' in"):
        data.load_all(["digits:train:0-4", renamed])
    flat = str(tmp_path / "flat.npz")
    np.savez(flat, x=np.ones((3, 64), np.float32), y=np.array([1, 1, 1]))
    with pytest.raises(EdgefpError, match="need one shape"):
        data.load_all(["digits:train:0-4", flat])
    unlabelled = str(tmp_path / "unlabelled.npz")
    np.savez(unlabelled, x=np.ones((3, 8, 8, 1), np.float32))
    with pytest.raises(EdgefpError, match="both have labels"):
        data.load_all(["digits:train:0-4", unlabelled])
