"""Bundles: the int8 model and its manifest, as a directory or a single ``.efp`` archive (docs/bundle.md).

Reading is bounded and checked before anything is trusted: an archive is an uncompressed tar whose
headers are read first (plain file names, no duplicates, no links, sizes within the file); then the
manifest (at most ``MAX_MANIFEST_BYTES``) is checked by :meth:`edgefp.manifest.Manifest.from_json`; then only the
files it lists, with the sizes it lists, are read. Verification (the manifest's own digest, every
file's SHA-256) refuses a bundle that does not match, never half-uses it. Scoring turns raw samples
into the score file of the contract through any runtime of :mod:`edgefp.runtime`. No TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import tarfile

import numpy as np

from edgefp import data, ood
from edgefp.errors import EdgefpError
from edgefp.fsutil import MARKER, atomic_directory, check_file_output, write_file_atomic
from edgefp.isolation import step
from edgefp.limits import MAX_MANIFEST_BYTES
from edgefp.manifest import (
    FILE_RE,
    MANIFEST,
    MAX_FILES,
    SCHEMA,
    SCHEMA_VERSION,
    Manifest,
    ManifestError,
)
from edgefp.runtime import quantize_input
from edgefp.signing import SIGNATURE_BYTES, SIGNATURE_FILE, Signature, sign_manifest

__all__ = ["ARCHIVE_SUFFIX", "MANIFEST", "MODEL", "SCHEMA", "SCHEMA_VERSION", "Bundle", "manifest_digest", "sha256"]

MODEL = "model.tflite"
ARCHIVE_SUFFIX = ".efp"
RUNTIME_NAMES = {
    "litert": "LiteRT",
    "tflm": "TFLite Micro",
    "edgetpu": "LiteRT with the Edge TPU",
    "firmware": "the firmware's engine",
}
TAR_BLOCK = 512
COMPRESSION = {
    b"\x1f\x8b": "gzip",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"\x5d\x00\x00": "lzma",
}


def sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def manifest_digest(manifest: Manifest | dict) -> str:
    """SHA-256 of the manifest's canonical JSON, without its own ``digest`` entry."""
    found = manifest.to_json() if isinstance(manifest, Manifest) else manifest
    body = {key: value for key, value in found.items() if key != "digest"}
    return sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def parse_manifest(content: bytes, where: str) -> Manifest:
    """Manifest bytes -> the checked manifest, or one clear EdgefpError: strict JSON in UTF-8 (RFC 8259, no
    byte-order mark), no object repeating a key, and every rule of :meth:`Manifest.from_json`."""
    try:
        manifest = json.loads(content.decode(), object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0]
        raise EdgefpError(f"{where}: {MANIFEST} is corrupt ({reason}); re-create the bundle") from None
    try:
        return Manifest.from_json(manifest)
    except EdgefpError as exc:
        raise EdgefpError(f"{where}: {exc}; the bundle is corrupt or was modified, convert it again") from None


def _no_constant(name: str):
    """NaN and Infinity are not JSON: refused."""
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list) -> dict:
    """A JSON object, refused when it repeats a key (readers would disagree on which one counts)."""
    found = dict(pairs)
    if len(found) != len(pairs):
        raise ValueError("an object repeats a key")
    return found


