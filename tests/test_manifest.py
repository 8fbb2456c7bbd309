"""The typed manifest: every manifest the rules accept becomes one frozen object and back to the same
JSON (so its digest holds), across the space of valid manifests, from its fields as from the JSON it
was read from; fields the format does not have are ignored and kept; wrong types are refused by name."""

import dataclasses
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgefp import ood
from edgefp.bundle import Bundle, manifest_digest
from edgefp.manifest import (
    MAX_CLASSES,
    MAX_COARSE_FACTOR,
    MAX_LAYERS,
    MAX_SCALES,
    QUANTILES,
    SCHEMA,
    SCHEMA_VERSION,
    TABLE_MAX,
    Manifest,
    ManifestError,
)
from edgefp.wrap import wrap

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MODELS = os.path.join(os.path.dirname(__file__), "data", "models")
SHA = "ab" * 32

numbers = st.floats(-1e6, 1e6, allow_nan=False) | st.integers(-1000, 1000)
positives = st.floats(1e-6, 1e6) | st.integers(1, 1000)
shapes = st.lists(st.integers(1, 16), min_size=1, max_size=4)


def canonical(value) -> str:
    """JSON text that tells 1 from 1.0 (dict equality does not)."""
    return json.dumps(value, sort_keys=True)


@st.composite
def optional(draw, fields: dict) -> dict:
    """``fields`` with each entry kept or left out."""
    return {key: value for key, value in fields.items() if draw(st.booleans())}


@st.composite
def quantised(draw, index: int, shape: list) -> dict:
    return {"index": index, "shape": shape, "scale": draw(positives), "zero_point": draw(st.integers(-128, 127))}


@st.composite
def common(draw, shape: list, dtype: str, preprocessing: dict) -> dict:
    size = draw(st.integers(1, 1 << 20))
    files = {"model.tflite": {"sha256": SHA, "bytes": size}}
    if draw(st.booleans()):
        files["notes.txt"] = {"sha256": SHA, "bytes": draw(st.integers(0, 1000))}
    manifest = {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "name": draw(st.from_regex(r"[a-z0-9_]{1,64}", fullmatch=True)),
        "model": "model.tflite",
        "files": files,
        "flash_bytes": size,
        "tflm_arena_bytes": draw(st.integers(1, 1 << 30)),
        "ops": draw(st.lists(st.sampled_from(["CONV_2D", "FULLY_CONNECTED", "SOFTMAX", "MEAN"]), max_size=4)),
        "input": {
            "shape": shape,
            "dtype": dtype,
            "scale": draw(positives),
            "zero_point": draw(st.integers(-128, 127)),
            "preprocessing": preprocessing,
        },
    }
    texts = st.text(max_size=20)
    manifest |= draw(
        optional(
            {
                "created": draw(texts),
                "edgefp_version": draw(texts),
                "digest": SHA,
                "source": draw(st.dictionaries(st.text(max_size=10), texts, max_size=4)),
                "parity": draw(st.dictionaries(st.text(max_size=10), st.none() | st.booleans() | numbers, max_size=6)),
            }
        )
    )
    return manifest


@st.composite
def fingerprinted(draw) -> dict:
    shape, classes, layers = draw(shapes), draw(st.integers(1, MAX_CLASSES)), draw(st.integers(1, MAX_LAYERS))
    standardize = {
        "type": "standardize",
        "mean": draw(st.lists(numbers, min_size=shape[-1], max_size=shape[-1])),
        "std": draw(st.lists(positives, min_size=shape[-1], max_size=shape[-1])),
    }
    manifest = draw(common(shape, "int8", draw(st.sampled_from([{"type": "none"}, standardize]))))
    indices = draw(st.permutations(range(layers + 1)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))  # the long lists come from a drawn seed

    def quantiles() -> list:
        return sorted((rng.standard_normal(QUANTILES) * 10 ** rng.uniform(-3, 3)).tolist())

    transforms = [draw(st.sampled_from(["log", "negate"])) for _ in range(layers)]
    scales = [draw(st.integers(1, MAX_SCALES)) if kind == "log" else 1 for kind in transforms]
    manifest["outputs"] = {
        "probs": draw(quantised(indices[0], [classes])),
        "layer_errors": [
            draw(quantised(i, [n])) | ({"coarse_factor": draw(st.floats(1, MAX_COARSE_FACTOR))} if n > 1 else {})
            for i, n in zip(indices[1:], scales)
        ],
    }
    with_index, first_name = draw(st.booleans()), draw(st.text(max_size=12))
    manifest["labels"] = [
        {"value": int(value), "name": first_name if i == 0 else f"class {i}"} | ({"index": i} if with_index else {})
        for i, value in enumerate(rng.choice(1 << 40, classes, replace=False))
    ]
    manifest["layers"] = [
        {
            "name": draw(st.text(max_size=12)),
            "kind": draw(st.sampled_from(["autoencoder", "max_logit"])),
            "transform": transform,
            "weight": draw(st.floats(1e-3, 0.999)),
            "features": draw(st.integers(1, 64)),
            "z_mean": draw(numbers),
            "z_std": draw(positives),
            "holdout_quantiles": quantiles(),
            "z_table": rng.integers(0, TABLE_MAX, 256 * n, endpoint=True).tolist(),
        }
        for transform, n in zip(transforms, scales)
    ]
    manifest["score"] = {
        "combine": ood.COMBINE,
        "eps": draw(positives),
        "target_fpr": draw(st.floats(1e-4, 0.5)),
        "unit": ood.SCORE_UNIT,
        "threshold_units": draw(st.integers(0, 1 << 40)),
        "threshold": draw(numbers),
        "holdout_quantiles": quantiles(),
    } | draw(optional({"n_holdout": draw(st.integers(1, 10**6))}))
    return manifest


