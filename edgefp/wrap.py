"""Any int8 TFLite model as a bundle without a fingerprint (docs/bundle.md): devices run it, and every
command that takes a bundle takes it, with no OOD verdicts. Data for it is what the model's input
tensor takes (an .npz with ``x``: int8 for int8 inputs, float32 for float inputs), and its score file
holds the raw model outputs and their argmax.

    edgefp wrap kws.tflite --out kws.efp
    edgefp score kws.efp --data features.npz --runtime firmware --out kws_scores.npz
"""

from __future__ import annotations

import datetime
import io
import os
import re
from dataclasses import dataclass

import numpy as np

from edgefp import __version__
from edgefp.bundle import MODEL, RUNTIME_NAMES, Bundle, sha256
from edgefp.data import Dataset, parse_spec
from edgefp.errors import EdgefpError, option
from edgefp.fsutil import check_file_output, write_file_atomic
from edgefp.isolation import step
from edgefp.manifest import FileEntry, Input, Manifest, Output
from edgefp.manifest import Outputs as OutputSpecs
from edgefp.ood import is_score_file

DTYPES = {"int8": np.int8, "float32": np.float32, "int32": np.int32}


def wrap(model_path: str, out: str, *, name: str | None = None, force: bool = False) -> Manifest:
    """Write ``model_path`` (a TFLite flatbuffer) as a bundle at ``out``; return its manifest."""
    from edgefp.runtime import LiteRT, TFLiteMicro, tflm_arena_bytes

    try:
        with open(model_path, "rb") as handle:
            model = handle.read()
    except OSError as exc:
        raise EdgefpError(f"{model_path}: cannot read the model ({exc.strerror})") from None
    try:
        interpreter = LiteRT(model)
    except (ValueError, RuntimeError) as exc:
        raise EdgefpError(f"{model_path}: not a TFLite model LiteRT can load ({str(exc).splitlines()[0]})") from None
    inputs, outputs = interpreter.input_details(), interpreter.output_details()
    if len(inputs) != 1:
        raise EdgefpError(f"{model_path}: the model takes {len(inputs)} inputs; a bundle takes one (an INFER's tensor)")
    spec = _tensor(inputs[0], model_path, "input")
    if spec.dtype == "int32":
        raise EdgefpError(f"{model_path}: the model's input is int32; a bundle takes int8 or float32 inputs")
    try:
        TFLiteMicro(model)
        arena = tflm_arena_bytes(model)
    except EdgefpError as refused:
        raise EdgefpError(f"{model_path}: TFLite Micro cannot run the model ({refused})") from None
    manifest = Manifest(
        name=name or _name(out),
        edgefp_version=__version__,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        source={"model_sha256": sha256(model), "wrapped": os.path.basename(model_path)},
        model=MODEL,
        input=Input(spec.shape, spec.dtype, spec.scale, spec.zero_point),
        outputs=OutputSpecs(raw=tuple(_tensor(d, model_path, "output", i) for i, d in enumerate(outputs))),
        labels=(),
        layers=(),
        score=None,
        ops=tuple(interpreter.ops()),
        tflm_arena_bytes=arena,
        flash_bytes=len(model),
        files={MODEL: FileEntry(sha256(model), len(model))},
    )
    if not re.fullmatch(r"[a-z0-9_]{1,32}", manifest.name):
        raise EdgefpError(
            f"bundle name '{manifest.name}' must be 1-32 characters of a-z, 0-9 and _; give {option('name')}"
        )
    bundle = Bundle(manifest, {MODEL: model})
    bundle.write(out, force=force)
    return bundle.manifest


def _name(out: str) -> str:
    base = os.path.basename(os.path.normpath(out))
    base = base[: -len(".efp")] if base.endswith(".efp") else base
    return re.sub(r"[^a-z0-9_]", "_", base.lower())[:32] or "model"


