"""A bundle's ``manifest.json`` as a typed object, and the rules it must follow (docs/bundle.md, Validation).

:meth:`Manifest.from_json` is the one place a manifest is checked and built: the host reading a bundle
(``inspect``, ``score``, ``flash``, ``repo add``, ...), the agent before it accepts an upload, and the
host again on the manifest a device sends. A manifest that passes can be run without a type or range
error anywhere; the C firmware checks the same rules on the fields it runs (c/src/bundle.c). Whether
the model itself matches the manifest is checked when an interpreter is opened
(:meth:`edgefp.bundle.Bundle.interpreter`).

The objects are frozen and hold the JSON's own values (no number is converted). A manifest read with
:meth:`Manifest.from_json` keeps the JSON it was read from, fields the format does not have included
(they are ignored, as the firmware ignores them), and gives it back from :meth:`Manifest.to_json`, so its
digest holds; one made in code (or changed with ``dataclasses.replace``) is written from its fields.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field

from edgefp import data
from edgefp.errors import EdgefpError
from edgefp.limits import MAX_FILES_BYTES
from edgefp.ood import COMBINE, QUANTILE_LEVELS, TABLE_MAX

SCHEMA = "edgefp.bundle"
SCHEMA_VERSION = 4
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
TABLE_SIZE = 256  # z_table entries per int8 value of an evidence output
MAX_SCALES = 2  # int8 values of an error output: the error at its range and, coarser, beyond it (ood.counted)
MAX_COARSE_FACTOR = 127  # the second value's int8 weight is at least 1 where the first's is 127
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


# ------------------------------------------------------------------------------------ the objects
@dataclass(frozen=True)
class FileEntry:
    """A file of the bundle besides the manifest."""

    sha256: str
    bytes: int

    def to_json(self) -> dict:
        return {"sha256": self.sha256, "bytes": self.bytes}


@dataclass(frozen=True)
class Preprocessing:
    """What turns a raw sample into the model's float input: ``none``, or per-channel ``standardize``."""

    type: str = "none"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def to_json(self) -> dict:
        if self.type == "none":
            return {"type": "none"}
        return {"type": self.type, "mean": list(self.mean), "std": list(self.std)}

    def apply(self, x):
        """Raw samples -> the model's float input."""
        return data.apply_preprocessing(x, self.to_json())

    def undo(self, x):
        """The model's float input -> raw samples."""
        return data.undo_preprocessing(x, self.to_json())


@dataclass(frozen=True)
class Input:
    """The model's input: one sample's shape, its dtype and quantisation (scale 0: a float32 input of a
    wrapped model, not quantised), and the preprocessing before it."""

    shape: tuple[int, ...]
    dtype: str
    scale: float
    zero_point: int
    preprocessing: Preprocessing = Preprocessing()

    def to_json(self) -> dict:
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "scale": self.scale,
            "zero_point": self.zero_point,
            "preprocessing": self.preprocessing.to_json(),
        }


@dataclass(frozen=True)
class Output:
    """One output of the model: its position among the outputs, shape (no batch axis), dtype and
    quantisation. The probabilities and evidence of a fingerprinted bundle are int8, and their JSON
    does not name the dtype. An error output of two values holds the error at ``scale`` and then
    ``coarse_factor`` times coarser (docs/bundle.md)."""

    index: int
    shape: tuple[int, ...]
    scale: float
    zero_point: int
    dtype: str = "int8"
    coarse_factor: float | None = None

    def to_json(self, *, with_dtype: bool) -> dict:
        found = {"index": self.index, "shape": list(self.shape), "scale": self.scale, "zero_point": self.zero_point}
        found |= {"coarse_factor": self.coarse_factor} if self.coarse_factor is not None else {}
        return {**found, "dtype": self.dtype} if with_dtype else found


@dataclass(frozen=True)
class Outputs:
    """A fingerprinted model's ``probs`` and ``layer_errors`` (one per evidence), or a wrapped model's ``raw``."""

    probs: Output | None = None
    layer_errors: tuple[Output, ...] = ()
    raw: tuple[Output, ...] = ()

    def to_json(self) -> dict:
        if self.probs is None:
            return {"raw": [output.to_json(with_dtype=True) for output in self.raw]}
        return {
            "probs": self.probs.to_json(with_dtype=False),
            "layer_errors": [output.to_json(with_dtype=False) for output in self.layer_errors],
        }