class Bundle:
    """A bundle in memory: its :class:`~edgefp.manifest.Manifest` and ``files`` (name -> bytes, the manifest
    excluded); ``unread`` names the entries found but not read (not listed in the manifest, or not of the
    listed size). A bundle read keeps its manifest's bytes and its signature (``manifest.sig``, see
    :mod:`edgefp.signing`) and writes them as it read them while its manifest is unchanged; a changed
    manifest is written anew, without the signature it no longer matches."""

    def __init__(
        self,
        manifest: Manifest,
        files: dict[str, bytes],
        source: str = "<memory>",
        unread=None,
        *,
        manifest_bytes: bytes | None = None,
        signature: bytes | None = None,
    ):
        self.manifest, self.files, self.source = manifest, files, source
        self.unread: dict[str, int] = dict(unread or {})
        self._as_read = (manifest, manifest_bytes) if manifest_bytes is not None else None
        self._signature = signature

    @property
    def manifest_bytes(self) -> bytes:
        """``manifest.json`` as this bundle writes it (as it was read, while the manifest is unchanged)."""
        if self._as_read is not None and self._as_read[0] is self.manifest:
            return self._as_read[1]
        digest = manifest_digest(self.manifest)
        if self.manifest.digest != digest:  # a manifest read intact is written as it was read
            self.manifest = dataclasses.replace(self.manifest, digest=digest)
        Manifest.from_json(self.manifest.to_json())
        content = json.dumps(self.manifest.to_json(), indent=1).encode()
        self._as_read, self._signature = (self.manifest, content), None  # a signature of other bytes goes
        return content

    @property
    def signature(self) -> bytes | None:
        """The bytes of ``manifest.sig`` (None when unsigned, or when the manifest changed since it was signed)."""
        return self._signature if self._as_read is not None and self._as_read[0] is self.manifest else None

    def sign(self, private_key, version: int) -> Signature:
        """Sign the manifest as this bundle writes it, as ``version`` (docs/security.md)."""
        found = sign_manifest(self.manifest_bytes, private_key, version)
        self._signature = found.pack()
        return found

    # -------------------------------------------------------------------------------- reading
    @classmethod
    def read(cls, path: str, *, before_files=None) -> Bundle:
        """Read a bundle directory or archive without verifying its hashes (see :meth:`problems`).

        ``before_files(manifest)`` is called with the checked manifest before any listed file is read
        (a device checks there that the bundle fits it)."""
        if not os.path.exists(path):
            raise EdgefpError(f"{path}: no such bundle; create one with 'edgefp convert'")
        try:
            if os.path.isdir(path):
                return cls._read(None, _directory_entries(path), path, before_files)
            with open(path, "rb") as handle:
                return cls._read(handle, _archive_entries(handle, path), path, before_files)
        except OSError as exc:
            raise EdgefpError(f"{path}: cannot read the bundle ({exc.strerror or exc})") from None

    @classmethod
    def from_archive(cls, content: bytes, source: str = "<archive>") -> Bundle:
        """Read ``.efp`` archive bytes (as :meth:`read` reads a file)."""
        handle = io.BytesIO(content)
        return cls._read(handle, _archive_entries(handle, source), source, None)

    @classmethod
    def _read(cls, handle, entries: dict, path: str, before_files) -> Bundle:
        sizes = {name: size for name, (_, size) in entries.items()}
        if MANIFEST not in sizes:
            raise EdgefpError(f"{path}: not a bundle (no {MANIFEST})")
        if sizes[MANIFEST] > MAX_MANIFEST_BYTES:
            raise EdgefpError(f"{path}: {MANIFEST} has {sizes[MANIFEST]} bytes, more than {MAX_MANIFEST_BYTES}")
        manifest_bytes = _read_entry(handle, entries[MANIFEST])
        manifest = parse_manifest(manifest_bytes, path)
        if before_files is not None:
            before_files(manifest)
        listed = manifest.files
        wanted = [name for name in sizes if name in listed and sizes[name] == listed[name].bytes]
        files = {name: _read_entry(handle, entries[name]) for name in wanted}
        signature = None
        if sizes.get(SIGNATURE_FILE) == SIGNATURE_BYTES and SIGNATURE_FILE not in listed:
            signature = _read_entry(handle, entries[SIGNATURE_FILE])
        kept = (MANIFEST, SIGNATURE_FILE) if signature is not None else (MANIFEST,)
        unread = {name: size for name, size in sizes.items() if name not in kept and name not in files}
        return cls(manifest, files, path, unread, manifest_bytes=manifest_bytes, signature=signature)

    @classmethod
    def load(cls, path: str, **options) -> Bundle:
        """Read and verify a bundle; refuse it with one clear line if anything does not match."""
        bundle = cls.read(path, **options)
        problems = bundle.problems()
        if problems:
            raise EdgefpError(f"{path}: {problems[0]}; the bundle is corrupt or was modified, convert it again")
        return bundle

    def problems(self) -> list[str]:
        """Everything that does not verify, as sentences; empty when the bundle is intact."""
        found = []
        if self.manifest.digest != manifest_digest(self.manifest):
            found.append(f"{MANIFEST} does not match its digest")
        listed = self.manifest.files
        for name, expected in listed.items():
            content = self.files.get(name)
            if content is None:
                found.append(f"{name} is missing" if name not in self.unread else f"{name} does not match its size")
            elif len(content) != expected.bytes or sha256(content) != expected.sha256:
                found.append(f"{name} does not match its SHA-256 in {MANIFEST}")
        found += [f"{name} is not listed in {MANIFEST}" for name in [*self.files, *self.unread] if name not in listed]
        return found

    # -------------------------------------------------------------------------------- writing
    def _contents(self) -> dict[str, bytes]:
        """The files to write: the manifest with its digest (checked again, as a reader will), its signature
        when it has one, and the rest."""
        contents = {MANIFEST: self.manifest_bytes}
        if self.signature is not None:
            contents[SIGNATURE_FILE] = self.signature
        return {**contents, **self.files}

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
        """Write atomically: a directory, or a single archive when ``out`` ends in ``.efp``. An existing
        ``out`` is replaced only with ``force``, and only when it is a bundle edgefp wrote."""
        if out.endswith(ARCHIVE_SUFFIX):
            path = check_output(out, force=force)
            write_file_atomic(path, self.archive_bytes())
            return out
        contents = self._contents()
        with atomic_directory(out, "bundle", force=force) as tmp:
            for name, content in contents.items():
                with open(os.path.join(tmp, name), "wb") as handle:
                    handle.write(content)
        return out

    # -------------------------------------------------------------------------------- running
    @property
    def model_bytes(self) -> bytes:
        return self.files[self.manifest.model]

    @property
    def input_bytes(self) -> int:
        """Bytes of one sample as the model's input takes it (int8; float32 for some wrapped models)."""
        spec = self.manifest.input
        return math.prod(spec.shape) * np.dtype(spec.dtype).itemsize

    @property
    def raw_output_bytes(self) -> int:
        """Bytes of every output of a model wrapped without a fingerprint (0 for other bundles)."""
        return sum(math.prod(spec.shape) * np.dtype(spec.dtype).itemsize for spec in self.manifest.outputs.raw)

    @property
    def fingerprinted(self) -> bool:
        """False for a model wrapped without a fingerprint (edgefp wrap): no labels, layers or OOD check."""
        return self.manifest.fingerprinted

    @property
    def threshold(self) -> float:
        return float(self.manifest.score.threshold)

    @property
    def label_values(self) -> np.ndarray:
        return np.asarray([label.value for label in self.manifest.labels], dtype=np.int64)

    def interpreter(self, runtime: str = "litert"):
        """An interpreter of the model on ``runtime``, refused with one clear line when the model does not
        have the input and outputs the manifest describes."""
        from edgefp.runtime import open_runtime

        interpreter = open_runtime(self.model_bytes, runtime, arena_bytes=self.manifest.tflm_arena_bytes)
        spec, outputs = self.manifest.input, self.manifest.outputs
        expected = (spec.shape, np.dtype(spec.dtype))
        shape, dtype = interpreter.input_spec
        if (shape, np.dtype(dtype)) != expected:
            raise ManifestError(
                f"{self.source}: the model takes {np.dtype(dtype).name} {shape}, the manifest says "
                f"{expected[1].name} {expected[0]}; the bundle is corrupt or was modified, convert it again"
            )
        if self.fingerprinted:
            wanted = [("the probs", outputs.probs), *(("a layer error", s) for s in outputs.layer_errors)]
        else:
            wanted = [("a", output) for output in outputs.raw]
            if len(wanted) != len(interpreter.output_specs):
                raise ManifestError(
                    f"{self.source}: the model has {len(interpreter.output_specs)} outputs, the manifest lists "
                    f"{len(wanted)}; the bundle is corrupt or was modified"
                )
        for where, out in wanted:
            found = interpreter.output_specs[out.index] if out.index < len(interpreter.output_specs) else None
            dtype = np.dtype(out.dtype)
            if found is None or math.prod(found[0]) != math.prod(out.shape) or np.dtype(found[1]) != dtype:
                raise ManifestError(
                    f"{self.source}: the model's output {out.index} is not {where} {dtype.name} output of "
                    f"{math.prod(out.shape)} values the manifest says; the bundle is corrupt or was modified"
                )
        return interpreter

    def quantize(self, x: np.ndarray, name: str = "data") -> np.ndarray:
        """Raw samples -> the model's int8 input (preprocessing and quantisation in one step). A model
        wrapped without a fingerprint takes its input as it is: checked, never quantised."""
        spec = self.manifest.input
        if not self.fingerprinted:
            x, dtype = np.asarray(x), np.dtype(spec.dtype)
            if x.dtype != dtype or x.shape[1:] != spec.shape:
                raise EdgefpError(
                    f"{name}: {x.dtype} samples of shape {list(x.shape[1:])}; the model takes {dtype} "
                    f"of shape {list(spec.shape)}, as its input tensor holds them"
                )
            return x
        x = data.fit_input_shape(np.asarray(x, dtype=np.float32), spec.shape, name)
        return quantize_input(spec.preprocessing.apply(x), spec.scale, spec.zero_point)

    @property
    def transforms(self) -> list[str]:
        return [layer.transform for layer in self.manifest.layers]

    @property
    def value_columns(self) -> list[slice]:
        """Each evidence output's columns in the int8 evidence (N, V): one per value it holds (an error
        at one or two scales, its ``coarse_factor`` apart)."""
        sizes = [math.prod(spec.shape) for spec in self.manifest.outputs.layer_errors]
        return [slice(int(end) - size, int(end)) for end, size in zip(np.cumsum(sizes), sizes)]

    @property
    def evidence_values(self) -> int:
        """int8 evidence values per sample (V): those of every evidence output."""
        return sum(math.prod(spec.shape) for spec in self.manifest.outputs.layer_errors)

    def dequantize(self, probs_q: np.ndarray, values_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The int8 outputs of N samples as float: probabilities, and evidence (N, L) from the value of
        each output that counts (ood.counted)."""
        outputs = self.manifest.outputs
        values = []
        for spec, (which, q) in zip(outputs.layer_errors, self._counted(values_q)):
            values.append(data.dequantize(q, spec) * np.where(which > 0, np.float32(spec.coarse_factor or 1), 1))
        return data.dequantize(probs_q, outputs.probs), np.stack(values, axis=1)

    def decide(self, probs_q: np.ndarray, values_q: np.ndarray) -> ood.Scores:
        """The int8 outputs of N samples -> the score file (dequantise, look up, compare)."""
        probs, values = self.dequantize(probs_q, values_q)
        units = self.score_units(values_q)
        return ood.Scores(
            pred=self.label_values[np.argmax(probs_q, axis=1)],
            probs=probs,
            ood_score=units / (ood.SCORE_UNIT * len(self.manifest.layers)),
            is_ood=units > self.manifest.score.threshold_units,
            layer_errors=values,
        )

    def score_units(self, values_q: np.ndarray) -> np.ndarray:
        """The int8 evidence (N, V) -> scores in fixed-point units: the sum of each output's z_table entry."""
        return self.layer_evidence(values_q).sum(axis=1)

    def layer_evidence(self, values_q: np.ndarray) -> np.ndarray:
        """The int8 evidence (N, V) -> each output's part of the score (N, L), ``max(z, 0)`` in fixed-point
        units: the z_table entry of the value that counts (ood.counted)."""
        parts = []
        for layer, (which, q) in zip(self.manifest.layers, self._counted(values_q)):
            parts.append(np.asarray(layer.z_table, dtype=np.int64)[which * 256 + q + 128])
        return np.stack(parts, axis=1)

    def _counted(self, values_q: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per evidence output, of the int8 evidence (N, V): which of its values counts and that value (ood.counted)."""
        values_q = np.asarray(values_q).reshape(-1, self.evidence_values)
        return [ood.counted(values_q[:, columns]) for columns in self.value_columns]

    def most_unusual_q(self) -> np.ndarray:
        """Per evidence value (V,), the int8 value at its least usual end (127 for errors, -128 for the max logit)."""
        least = [[ood.least_usual_q(kind)] * (c.stop - c.start) for kind, c in zip(self.transforms, self.value_columns)]
        return np.asarray(sum(least, []), dtype=np.int8)

    def split_outputs(self, result: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """One invoke's outputs (model order, no batch axis) -> the int8 probs (C,) and evidence (V,)."""
        outputs = self.manifest.outputs
        values = [np.asarray(result[spec.index]).reshape(-1) for spec in outputs.layer_errors]
        return np.asarray(result[outputs.probs.index], dtype=np.int8), np.concatenate(values).astype(np.int8)

    def invoke_all(self, interpreter, x_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run every quantised sample through an interpreter; return the int8 probs (N, C) and evidence (N, V)."""
        probs = np.empty((len(x_q), len(self.manifest.labels)), dtype=np.int8)
        values = np.empty((len(x_q), self.evidence_values), dtype=np.int8)
        with step(f"running the int8 model on {RUNTIME_NAMES.get(interpreter.name, interpreter.name)}"):
            for i, sample in enumerate(x_q):
                probs[i], values[i] = self.split_outputs(interpreter.invoke(sample))
        return probs, values

    def score(self, x: np.ndarray, runtime: str = "litert"):
        """Classify and score raw samples with the int8 model on ``runtime`` (litert, tflm, edgetpu,
        firmware): ood.Scores, or for a bundle without a fingerprint the raw outputs (wrap.Outputs) of
        samples given as the model's input takes them."""
        interpreter = self.interpreter(runtime)
        if not self.fingerprinted:
            from edgefp.wrap import run

            return run(self, interpreter, x)
        return self.decide(*self.invoke_all(interpreter, self.quantize(x)))


def _directory_entries(path: str) -> dict[str, tuple[str, int]]:
    """name -> (file, size) of the regular files of a bundle directory (edgefp's marker excluded)."""
    entries = {}
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if name != MARKER and os.path.isfile(full):
            entries[name] = (full, os.path.getsize(full))
    return entries


def _archive_entries(handle, path: str) -> dict[str, tuple[int, int]]:
    """name -> (offset, size) of the members of an uncompressed tar, from its headers alone: anything but
    plain, uniquely named regular files within the file is refused (pax headers are skipped, as the
    firmware skips them)."""
    total = handle.seek(0, os.SEEK_END)
    handle.seek(0)
    head = handle.read(6)
    for magic, kind in COMPRESSION.items():
        if head.startswith(magic):
            raise EdgefpError(
                f"{path}: a {kind}-compressed archive; a bundle archive is an uncompressed tar "
                "(write one with 'edgefp convert ... --out NAME.efp')"
            )
    entries, offset = {}, 0
    while offset < total:
        handle.seek(offset)
        header = handle.read(TAR_BLOCK)
        if len(header) < TAR_BLOCK:
            raise EdgefpError(f"{path}: not a readable bundle archive (truncated)")
        if header[0] == 0:
            break
        size, checksum = _octal(header[124:136]), _octal(header[148:156])
        if checksum != sum(header[:148]) + 8 * ord(" ") + sum(header[156:]) or size is None:
            raise EdgefpError(f"{path}: not a readable bundle archive (a damaged tar header)")
        start = offset + TAR_BLOCK
        if size > total - start:
            raise EdgefpError(f"{path}: not a readable bundle archive (a member runs past the end)")
        offset = start + -(-size // TAR_BLOCK) * TAR_BLOCK
        kind = header[156:157]
        if kind in (b"x", b"g"):
            continue
        name = header[:100].split(b"\0")[0].decode("utf-8", "replace")
        prefix = header[345:500].split(b"\0")[0] if header[257:262] == b"ustar" else b""
        if kind not in (b"0", b"\0") or prefix or not (name == MANIFEST or FILE_RE.fullmatch(name)):
            raise EdgefpError(f"{path}: unexpected entry '{name[:60]}' in the bundle archive")
        if name in entries:
            raise EdgefpError(f"{path}: the bundle archive holds '{name}' twice")
        if len(entries) > MAX_FILES + 1:  # the manifest, its signature and the files it lists
            raise EdgefpError(f"{path}: the bundle archive holds more than {MAX_FILES + 2} files")
        entries[name] = (start, size)
    return entries


def _octal(field: bytes) -> int | None:
    """A numeric tar field: spaces, octal digits, then only NULs and spaces (None when it is not)."""
    digits = field.lstrip(b" ").rstrip(b" \0")
    if not all(48 <= c <= 55 for c in digits):
        return None
    return int(digits or b"0", 8)


def _read_entry(handle, entry) -> bytes:
    """The bytes of an entry of :func:`_directory_entries` (handle None) or :func:`_archive_entries`."""
    where, size = entry
    if handle is None:
        with open(where, "rb") as file:
            return file.read(size)
    handle.seek(where)
    return handle.read(size)


def is_archive(path: str) -> bool:
    """Whether ``path`` holds a bundle archive (what ``--force`` may replace)."""
    try:
        Bundle.read(path)
    except EdgefpError:
        return False
    return True


def check_output(out: str, *, force: bool) -> str:
    """Where a bundle archive may be written: a new path, or with ``force`` a bundle archive."""
    return check_file_output(out, force=force, written_by_edgefp=is_archive, kind="bundle archive")
