"""A simulated sensor: raw samples handed to a device at a fixed rate, drifting from sample N on (a
shift of the same samples, or other data: a class the model has never seen), and staying drifted.

The agent takes each sample through :meth:`~edgefp.firmware_host.device.agent.Agent.classify`; the C firmware
(``edgefp sim --profile qemu-m4`` or ``native``) reads them from its sensor link, a byte stream of
frames (:func:`sensor_frames`, docs/sensors.md).
"""

from __future__ import annotations

import logging
import struct
import threading
import time

import numpy as np

from edgefp import shifts
from edgefp.errors import EdgefpError, option
from edgefp.firmware_host.link.framing import DELIMITER, encode_frame

log = logging.getLogger(__name__)
SENSOR_FRAME = 0x40  # frame type of the sensor link
SENSOR_ASK = 0x3F  # the byte a chip sends on its sensor link for the next window
VALUES_PER_FRAME = 256  # float32 values per sensor frame (1,032-byte payloads: any firmware frame holds them)


def feed_samples(
    x: np.ndarray, drift_at: int | None = None, drift: str | None = None, then: np.ndarray | None = None, seed: int = 0
) -> tuple[np.ndarray, int]:
    """The samples a simulated sensor replays, and where the replay starts again after the last one:
    ``x``, from ``drift_at`` on shifted by ``drift`` (see edgefp.shifts) or replaced by ``then``."""
    if drift_at is None:
        return x, 0
    if then is not None:
        if then.shape[1:] != x.shape[1:]:
            raise EdgefpError(
                f"{option('drift_to')} has samples of {then.shape[1:]}, {option('feed')} of {x.shape[1:]}; "
                "they must match"
            )
        return np.concatenate([x[:drift_at], then]).astype(np.float32), min(drift_at, len(x))
    if drift is None or drift_at >= len(x):
        return x, 0
    out = x.astype(np.float32).copy()
    out[drift_at:] = shifts.apply(x[drift_at:], drift, seed)
    return out, drift_at


def run_feed(send, x: np.ndarray, rate_hz: float, stop: threading.Event, *, repeat_from: int = 0, ready=None) -> None:
    """Call ``send(sample)`` for each raw sample at ``rate_hz`` until ``stop`` is set, starting again at
    ``repeat_from`` after the last one (``None``: stop after the last). While ``ready()`` is false (no
    bundle active) the sensor waits, so that the first sample read is the first of ``x``."""
    period, index, deadline = 1.0 / rate_hz, 0, time.monotonic()
    while not stop.is_set():
        if ready is not None and not ready():
            stop.wait(0.1)
            deadline = time.monotonic()
            continue
        if index == len(x):
            if repeat_from is None:
                return
            index = repeat_from
        send(x[index])
        index += 1
        deadline += period
        stop.wait(max(0.0, deadline - time.monotonic()))


def sensor_frames(window: np.ndarray, number: int) -> bytes:
    """One window of raw values as sensor-link frames: ``offset:u32 | float32 values`` each, the
    window's number as seq."""
    values = np.ascontiguousarray(window, dtype="<f4").ravel()
    out = b""
    for offset in range(0, values.size, VALUES_PER_FRAME):
        body = struct.pack("<I", offset) + values[offset : offset + VALUES_PER_FRAME].tobytes()
        out += DELIMITER + encode_frame(SENSOR_FRAME, number & 0xFFFF, body)
    return out


def feed_agent(agent, x: np.ndarray, rate_hz: float, *, repeat_from: int = 0) -> threading.Event:
    """Replay ``x`` into ``agent`` as its sensor from a background thread; set the returned event to stop.
    A window the active bundle refuses (another shape) is skipped, with one warning logged per bundle."""
    stop, warned = threading.Event(), set()

    def send(sample: np.ndarray) -> None:
        try:
            agent.classify(sample)
        except EdgefpError as exc:
            bundle = agent.bundle
            if bundle is not None and bundle.manifest.name not in warned:
                warned.add(bundle.manifest.name)
                log.warning("the sensor's samples do not fit %s: %s", bundle.manifest.name, exc)

    options = {"repeat_from": repeat_from, "ready": lambda: agent.bundle is not None}
    threading.Thread(target=run_feed, args=(send, x, rate_hz, stop), kwargs=options, daemon=True).start()
    return stop