@dataclass(frozen=True)
class Label:
    """A class: the value a prediction reports, its name and (optionally, unchecked) its position."""

    value: int
    name: str
    index: object = None

    def to_json(self) -> dict:
        return {**({"index": self.index} if self.index is not None else {}), "value": self.value, "name": self.name}


@dataclass(frozen=True)
class Layer:
    """One piece of evidence of the fingerprint, calibrated on the int8 model (docs/bundle.md); until
    ``convert`` calibrates it, its statistics and table are placeholders."""

    name: str
    kind: str
    transform: str
    weight: float
    features: int
    z_mean: float = 0.0
    z_std: float = 1.0
    holdout_quantiles: tuple[float, ...] = ()
    z_table: tuple[int, ...] = ()

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "transform": self.transform,
            "weight": self.weight,
            "features": self.features,
            "z_mean": self.z_mean,
            "z_std": self.z_std,
            "holdout_quantiles": list(self.holdout_quantiles),
            "z_table": list(self.z_table),
        }


@dataclass(frozen=True)
class Score:
    """How the evidence becomes the verdict: the threshold in fixed-point units and for display; until
    ``convert`` calibrates it, the fields after ``target_fpr`` are placeholders."""

    combine: str
    eps: float
    target_fpr: float
    unit: int = 1
    threshold_units: int = 0
    threshold: float = 0.0
    holdout_quantiles: tuple[float, ...] = ()
    n_holdout: int | None = None  # the number of held-out samples, when given

    def to_json(self) -> dict:
        found = {
            "combine": self.combine,
            "eps": self.eps,
            "target_fpr": self.target_fpr,
            "unit": self.unit,
            "threshold_units": self.threshold_units,
            "threshold": self.threshold,
            "holdout_quantiles": list(self.holdout_quantiles),
        }
        return found if self.n_holdout is None else {**found, "n_holdout": self.n_holdout}


@dataclass(frozen=True)
class Manifest:
    """A bundle manifest: read with :meth:`from_json` (checked), or made by a writer (checked when the
    bundle is written). ``layers`` empty, ``labels`` empty and ``score`` None: a model wrapped without a
    fingerprint (edgefp wrap), whose ``outputs.raw`` lists what it returns. ``source`` (where the bundle
    came from) and ``parity`` (the conversion's report) are JSON values no reader relies on (unchecked)."""

    name: str
    model: str
    files: dict[str, FileEntry]
    flash_bytes: int
    tflm_arena_bytes: int
    ops: tuple[str, ...]
    input: Input
    outputs: Outputs
    labels: tuple[Label, ...]
    layers: tuple[Layer, ...]
    score: Score | None
    source: object = None
    parity: object = None
    created: str | None = None
    edgefp_version: str | None = None
    digest: str | None = None
    document: dict | None = field(default=None, init=False, repr=False, compare=False)  # as read

    @property
    def fingerprinted(self) -> bool:
        """False for a model wrapped without a fingerprint: no labels, layers or OOD check."""
        return bool(self.layers)

    @property
    def wrapped_from(self) -> str | None:
        """The model file a bundle without a fingerprint was made of (``source.wrapped``), when named."""
        found = self.source.get("wrapped") if isinstance(self.source, dict) else None
        return found if isinstance(found, str) else None

    def to_json(self) -> dict:
        """The manifest as ``manifest.json`` holds it: the JSON it was read from, else its fields (those
        that are None left out)."""
        if self.document is not None:
            return copy.deepcopy(self.document)
        found = {
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "name": self.name,
            "edgefp_version": self.edgefp_version,
            "created": self.created,
            "source": copy.deepcopy(self.source),
            "model": self.model,
            "input": self.input.to_json(),
            "outputs": self.outputs.to_json(),
            "labels": [label.to_json() for label in self.labels],
            "layers": [layer.to_json() for layer in self.layers],
            "score": None if self.score is None else self.score.to_json(),
            "ops": list(self.ops),
            "tflm_arena_bytes": self.tflm_arena_bytes,
            "flash_bytes": self.flash_bytes,
            "files": {name: entry.to_json() for name, entry in self.files.items()},
            "parity": copy.deepcopy(self.parity),
            "digest": self.digest,
        }
        return {key: value for key, value in found.items() if value is not None or key == "score"}

    @classmethod
    def from_json(cls, value) -> Manifest:
        """The manifest of a parsed ``manifest.json`` when it follows every rule, else ManifestError
        naming the first broken one."""
        manifest = _manifest(value)
        object.__setattr__(manifest, "document", copy.deepcopy(value))
        return manifest


