"""Bundles: the int8 model and its manifest, as a directory or a single ``.efp`` archive (docs/bundle.md).

Reading verifies everything (schema, the manifest's own digest, every file's SHA-256 and size): a
bundle that does not verify is refused, never half-used. Scoring turns raw samples into the score
file of the contract through any runtime of :mod:`edgefp.runtime`. No TensorFlow here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import numpy as np

from edgefp import data, ood
from edgefp.errors import EdgefpError
from edgefp.fsutil import atomic_directory, write_file_atomic
from edgefp.isolation import step

SCHEMA = "edgefp.bundle"
SCHEMA_VERSION = 3
MANIFEST = "manifest.json"
MODEL = "model.tflite"
ARCHIVE_SUFFIX = ".efp"
RUNTIME_NAMES = {
    "litert": "LiteRT",
    "tflm": "TFLite Micro",
    "edgetpu": "LiteRT with the Edge TPU",
    "firmware": "the firmware's engine",
}


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def manifest_digest(manifest: dict) -> str:
    """SHA-256 of the manifest's canonical JSON, without its own ``digest`` entry."""
    body = {key: value for key, value in manifest.items() if key != "digest"}
    return sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


class Bundle:
    """A bundle in memory: ``manifest`` and ``files`` (name -> bytes, the manifest excluded)."""

    def __init__(self, manifest: dict, files: dict[str, bytes], source: str = "<memory>"):
        self.manifest, self.files, self.source = manifest, files, source

    # -------------------------------------------------------------------------------- reading
    @classmethod
    def read(cls, path: str) -> Bundle:
        """Read a bundle directory or archive without verifying its files (see :meth:`problems`)."""
        if os.path.isdir(path):
            files = {}
            for name in sorted(os.listdir(path)):
                full = os.path.join(path, name)
                if os.path.isfile(full):
                    with open(full, "rb") as handle:
                        files[name] = handle.read()
        elif os.path.isfile(path):
            files = _read_archive(path)
        else:
            raise EdgefpError(f"{path}: no such bundle; create one with 'edgefp convert'")
        if MANIFEST not in files:
            raise EdgefpError(f"{path}: not a bundle (no {MANIFEST})")
        try:
            manifest = json.loads(files.pop(MANIFEST))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise EdgefpError(f"{path}: {MANIFEST} is corrupt ({exc}); re-create the bundle") from None
        if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
            raise EdgefpError(f"{path}: {MANIFEST} is not an edgefp bundle manifest")
        if manifest.get("version") != SCHEMA_VERSION:
            raise EdgefpError(
                f"{path}: bundle version {manifest.get('version')} is not {SCHEMA_VERSION}; "
                "convert it again with this version of edgefp"
            )
        return cls(manifest, files, path)

    @classmethod
    def load(cls, path: str) -> Bundle:
        """Read and verify a bundle; refuse it with one clear line if anything does not match."""
        bundle = cls.read(path)
        problems = bundle.problems()
        if problems:
            raise EdgefpError(f"{path}: {problems[0]}; the bundle is corrupt or was modified, convert it again")
        return bundle

    def problems(self) -> list[str]:
        """Everything that does not verify, as sentences; empty when the bundle is intact."""
        found = []
        if self.manifest.get("digest") != manifest_digest(self.manifest):
            found.append(f"{MANIFEST} does not match its digest")
        listed = self.manifest.get("files", {})
        for name, expected in listed.items():
            content = self.files.get(name)
            if content is None:
                found.append(f"{name} is missing")
            elif len(content) != expected.get("bytes") or sha256(content) != expected.get("sha256"):
                found.append(f"{name} does not match its SHA-256 in {MANIFEST}")
        found += [f"{name} is not listed in {MANIFEST}" for name in self.files if name not in listed]
        return found

    # -------------------------------------------------------------------------------- writing
    def _contents(self) -> dict[str, bytes]:
        self.manifest["digest"] = manifest_digest(self.manifest)
        return {MANIFEST: json.dumps(self.manifest, indent=1).encode(), **self.files}

    def archive_bytes(self) -> bytes:
        """The single-file ``.efp`` form: an uncompressed tar of the manifest and the files."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for name, content in self._contents().items():
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(content), 0o644
                archive.addfile(info, io.BytesIO(content))
        return buffer.getvalue()

    def write(self, out: str, *, force: bool = False) -> str:
        """Write atomically: a directory, or a single archive when ``out`` ends in ``.efp``."""
        if out.endswith(ARCHIVE_SUFFIX):
            _write_archive(out, self.archive_bytes(), force=force)
            return out
        contents = self._contents()
        with atomic_directory(out, force=force) as tmp:
            for name, content in contents.items():
                with open(os.path.join(tmp, name), "wb") as handle:
                    handle.write(content)
        return out

    # -------------------------------------------------------------------------------- running
    @property
    def model_bytes(self) -> bytes:
        return self.files[self.manifest["model"]]

    @property
    def input_bytes(self) -> int:
        """Bytes of one sample as the model's input takes it (int8; float32 for some wrapped models)."""
        spec = self.manifest["input"]
        return int(np.prod(spec["shape"])) * np.dtype(spec.get("dtype", "int8")).itemsize

    @property
    def raw_output_bytes(self) -> int:
        """Bytes of every output of a model wrapped without a fingerprint (0 for other bundles)."""
        specs = self.manifest["outputs"].get("raw", [])
        return sum(int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize for spec in specs)

    @property
    def fingerprinted(self) -> bool:
        """False for a model wrapped without a fingerprint (edgefp wrap): no labels, layers or OOD check."""
        return bool(self.manifest.get("layers"))

    @property
    def threshold(self) -> float:
        return float(self.manifest["score"]["threshold"])

    @property
    def label_values(self) -> np.ndarray:
        return np.asarray([label["value"] for label in self.manifest["labels"]], dtype=np.int64)

    def quantize(self, x: np.ndarray, name: str = "data") -> np.ndarray:
        """Raw samples -> the model's int8 input (preprocessing and quantisation in one step). A model
        wrapped without a fingerprint takes its input as it is: checked, never quantised."""
        spec = self.manifest["input"]
        if not self.fingerprinted:
            x, dtype = np.asarray(x), np.dtype(spec.get("dtype", "int8"))
            if x.dtype != dtype or x.shape[1:] != tuple(spec["shape"]):
                raise EdgefpError(
                    f"{name}: {x.dtype} samples of shape {list(x.shape[1:])}; the model takes {dtype} "
                    f"of shape {spec['shape']}, as its input tensor holds them"
                )
            return x
        x = data.fit_input_shape(np.asarray(x, dtype=np.float32), tuple(spec["shape"]), name)
        scaled = data.apply_preprocessing(x, spec["preprocessing"]) / np.float32(spec["scale"])
        return np.clip(np.round(scaled) + spec["zero_point"], -128, 127).astype(np.int8)

    @property
    def transforms(self) -> list[str]:
        return [layer["transform"] for layer in self.manifest["layers"]]

    def dequantize(self, probs_q: np.ndarray, values_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The int8 outputs of N samples as float (probabilities, evidence)."""
        outputs = self.manifest["outputs"]
        values = [_dequantize(values_q[:, j], spec) for j, spec in enumerate(outputs["layer_errors"])]
        return _dequantize(probs_q, outputs["probs"]), np.stack(values, axis=1)

    def decide(self, probs_q: np.ndarray, values_q: np.ndarray) -> ood.Scores:
        """The int8 outputs of N samples -> the score file (dequantise, look up, compare)."""
        probs, values = self.dequantize(probs_q, values_q)
        units = self.score_units(values_q)
        return ood.Scores(
            pred=self.label_values[np.argmax(probs_q, axis=1)],
            probs=probs,
            ood_score=units / (ood.SCORE_UNIT * len(self.manifest["layers"])),
            is_ood=units > self.manifest["score"]["threshold_units"],
            layer_errors=values,
        )

    def score_units(self, values_q: np.ndarray) -> np.ndarray:
        """The int8 evidence (N, L) -> scores in fixed-point units: the sum of each output's z_table entry."""
        tables = np.asarray([layer["z_table"] for layer in self.manifest["layers"]], dtype=np.int64)
        index = np.asarray(values_q, dtype=np.int64).reshape(-1, len(tables)) + 128
        return tables[np.arange(len(tables)), index].sum(axis=1)

    def most_unusual_q(self) -> np.ndarray:
        """Per evidence output, the int8 value at its least usual end (127 for errors, -128 for the max logit)."""
        return np.asarray([ood.least_usual_q(kind) for kind in self.transforms], dtype=np.int8)

    def split_outputs(self, result: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """One invoke's outputs (model order, no batch axis) -> the int8 probs (C,) and evidence (L,)."""
        outputs = self.manifest["outputs"]
        values = [np.asarray(result[spec["index"]]).reshape(-1)[0] for spec in outputs["layer_errors"]]
        return np.asarray(result[outputs["probs"]["index"]], dtype=np.int8), np.asarray(values, dtype=np.int8)

    def invoke_all(self, interpreter, x_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run every quantised sample through an interpreter; return the int8 probs (N, C) and evidence (N, L)."""
        probs = np.empty((len(x_q), len(self.manifest["labels"])), dtype=np.int8)
        values = np.empty((len(x_q), len(self.manifest["layers"])), dtype=np.int8)
        with step(f"running the int8 model on {RUNTIME_NAMES.get(interpreter.name, interpreter.name)}"):
            for i, sample in enumerate(x_q):
                probs[i], values[i] = self.split_outputs(interpreter.invoke(sample))
        return probs, values

    def score(self, x: np.ndarray, runtime: str = "litert"):
        """Classify and score raw samples with the int8 model on ``runtime`` (litert, tflm, edgetpu,
        firmware): ood.Scores, or for a bundle without a fingerprint the raw outputs (wrap.Outputs) of
        samples given as the model's input takes them."""
        from edgefp.runtime import open_runtime

        interpreter = open_runtime(self.model_bytes, runtime, arena_bytes=self.manifest.get("tflm_arena_bytes"))
        if not self.fingerprinted:
            from edgefp.wrap import run

            return run(self, interpreter, x)
        return self.decide(*self.invoke_all(interpreter, self.quantize(x)))


def _dequantize(values: np.ndarray, spec: dict) -> np.ndarray:
    return ((np.asarray(values, dtype=np.float32) - spec["zero_point"]) * np.float32(spec["scale"])).astype(np.float32)


def _read_archive(path: str) -> dict[str, bytes]:
    files = {}
    try:
        with tarfile.open(path, "r") as archive:
            for member in archive.getmembers():
                if not member.isfile() or "/" in member.name or "\\" in member.name or member.name.startswith("."):
                    raise EdgefpError(f"{path}: unexpected entry '{member.name}' in the bundle archive")
                files[member.name] = archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise EdgefpError(f"{path}: not a readable bundle archive ({exc})") from None
    return files


def _write_archive(out: str, content: bytes, *, force: bool) -> None:
    if os.path.exists(out) and not force:
        raise EdgefpError(f"{out} already exists; choose another --out or pass --force to replace it")
    write_file_atomic(out, content)