@st.composite
def wrapped(draw) -> dict:
    manifest = draw(common(draw(shapes), draw(st.sampled_from(["int8", "float32"])), {"type": "none"}))
    outputs = draw(st.integers(1, 16))
    manifest["outputs"] = {
        "raw": [
            {
                "index": i,
                "shape": draw(st.lists(st.integers(1, 16), max_size=3)),
                "dtype": draw(st.sampled_from(["int8", "float32", "int32"])),
                "scale": draw(st.floats(0, 10) | st.just(0)),
                "zero_point": draw(st.integers(-(1 << 31), (1 << 31) - 1)),
            }
            for i in range(outputs)
        ]
    }
    manifest.update(labels=[], layers=[], score=None)
    return manifest


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=fingerprinted() | wrapped())
def test_every_valid_manifest_comes_back_as_the_same_json(fields):
    manifest = Manifest.from_json(fields)
    rebuilt = dataclasses.replace(manifest)  # written from its typed fields, not from the JSON it was read from
    assert canonical(rebuilt.to_json()) == canonical(fields) == canonical(manifest.to_json())
    assert Manifest.from_json(rebuilt.to_json()) == manifest == rebuilt
    assert manifest_digest(rebuilt) == manifest_digest(manifest) == manifest_digest(fields)
    assert manifest.fingerprinted == bool(fields["layers"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        manifest.name = "other"


def field_paths(value, path=()):
    """Every object in a manifest whose fields the format names, as the path of keys and indices to it."""
    if isinstance(value, dict):
        if path[-1:] != ("files",):  # names of files: any plain file name
            yield path
        for key, child in value.items():
            if key not in ("source", "parity"):  # free-form: any name is one of their entries
                yield from field_paths(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from field_paths(child, (*path, i))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=fingerprinted() | wrapped(), data=st.data(), extra=st.none() | st.integers() | st.text(max_size=8))
def test_a_field_the_format_does_not_have_is_ignored_and_kept(fields, data, extra):
    """As the firmware ignores it: the typed fields are those without it, the JSON and digest keep it."""
    plain = Manifest.from_json(fields)
    target = fields
    for key in data.draw(st.sampled_from(list(field_paths(fields)))):
        target = target[key]
    target["extra_field"] = extra
    manifest = Manifest.from_json(fields)
    assert manifest == plain and canonical(manifest.to_json()) == canonical(fields)
    assert manifest_digest(manifest) == manifest_digest(fields) != manifest_digest(plain)


@SETTINGS
@given(
    fields=fingerprinted() | wrapped(),
    change=st.sampled_from(
        [
            ({"created": 5}, "created must be a string"),
            ({"edgefp_version": ["1"]}, "edgefp_version must be a string"),
            ({"digest": "AB" * 32}, "digest must be a string matching"),
            ({"files": {}}, "files must be an object of 1 to 8 files"),
            ({"ops": "CONV_2D"}, "ops must be a list"),
        ]
    ),
)
def test_a_field_of_the_wrong_type_is_refused_naming_it(fields, change):
    update, message = change
    with pytest.raises(ManifestError, match=message):
        Manifest.from_json(fields | update)


@SETTINGS
@given(fields=fingerprinted(), n_holdout=st.sampled_from(["50", 2.5, 0, -3, True, [7], 1 << 63]))
def test_a_held_out_count_that_is_not_a_positive_integer_is_refused(fields, n_holdout):
    fields["score"]["n_holdout"] = n_holdout
    with pytest.raises(ManifestError, match="score.n_holdout must be an integer"):
        Manifest.from_json(fields)


@SETTINGS
@given(fields=wrapped())
def test_a_wrapped_manifest_has_no_score(fields):
    with pytest.raises(ManifestError, match="score must be null for a bundle without layers"):
        Manifest.from_json(fields | {"score": {"combine": ood.COMBINE}})
    del fields["score"]
    assert Manifest.from_json(fields).score is None


def test_bundles_written_and_read_keep_their_manifest_and_digest(digits_bundle, tmp_path):
    _, out = digits_bundle
    with open(os.path.join(out, "manifest.json")) as handle:
        on_disk = json.load(handle)
    assert canonical(Bundle.load(out).manifest.to_json()) == canonical(on_disk)
    hello = wrap(os.path.join(MODELS, "tflm_hello_world_int8.tflite"), str(tmp_path / "hello"))
    for bundle in (Bundle.load(out), Bundle.load(str(tmp_path / "hello"))):
        assert manifest_digest(bundle.manifest) == bundle.manifest.digest
        again = Bundle.load(bundle.write(str(tmp_path / f"{bundle.manifest.name}.efp")))
        assert again.manifest == bundle.manifest and not again.problems()
    assert hello == Bundle.load(str(tmp_path / "hello")).manifest
