"""Recording a device's inputs into a data file: every input, or only those flagged OOD, read from the
device's sample log (READ_LOG, docs/protocol.md) by input number, so that a dropped link or a restarted
recorder neither loses nor repeats one.

The file is a data file the trainer reads (``x``, the raw samples, N first) with what the device said
about each sample beside it (the score file's ``pred``, ``probs``, ``ood_score``, ``is_ood``,
``layer_errors``, and each layer's ``evidence``, its part of the score), where it came from (``input``,
``session``, ``timestamp_ms``, ``model``, ``raw``: false where only the int8 input was known) and the
model's classes (``model_label_values``, ``model_label_names``).
It is rewritten atomically every second or so; running the same command again continues where the file
ends (``read_until`` in ``session``).
"""

from __future__ import annotations

import io
import logging
import os
import time
import zipfile
from dataclasses import dataclass, field

import numpy as np

from edgefp.bundle import Bundle
from edgefp.data import dequantize, to_raw
from edgefp.errors import EdgefpError, option
from edgefp.firmware_host.link import client
from edgefp.firmware_host.link.protocol import DataKind
from edgefp.firmware_host.link.reconnect import reconnecting
from edgefp.fsutil import atomic_directory, check_directory_output, check_file_output, write_file_atomic
from edgefp.ood import SCORE_UNIT

log = logging.getLogger(__name__)
SAVE_EVERY_S = 1.0
POLL_S = 0.05
OOD_SAMPLES_KIND = "OOD samples directory"
COLUMNS = ("x", "input", "session", "timestamp_ms", "pred", "probs", "ood_score", "is_ood", "layer_errors")
COLUMNS += ("evidence", "raw", "model")


@dataclass
class Recording:
    """The samples recorded so far, and where reading stopped."""

    path: str
    columns: dict[str, list] = field(default_factory=lambda: {name: [] for name in COLUMNS})
    session: int | None = None
    read_until: int = 0  # the last input number read (or skipped as not flagged) in ``session``
    layer_names: list[str] = field(default_factory=list)
    labels: list[dict] = field(default_factory=list)  # the (latest) model's labels: value and name
    lost: int = 0  # inputs the device's log dropped before they were read

    def __len__(self) -> int:
        return len(self.columns["input"])

    @classmethod
    def open(cls, path: str, *, force: bool = False) -> Recording:
        """The recording in ``path`` to continue, or a new one when there is no file yet (or, with
        ``force``, in place of the recording there). Any other file there is refused."""
        full = check_file_output(path, force=True, written_by_edgefp=is_recording, kind="recording")
        recording = cls(full)
        if force or not os.path.exists(full):
            return recording
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}
            for name in COLUMNS:
                recording.columns[name] = list(arrays[name])
            recording.session, recording.read_until = int(arrays["read_session"]), int(arrays["read_until"])
            recording.layer_names = [str(name) for name in arrays["layer_names"]]
            recording.labels = [
                {"value": int(value), "name": str(name)}
                for value, name in zip(arrays["model_label_values"], arrays["model_label_names"])
            ]
            recording.lost = int(arrays["lost"])
        except (OSError, ValueError, KeyError) as exc:
            raise EdgefpError(
                f"{path}: not a recording to continue ({exc}); choose another {option('out')}, "
                f"or pass {option('force')} to start over"
            ) from None
        return recording

    def add(self, page, bundle: Bundle) -> None:
        """Append the page's entry, scored with the manifest of the bundle that produced it."""
        entry, spec = page.entry, bundle.manifest.input
        shape = spec.shape
        expected = int(np.prod(shape)) * (4 if entry.kind == DataKind.RAW else 1)
        if len(entry.data) != expected:
            raise EdgefpError(f"input {entry.input} came with {len(entry.data)} bytes; {shape} needs {expected}")
        if entry.kind == DataKind.RAW:
            x = np.frombuffer(entry.data, "<f4").reshape(shape)
        else:
            x = to_raw(np.frombuffer(entry.data, np.int8).reshape(shape), spec)
        if self.columns["x"] and self.columns["x"][0].shape != shape:
            raise EdgefpError(
                f"the device now runs {bundle.manifest.name}, whose input is {shape}, but {self.path} holds "
                f"samples of {self.columns['x'][0].shape}; record into another {option('out')}"
            )
        scores = bundle.decide(entry.result.probs[None], entry.result.errors[None])
        row = {
            "x": x.astype(np.float32),
            "input": entry.input,
            "session": page.session,
            "timestamp_ms": entry.timestamp_ms,
            "pred": scores.pred[0],
            "probs": scores.probs[0],
            "ood_score": scores.ood_score[0],
            "is_ood": scores.is_ood[0],
            "layer_errors": scores.layer_errors[0],
            "evidence": bundle.layer_evidence(entry.result.errors[None])[0] / SCORE_UNIT,
            "raw": entry.kind == DataKind.RAW,
            "model": bundle.manifest.name,
        }
        for name, value in row.items():
            self.columns[name].append(value)
        self.layer_names = [layer.name for layer in bundle.manifest.layers]
        self.labels = [{"value": label.value, "name": label.name} for label in bundle.manifest.labels]
        self.read_until = entry.input

    def save(self) -> None:
        """Rewrite the file atomically."""
        if not self.columns["x"]:
            return
        arrays = {name: np.stack(self.columns[name]).astype(np.float32) for name in ("x", "probs", "layer_errors")}
        arrays["evidence"] = np.stack(self.columns["evidence"]).astype(np.float32)
        kinds = {"input": np.int64, "session": np.uint32, "timestamp_ms": np.int64, "pred": np.int64}
        kinds.update(ood_score=np.float32, is_ood=bool, raw=bool)
        arrays.update({name: np.asarray(self.columns[name], dtype) for name, dtype in kinds.items()})
        arrays["model"] = np.asarray(self.columns["model"], dtype=str)
        arrays["layer_names"] = np.asarray(self.layer_names, dtype=str)
        arrays["model_label_values"] = np.asarray([label["value"] for label in self.labels], np.int64)
        arrays["model_label_names"] = np.asarray([label["name"] for label in self.labels], dtype=str)
        arrays.update(read_session=np.uint32(self.session), read_until=np.int64(self.read_until))
        arrays["lost"] = np.int64(self.lost)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_file_atomic(self.path, buffer.getvalue())


