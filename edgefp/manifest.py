"""The rules a bundle's ``manifest.json`` must follow (docs/bundle.md, Validation), checked in one place.

Every reader goes through :func:`check`: the host reading a bundle (``inspect``, ``score``, ``flash``,
``repo add``, ...), the agent before it accepts an upload, and the host again on the manifest a device
sends. A manifest that passes can be run without a type or range error anywhere; the C firmware checks
the same rules on the fields it runs (c/src/bundle.c). Whether the model itself matches the manifest
is checked when an interpreter is opened (:meth:`edgefp.bundle.Bundle.interpreter`).
"""

from __future__ import annotations

import math
import re

from edgefp.errors import EdgefpError
from edgefp.limits import MAX_FILES_BYTES
from edgefp.ood import COMBINE, QUANTILE_LEVELS, TABLE_MAX

SCHEMA = "edgefp.bundle"
SCHEMA_VERSION = 3
MANIFEST = "manifest.json"
MAX_FILES = 8
MAX_LAYERS = 16  # EFP_MAX_LAYERS of the firmware
MAX_CLASSES = 255  # INFER carries the class count in a u8
MAX_INPUT_BYTES = 1 << 24
MAX_DIMS = 6
MAX_OUTPUTS = 16  # outputs of a wrapped model
RAW_DTYPES = ("int8", "float32", "int32")
MAX_DEPTH = 16  # JSON nesting (the schema needs 4)
MAX_NAME = 64
TABLE_SIZE = 256
QUANTILES = len(QUANTILE_LEVELS)
KINDS = ("autoencoder", "max_logit")  # evidence of the fingerprint (docs/fingerprint.md)
TRANSFORMS = ("log", "negate")  # how an evidence value becomes what its z-score is taken of
NAME_RE = re.compile(rf"^[a-z0-9_]{{1,{MAX_NAME}}}$")
FILE_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
INT64_MAX = (1 << 63) - 1
NUMBER_MAX, NUMBER_MIN = 10**308, 1e-300  # numbers are below the first in size; positive ones not below the second


class ManifestError(EdgefpError):
    """A manifest that breaks a rule; the message names the field and what it must be."""


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _fail(where: str, what: str, value) -> None:
    raise ManifestError(f"{MANIFEST}: {where} must be {what}, not {_show(value)}")


def _object(value, where: str) -> dict:
    if not isinstance(value, dict):
        _fail(where, "an object", value)
    return value


def _list(value, where: str, low: int, high: int) -> list:
    if not isinstance(value, list) or not low <= len(value) <= high:
        count = f"{low}" if low == high else f"{low} to {high}"
        _fail(where, f"a list of {count} entries", value if not isinstance(value, list) else f"{len(value)} entries")
    return value