# ------------------------------------------------------------------------------------ the rules
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


def _choice(value, where: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        _fail(where, " or ".join(f"'{a}'" for a in allowed), value)
    return value


def _optional_string(spec: dict, key: str) -> str | None:
    return None if key not in spec else _string(spec[key], key)


def _depth(value) -> int:
    """How deep lists and objects nest in a parsed JSON value (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (value.values() if isinstance(value, dict) else value))
    return deepest


def _manifest(value) -> Manifest:
    manifest = _object(value, "the manifest")
    if _depth(manifest) > MAX_DEPTH:
        raise ManifestError(f"{MANIFEST} is nested more than {MAX_DEPTH} deep")
    if manifest.get("schema") != SCHEMA:
        raise ManifestError(f"{MANIFEST} is not an edgefp bundle manifest")
    if manifest.get("version") != SCHEMA_VERSION:
        raise ManifestError(
            f"bundle version {_show(manifest.get('version'))} is not {SCHEMA_VERSION}; "
            "convert it again with this version of edgefp"
        )
    name = _string(manifest.get("name"), "name", NAME_RE)
    created, edgefp_version = _optional_string(manifest, "created"), _optional_string(manifest, "edgefp_version")
    digest = None if "digest" not in manifest else _string(manifest["digest"], "digest", SHA256_RE)
    files = _files(manifest.get("files"))
    model = _string(manifest.get("model"), "model", FILE_RE)
    if model not in files:
        _fail("model", "a file listed in files", model)
    flash_bytes = _int(manifest.get("flash_bytes"), "flash_bytes", files[model].bytes, files[model].bytes)
    arena = _int(manifest.get("tflm_arena_bytes"), "tflm_arena_bytes", 1, 1 << 30)
    ops = tuple(_string(op, f"ops[{i}]") for i, op in enumerate(_list(manifest.get("ops"), "ops", 0, 256)))

    layers = _list(manifest.get("layers"), "layers", 0, MAX_LAYERS)
    wrapped = not layers  # a model wrapped without a fingerprint (edgefp wrap): raw outputs, no OOD check
    spec = _input(manifest.get("input"), wrapped)
    labels = tuple(
        _label(label, f"labels[{i}]")
        for i, label in enumerate(_list(manifest.get("labels"), "labels", 0 if wrapped else 1, MAX_CLASSES))
    )
    common = dict(
        name=name,
        model=model,
        files=files,
        flash_bytes=flash_bytes,
        tflm_arena_bytes=arena,
        ops=ops,
        input=spec,
        labels=labels,
        source=manifest.get("source"),
        parity=manifest.get("parity"),
        created=created,
        edgefp_version=edgefp_version,
        digest=digest,
    )
    if wrapped:
        outputs = _object(manifest.get("outputs"), "outputs")
        raw = tuple(
            _output(output, f"outputs.raw[{i}]", i)
            for i, output in enumerate(_list(outputs.get("raw"), "outputs.raw", 1, MAX_OUTPUTS))
        )
        if manifest.get("score") is not None:
            _fail("score", "null for a bundle without layers", manifest.get("score"))
        return Manifest(outputs=Outputs(raw=raw), layers=(), score=None, **common)
    outputs = _object(manifest.get("outputs"), "outputs")
    probs = _quantization(outputs.get("probs"), "outputs.probs", len(labels))
    errors = _list(outputs.get("layer_errors"), "outputs.layer_errors", len(layers), len(layers))
    layers = tuple(_layer(layer, f"layers[{j}]") for j, layer in enumerate(layers))
    errors = tuple(
        _quantization(error, f"outputs.layer_errors[{j}]", 1, error=layer.transform == "log")
        for j, (error, layer) in enumerate(zip(errors, layers))
    )
    for j, (error, layer) in enumerate(zip(errors, layers)):
        wanted = TABLE_SIZE * math.prod(error.shape)
        if len(layer.z_table) != wanted:
            what = f"a list of {wanted} entries ({TABLE_SIZE} per value of its output)"
            _fail(f"layers[{j}].z_table", what, f"{len(layer.z_table)} entries")
    indices = [probs.index] + [error.index for error in errors]
    if len(set(indices)) != len(indices):
        _fail("outputs", "distinct output indices", indices)
    return Manifest(
        outputs=Outputs(probs=probs, layer_errors=errors),
        layers=layers,
        score=_score(manifest.get("score")),
        **common,
    )


def _files(value) -> dict[str, FileEntry]:
    files = _object(value, "files")
    if not 1 <= len(files) <= MAX_FILES:
        _fail("files", f"an object of 1 to {MAX_FILES} files", files)
    found = {}
    for name, entry in files.items():
        if not FILE_RE.fullmatch(name) or name == MANIFEST:
            _fail("a name in files", f"a plain file name other than {MANIFEST}", name)
        entry = _object(entry, f"files.{name}")
        found[name] = FileEntry(
            _string(entry.get("sha256"), f"files.{name}.sha256", SHA256_RE),
            _int(entry.get("bytes"), f"files.{name}.bytes", 0, MAX_FILES_BYTES),
        )
    total = sum(entry.bytes for entry in found.values())
    if total > MAX_FILES_BYTES:
        _fail("files", f"at most {MAX_FILES_BYTES} bytes together", total)
    return found


def _shape(value, where: str, low: int) -> tuple[int, ...]:
    """A tensor's shape (the batch axis dropped): up to MAX_DIMS sizes, MAX_INPUT_BYTES elements at most."""
    shape, size = _list(value, where, low, MAX_DIMS), 1
    for i, n in enumerate(shape):
        size *= _int(n, f"{where}[{i}]", 1, MAX_INPUT_BYTES)
    if size > MAX_INPUT_BYTES:
        _fail(where, f"a shape of at most {MAX_INPUT_BYTES} elements", shape)
    return tuple(shape)


def _numbers(values, where: str, count: int, *, positive: bool = False) -> tuple[float, ...]:
    return tuple(
        _number(value, f"{where}[{i}]", positive=positive) for i, value in enumerate(_list(values, where, count, count))
    )


def _input(value, wrapped: bool) -> Input:
    """The input's shape, dtype, quantisation and preprocessing; a wrapped model's input may be float32
    (scale 0: not quantised) and is never preprocessed."""
    spec = _object(value, "input")
    shape = _shape(spec.get("shape"), "input.shape", 1)
    dtype = _choice(spec.get("dtype"), "input.dtype", ("int8", "float32") if wrapped else ("int8",))
    scale = _number(spec.get("scale"), "input.scale", positive=not wrapped)
    zero_point = _int(spec.get("zero_point"), "input.zero_point", -128, 127)
    pre = _object(spec.get("preprocessing"), "input.preprocessing")
    if pre.get("type") == "standardize" and not wrapped:
        mean = _numbers(pre.get("mean"), "input.preprocessing.mean", shape[-1])
        std = _numbers(pre.get("std"), "input.preprocessing.std", shape[-1], positive=True)
        preprocessing = Preprocessing("standardize", mean, std)
    else:
        _choice(pre.get("type"), "input.preprocessing.type", ("none",) if wrapped else ("none", "standardize"))
        preprocessing = Preprocessing()
    return Input(shape, dtype, scale, zero_point, preprocessing)


def _quantization(value, where: str, size: int, *, error: bool = False) -> Output:
    """An int8 output of a fingerprinted model (its dtype not named) of ``size`` elements, or for an
    ``error`` 1 to MAX_SCALES (its coarser values' ``coarse_factor`` given)."""
    spec = _object(value, where)
    shape = _shape(spec.get("shape"), f"{where}.shape", 1)
    most = MAX_SCALES if error else size
    if not size <= math.prod(shape) <= most:
        _fail(f"{where}.shape", f"a shape of {size}{f' to {most}' if most > size else ''} elements", list(shape))
    coarse = None
    if error and math.prod(shape) > 1:
        coarse = _number(spec.get("coarse_factor"), f"{where}.coarse_factor", positive=True)
        if not 1 <= coarse <= MAX_COARSE_FACTOR:
            _fail(f"{where}.coarse_factor", f"from 1 to {MAX_COARSE_FACTOR}", coarse)
    elif "coarse_factor" in spec:
        _fail(f"{where}.coarse_factor", "absent from an output of one value", spec["coarse_factor"])
    return Output(
        _int(spec.get("index"), f"{where}.index", 0, 255),
        shape,
        _number(spec.get("scale"), f"{where}.scale", positive=True),
        _int(spec.get("zero_point"), f"{where}.zero_point", -128, 127),
        coarse_factor=coarse,
    )


def _output(value, where: str, index: int) -> Output:
    """One output of a wrapped model, listed in the model's order."""
    spec = _object(value, where)
    return Output(
        _int(spec.get("index"), f"{where}.index", index, index),
        _shape(spec.get("shape"), f"{where}.shape", 0),
        _number(spec.get("scale"), f"{where}.scale"),
        _int(spec.get("zero_point"), f"{where}.zero_point", -(1 << 31), (1 << 31) - 1),
        _choice(spec.get("dtype"), f"{where}.dtype", RAW_DTYPES),
    )


def _label(value, where: str) -> Label:
    label = _object(value, where)
    value, name = _int(label.get("value"), f"{where}.value", 0, INT64_MAX), _string(label.get("name"), f"{where}.name")
    return Label(value, name, label.get("index"))


def _layer(value, where: str) -> Layer:
    layer = _object(value, where)
    name = _string(layer.get("name"), f"{where}.name")
    features = _int(layer.get("features"), f"{where}.features", 1, MAX_INPUT_BYTES)
    kind = _choice(layer.get("kind"), f"{where}.kind", KINDS)
    transform = _choice(layer.get("transform"), f"{where}.transform", TRANSFORMS)
    weight = _number(layer.get("weight"), f"{where}.weight", positive=True)
    if weight >= 1:
        _fail(f"{where}.weight", "below 1 (a share of the score)", weight)
    z_mean = _number(layer.get("z_mean"), f"{where}.z_mean")
    z_std = _number(layer.get("z_std"), f"{where}.z_std", positive=True)
    table = _list(layer.get("z_table"), f"{where}.z_table", TABLE_SIZE, TABLE_SIZE * MAX_SCALES)
    table = tuple(_int(entry, f"{where}.z_table[{q}]", 0, TABLE_MAX) for q, entry in enumerate(table))
    quantiles = _numbers(layer.get("holdout_quantiles"), f"{where}.holdout_quantiles", QUANTILES)
    return Layer(name, kind, transform, weight, features, z_mean, z_std, quantiles, table)


def _score(value) -> Score:
    score = _object(value, "score")
    combine = _choice(score.get("combine"), "score.combine", (COMBINE,))
    eps = _number(score.get("eps"), "score.eps", positive=True)
    quantiles = _numbers(score.get("holdout_quantiles"), "score.holdout_quantiles", QUANTILES)
    unit = _int(score.get("unit"), "score.unit", 1, 1 << 30)
    threshold_units = _int(score.get("threshold_units"), "score.threshold_units", 0, INT64_MAX // 2)
    threshold = _number(score.get("threshold"), "score.threshold")
    fpr = _number(score.get("target_fpr"), "score.target_fpr", positive=True)
    if fpr >= 1:
        _fail("score.target_fpr", "below 1", fpr)
    n_holdout = score.get("n_holdout")
    if n_holdout is not None:
        n_holdout = _int(n_holdout, "score.n_holdout", 1, INT64_MAX)
    return Score(combine, eps, fpr, unit, threshold_units, threshold, quantiles, n_holdout)