def is_recording(path: str) -> bool:
    """Whether ``path`` is a data file ``edgefp record`` wrote."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {"read_session", "read_until", "x"} <= set(npz.files)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False


def record(
    url: str,
    out: str,
    *,
    force: bool = False,
    count: int | None = None,
    ood_only: bool = False,
    duration: float | None = None,
    key: bytes | None = None,
    on_sample=None,
    stop=None,
) -> dict:
    """Record the device at ``url`` into ``out`` until the file holds ``count`` samples, ``duration``
    seconds passed or ``stop()`` is true, reconnecting when the link drops
    (:mod:`~edgefp.firmware_host.link.reconnect`). ``on_sample(recording)`` is called after each sample;
    inputs lost and restarts of the device's numbering are logged. ``force`` starts ``out`` over when it
    holds an earlier recording. Returns a report."""
    recording = Recording.open(out, force=force)
    start, recorded_before, lost_before = time.monotonic(), len(recording), recording.lost
    end = None if duration is None else start + duration
    last_save = start

    def done() -> bool:
        return (
            (stop is not None and stop())
            or (count is not None and len(recording) >= count)
            or (end is not None and time.monotonic() >= end)
        )

    def work(device) -> None:
        nonlocal last_save
        while not done():
            if _read_one(device, recording, ood_only):
                if on_sample:
                    on_sample(recording)
            else:
                time.sleep(POLL_S)
            if time.monotonic() - last_save >= SAVE_EVERY_S:
                recording.save()
                last_save = time.monotonic()

    try:
        reconnecting(url, work, key=key, done=done)
    finally:
        recording.save()
    seconds = time.monotonic() - start
    new = len(recording) - recorded_before
    flagged = int(np.sum(recording.columns["is_ood"])) if len(recording) else 0
    return {
        "port": url,
        "out": out,
        "samples": len(recording),
        "recorded": new,
        "flagged": flagged,
        "lost": recording.lost - lost_before,
        "seconds": round(seconds, 3),
        "samples_per_s": round(new / seconds, 2) if seconds > 0 else None,
        "ood_only": ood_only,
    }


def _read_one(device, recording: Recording, ood_only: bool) -> bool:
    """Read the next sample into ``recording``; False when the device has none yet."""
    page = client.read_log(device, recording.read_until, ood_only)
    if page.session != recording.session:  # a new bundle, a reset or a restart: numbering starts over
        client.hello(device)  # the active bundle may have changed with it
        if recording.session is None:  # a new recording starts with the oldest input the device holds
            recording.read_until = page.first - 1
        else:
            recording.read_until = 0
            log.info("the device started numbering its inputs over (a new bundle, a reset or a restart)")
        recording.session = page.session
        page = client.read_log(device, recording.read_until, ood_only)
    gap = page.first - recording.read_until - 1
    if gap > 0:
        recording.lost += gap
        recording.read_until = page.first - 1
        log.info("%d inputs left the device's log before they were read (it holds %d)", gap, page.capacity)
    if page.entry is None:
        if ood_only:  # nothing flagged up to the newest input: no need to look there again
            recording.read_until = max(recording.read_until, page.seen)
        return False
    recording.add(page, Bundle(client.manifest(device), {}, source=device.url))
    return True


def pull_ood(device, out: str, *, force: bool = False) -> dict:
    """Write the device's recent OOD inputs, with their scores, to ``out``/ood.npz (``x_int8`` as the
    device holds them, ``x`` the model's float input, ``ood_score``, ``pred``, ``timestamp_ms``); ``force``
    replaces an earlier such directory. Returns a report."""
    check_directory_output(out, OOD_SAMPLES_KIND, force=force)  # before talking to the device
    samples = client.pull_ood(device)
    spec = client.manifest(device).input
    x_q = np.stack([sample["x"] for sample in samples]) if samples else np.zeros((0, *spec.shape), np.int8)
    with atomic_directory(out, OOD_SAMPLES_KIND, force=force) as tmp:
        np.savez(
            os.path.join(tmp, "ood.npz"),
            x_int8=x_q,
            x=dequantize(x_q, spec),
            ood_score=np.array([sample["score"] for sample in samples], np.float32),
            pred=np.array([sample["pred"] for sample in samples], np.int64),
            timestamp_ms=np.array([sample["timestamp_ms"] for sample in samples], np.int64),
        )
    return {"port": device.url, "samples": len(samples), "out": os.path.join(out, "ood.npz")}
