"""Properties over generated inputs (hypothesis): the data-spec parser and the data the converter and
bundles take. Hostile input ends in the kit's own errors only (the protocol's: tests/link/test_properties.py)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgefp import data
from edgefp.bundle import Bundle
from edgefp.errors import EdgefpError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

labels = st.integers(0, 50) | st.integers(0, data.MAX_LABEL)
class_ranges = st.lists(st.tuples(labels, labels).map(sorted), min_size=1, max_size=4)


def spec_text(ranges) -> str:
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in ranges)


@SETTINGS
@given(
    source=st.text(st.characters(blacklist_characters=":\x00"), min_size=1, max_size=20),
    split=st.sampled_from([None, "train", "test"]),
    ranges=st.none() | class_ranges,
)
def test_a_spec_parses_into_what_it_was_made_of(source, split, ranges):
    spec = ":".join(part for part in (source, split, ranges and spec_text(ranges)) if part)
    assert data.parse_spec(spec) == (source, split, [tuple(r) for r in ranges] if ranges else None)


@SETTINGS
@given(ranges=class_ranges, y=hnp.arrays(np.int64, st.integers(1, 50), elements=st.integers(0, 40)))
def test_a_class_filter_keeps_exactly_the_labels_in_its_ranges(tmp_path_factory, ranges, y):
    path = str(tmp_path_factory.mktemp("spec") / "d.npz")
    np.savez(path, x=np.zeros((len(y), 2), np.float32), y=y)
    wanted = np.zeros(len(y), bool)
    for low, high in ranges:
        wanted |= (y >= low) & (y <= high)
    spec = f"{path}:{spec_text(ranges)}"
    if not wanted.any():
        with pytest.raises(EdgefpError, match="no samples have labels"):
            data.load(spec)
    else:
        assert (data.load(spec).y == y[wanted]).all()


@SETTINGS
@given(st.text(max_size=60))
def test_any_spec_is_loaded_or_refused_in_one_line(text):
    try:
        data.load(text)
    except EdgefpError as exc:
        assert "\n" not in str(exc)


finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.floats(-1e16, 1e16)
sample_shapes = st.sampled_from([(3,), (4, 2), (3, 3, 1), (2, 0), (5,)])


@SETTINGS
@given(
    x=sample_shapes.flatmap(
        lambda shape: hnp.arrays(np.float64, (st.integers(1, 12).map(lambda n: (n, *shape))), elements=finite_or_not)
    )
)
def test_data_the_checks_accept_stays_finite_through_preprocessing(x):
    try:
        data.check_values(x, "generated")  # as on load: before float32 could turn a large value into inf
        dataset = data.Dataset(x.astype(np.float32), None, "generated")
        data.check(dataset)
    except EdgefpError as exc:
        assert "\n" not in str(exc)
        return
    preprocessing = data.standardizer(dataset.x)
    assert np.isfinite(preprocessing["mean"]).all() and np.isfinite(preprocessing["std"]).all()
    standardized = data.apply_preprocessing(dataset.x, preprocessing)
    assert np.isfinite(standardized).all() and np.isfinite(standardized.astype(np.float64) ** 2).all()


@pytest.fixture(scope="module")
def bundle(digits_bundle):
    return Bundle.load(digits_bundle[1])


@SETTINGS
@given(
    x=hnp.arrays(
        np.float32,
        st.sampled_from([(2, 8, 8, 1), (3, 8, 8), (1, 64), (2, 8, 8, 2), (1, 9, 8, 1)]),
        elements=st.floats(-float(np.float32(9e14)), float(np.float32(9e14)), width=32),
    )
)
def test_a_bundle_quantizes_any_accepted_samples_or_refuses_their_shape(bundle, x):
    try:
        x_q = bundle.quantize(x)
    except EdgefpError as exc:
        assert "the model expects (8, 8, 1)" in str(exc)
        return
    assert x_q.dtype == np.int8 and x_q.shape == (len(x), 8, 8, 1)