def _tensor(detail: dict, model_path: str, what: str, index: int = 0) -> Output:
    """One input or output: shape of one sample (the batch axis of 1 dropped), dtype, quantisation."""
    shape, dtype = [int(v) for v in detail["shape"]], np.dtype(detail["dtype"]).name
    if dtype not in DTYPES:
        raise EdgefpError(f"{model_path}: the model's {what} is {dtype}; a bundle takes int8, float32 or int32 tensors")
    if not shape or shape[0] != 1:
        raise EdgefpError(f"{model_path}: the model's {what} has shape {shape}; a bundle needs a batch axis of 1")
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return Output(index, tuple(shape[1:]), float(scale), int(zero_point), dtype)


@dataclass
class Outputs:
    """The score file of a bundle without a fingerprint: ``output`` the model's first output as the
    runtime returns it, one row per sample (``output_1``... the others), ``pred`` its argmax."""

    outputs: list[np.ndarray]

    @property
    def pred(self) -> np.ndarray:
        first = self.outputs[0]
        return np.argmax(first.reshape(len(first), -1), axis=1).astype(np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        named = {"output" if i == 0 else f"output_{i}": output for i, output in enumerate(self.outputs)}
        return {**named, "pred": self.pred}

    def save(self, path: str, *, force: bool = False) -> None:
        """Write the score file (all at once); an existing file is replaced only with ``force`` and only
        when it is a score file."""
        path = check_file_output(path, force=force, written_by_edgefp=is_score_file, kind="score file")
        buffer = io.BytesIO()
        np.savez(buffer, **self.arrays())
        write_file_atomic(path, buffer.getvalue())

    def summary(self, y: np.ndarray | None) -> dict:
        pred = self.pred
        return {
            "n": int(len(pred)),
            "outputs": [list(output.shape[1:]) for output in self.outputs],
            "accuracy": None if y is None else float(np.mean(pred == y)),
        }


def run(bundle: Bundle, interpreter, x: np.ndarray) -> Outputs:
    """Every sample through ``interpreter``: each output stacked, one row per sample."""
    with step(f"running the model on {RUNTIME_NAMES.get(interpreter.name, interpreter.name)}"):
        rows = [interpreter.invoke(sample) for sample in x]
    if not rows:
        raise EdgefpError("no samples to run")
    return Outputs([np.stack([row[i] for row in rows]) for i in range(len(rows[0]))])


def load_inputs(spec: str, bundle: Bundle) -> Dataset:
    """Data for a bundle without a fingerprint: ``FILE.npz[:train|test]`` holding ``x`` (and ``y``) as
    the model's input tensor takes it, one sample per row."""
    source, split, classes = parse_spec(spec)
    shape, dtype = bundle.manifest.input.shape, bundle.manifest.input.dtype
    hint = f"give an .npz whose x holds {dtype} samples of shape {list(shape)}, as the model's input takes them"
    if classes is not None or not source.endswith(".npz"):
        raise EdgefpError(f"{spec}: the bundle '{bundle.manifest.name}' has no fingerprint; {hint}")
    key, ykey = (f"x_{split}", f"y_{split}") if split else ("x", "y")
    try:
        with np.load(source, allow_pickle=False) as npz:
            x, y = npz[key], npz[ykey] if ykey in npz.files else None
    except FileNotFoundError:
        raise EdgefpError(f"{spec}: no such file; {hint}") from None
    except KeyError:
        raise EdgefpError(f"{spec}: the file has no '{key}' array; {hint}") from None
    except Exception as exc:  # noqa: BLE001 - numpy raises many types for unreadable files
        raise EdgefpError(f"{spec}: not a readable .npz file ({exc})") from None
    if x.dtype != np.dtype(DTYPES[dtype]) or x.shape[1:] != shape or len(x) == 0:
        raise EdgefpError(f"{spec}: x is {x.dtype} of shape {list(x.shape)}; {hint}")
    if dtype == "float32" and not np.isfinite(x).all():
        raise EdgefpError(f"{spec}: x holds NaN or infinite values")
    if y is not None and (y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer)):
        y = None
    return Dataset(x, y, spec)