def _int(value, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        _fail(where, f"{low}" if low == high else f"an integer from {low} to {high}", value)
    return value


def _number(value, where: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not abs(value) < NUMBER_MAX:
        _fail(where, "a number below 1e308 in size", value)
    if positive and not value >= NUMBER_MIN:
        _fail(where, "a positive number (at least 1e-300)", value)
    return value


def _string(value, where: str, pattern: re.Pattern | None = None) -> str:
    if not isinstance(value, str) or (pattern is not None and not pattern.fullmatch(value)):
        _fail(where, f"a string matching {pattern.pattern}" if pattern else "a string", value)
    return value


def _quantization(spec, where: str, size: int) -> None:
    spec = _object(spec, where)
    shape = _shape(spec.get("shape"), f"{where}.shape", 1)
    if math.prod(shape) != size:
        _fail(f"{where}.shape", f"a shape of {size} elements", shape)
    _int(spec.get("index"), f"{where}.index", 0, 255)
    _number(spec.get("scale"), f"{where}.scale", positive=True)
    _int(spec.get("zero_point"), f"{where}.zero_point", -128, 127)


def _quantiles(values, where: str) -> None:
    for i, value in enumerate(_list(values, where, QUANTILES, QUANTILES)):
        _number(value, f"{where}[{i}]")


def _depth(value) -> int:
    """How deep lists and objects nest in a parsed JSON value (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (value.values() if isinstance(value, dict) else value))
    return deepest


def check(manifest) -> dict:
    """Return ``manifest`` when it follows every rule, else raise ManifestError naming the first broken one."""
    manifest = _object(manifest, "the manifest")
    if _depth(manifest) > MAX_DEPTH:
        raise ManifestError(f"{MANIFEST} is nested more than {MAX_DEPTH} deep")
    if manifest.get("schema") != SCHEMA:
        raise ManifestError(f"{MANIFEST} is not an edgefp bundle manifest")
    if manifest.get("version") != SCHEMA_VERSION:
        raise ManifestError(
            f"bundle version {_show(manifest.get('version'))} is not {SCHEMA_VERSION}; "
            "convert it again with this version of edgefp"
        )
    _string(manifest.get("name"), "name", NAME_RE)
    for key in ("created", "edgefp_version"):
        _string(manifest.get(key, ""), key)
    _string(manifest.get("digest", "0" * 64), "digest", SHA256_RE)

    files = _object(manifest.get("files"), "files")
    if not 1 <= len(files) <= MAX_FILES:
        _fail("files", f"an object of 1 to {MAX_FILES} files", files)
    for name, entry in files.items():
        if not FILE_RE.fullmatch(name) or name == MANIFEST:
            _fail("a name in files", f"a plain file name other than {MANIFEST}", name)
        entry = _object(entry, f"files.{name}")
        _string(entry.get("sha256"), f"files.{name}.sha256", SHA256_RE)
        _int(entry.get("bytes"), f"files.{name}.bytes", 0, MAX_FILES_BYTES)
    if sum(entry["bytes"] for entry in files.values()) > MAX_FILES_BYTES:
        _fail("files", f"at most {MAX_FILES_BYTES} bytes together", sum(entry["bytes"] for entry in files.values()))
    model = _string(manifest.get("model"), "model", FILE_RE)
    if model not in files:
        _fail("model", "a file listed in files", model)
    _int(manifest.get("flash_bytes"), "flash_bytes", files[model]["bytes"], files[model]["bytes"])
    _int(manifest.get("tflm_arena_bytes"), "tflm_arena_bytes", 1, 1 << 30)
    for i, op in enumerate(_list(manifest.get("ops"), "ops", 0, 256)):
        _string(op, f"ops[{i}]")

    layers = _list(manifest.get("layers"), "layers", 0, MAX_LAYERS)
    wrapped = not layers  # a model wrapped without a fingerprint (edgefp wrap): raw outputs, no OOD check
    _input(_object(manifest.get("input"), "input"), wrapped)
    labels = _list(manifest.get("labels"), "labels", 0 if wrapped else 1, MAX_CLASSES)
    for i, label in enumerate(labels):
        label = _object(label, f"labels[{i}]")
        _int(label.get("value"), f"labels[{i}].value", 0, INT64_MAX)
        _string(label.get("name"), f"labels[{i}].name")
    outputs = _object(manifest.get("outputs"), "outputs")
    if wrapped:
        for i, output in enumerate(_list(outputs.get("raw"), "outputs.raw", 1, MAX_OUTPUTS)):
            _raw_output(_object(output, f"outputs.raw[{i}]"), f"outputs.raw[{i}]", i)
        if manifest.get("score") is not None:
            _fail("score", "null for a bundle without layers", manifest.get("score"))
        return manifest
    _quantization(outputs.get("probs"), "outputs.probs", len(labels))
    errors = _list(outputs.get("layer_errors"), "outputs.layer_errors", len(layers), len(layers))
    for j, error in enumerate(errors):
        _quantization(error, f"outputs.layer_errors[{j}]", 1)
    indices = [outputs["probs"]["index"]] + [error["index"] for error in errors]
    if len(set(indices)) != len(indices):
        _fail("outputs", "distinct output indices", indices)

    for j, layer in enumerate(layers):
        layer = _object(layer, f"layers[{j}]")
        _string(layer.get("name"), f"layers[{j}].name")
        _int(layer.get("features"), f"layers[{j}].features", 1, MAX_INPUT_BYTES)
        for key, allowed in (("kind", KINDS), ("transform", TRANSFORMS)):
            if layer.get(key) not in allowed:
                _fail(f"layers[{j}].{key}", " or ".join(f"'{a}'" for a in allowed), layer.get(key))
        weight = _number(layer.get("weight"), f"layers[{j}].weight", positive=True)
        if weight >= 1:
            _fail(f"layers[{j}].weight", "below 1 (a share of the score)", weight)
        _number(layer.get("z_mean"), f"layers[{j}].z_mean")
        _number(layer.get("z_std"), f"layers[{j}].z_std", positive=True)
        table = _list(layer.get("z_table"), f"layers[{j}].z_table", TABLE_SIZE, TABLE_SIZE)
        for q, entry in enumerate(table):
            _int(entry, f"layers[{j}].z_table[{q}]", 0, TABLE_MAX)
        _quantiles(layer.get("holdout_quantiles"), f"layers[{j}].holdout_quantiles")

    score = _object(manifest.get("score"), "score")
    if score.get("combine") != COMBINE:
        _fail("score.combine", f"'{COMBINE}'", score.get("combine"))
    _number(score.get("eps"), "score.eps", positive=True)
    _quantiles(score.get("holdout_quantiles"), "score.holdout_quantiles")
    _int(score.get("unit"), "score.unit", 1, 1 << 30)
    _int(score.get("threshold_units"), "score.threshold_units", 0, INT64_MAX // 2)
    _number(score.get("threshold"), "score.threshold")
    fpr = _number(score.get("target_fpr"), "score.target_fpr", positive=True)
    if fpr >= 1:
        _fail("score.target_fpr", "below 1", fpr)
    return manifest


def _shape(value, where: str, low: int) -> list:
    """A tensor's shape (the batch axis dropped): up to MAX_DIMS sizes, MAX_INPUT_BYTES elements at most."""
    shape, size = _list(value, where, low, MAX_DIMS), 1
    for i, n in enumerate(shape):
        size *= _int(n, f"{where}[{i}]", 1, MAX_INPUT_BYTES)
    if size > MAX_INPUT_BYTES:
        _fail(where, f"a shape of at most {MAX_INPUT_BYTES} elements", shape)
    return shape


def _input(spec: dict, wrapped: bool) -> None:
    """The input's shape, dtype, quantisation and preprocessing; a wrapped model's input may be float32
    (scale 0: not quantised) and is never preprocessed."""
    shape = _shape(spec.get("shape"), "input.shape", 1)
    dtypes = ("int8", "float32") if wrapped else ("int8",)
    if spec.get("dtype") not in dtypes:
        _fail("input.dtype", " or ".join(f"'{d}'" for d in dtypes), spec.get("dtype"))
    _number(spec.get("scale"), "input.scale", positive=not wrapped)
    _int(spec.get("zero_point"), "input.zero_point", -128, 127)
    pre = _object(spec.get("preprocessing"), "input.preprocessing")
    if pre.get("type") == "standardize" and not wrapped:
        for key in ("mean", "std"):
            values = _list(pre.get(key), f"input.preprocessing.{key}", shape[-1], shape[-1])
            for i, value in enumerate(values):
                _number(value, f"input.preprocessing.{key}[{i}]", positive=key == "std")
    elif pre.get("type") != "none":
        _fail("input.preprocessing.type", "'none'" if wrapped else "'none' or 'standardize'", pre.get("type"))


def _raw_output(spec: dict, where: str, index: int) -> None:
    """One output of a wrapped model, listed in the model's order."""
    _int(spec.get("index"), f"{where}.index", index, index)
    _shape(spec.get("shape"), f"{where}.shape", 0)
    if spec.get("dtype") not in RAW_DTYPES:
        _fail(f"{where}.dtype", " or ".join(f"'{d}'" for d in RAW_DTYPES), spec.get("dtype"))
    _number(spec.get("scale"), f"{where}.scale")
    _int(spec.get("zero_point"), f"{where}.zero_point", -(1 << 31), (1 << 31) - 1)
