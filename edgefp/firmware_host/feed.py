"""A simulated sensor: replay samples into an agent at a fixed rate, optionally drifting from sample N on."""

from __future__ import annotations

import threading
import time

import numpy as np

from edgefp import shifts


def drifted(x: np.ndarray, drift_at: int | None, drift: str | None, seed: int = 0) -> np.ndarray:
    """``x`` with samples from index ``drift_at`` on shifted by ``drift`` (see edgefp.shifts)."""
    if drift is None or drift_at is None or drift_at >= len(x):
        return x
    out = x.astype(np.float32).copy()
    out[drift_at:] = shifts.apply(x[drift_at:], drift, seed)
    return out


def run_feed(agent, x: np.ndarray, rate_hz: float, stop: threading.Event, *, repeat: bool = True) -> None:
    """Feed raw samples to ``agent.observe`` at ``rate_hz`` (waiting while no bundle is active) until
    ``stop`` is set, or the samples run out when not ``repeat``. Each reading is counted, buffered when
    OOD and sent as an event to a subscribed host, as on a device reading its sensor."""
    period, index, deadline = 1.0 / rate_hz, 0, time.monotonic()
    while not stop.is_set():
        bundle = agent.bundle
        if bundle is None:
            stop.wait(0.1)
            continue
        if index == len(x):
            if not repeat:
                return
            index = 0
        agent.observe(bundle.quantize(x[index : index + 1])[0])
        index += 1
        deadline += period
        stop.wait(max(0.0, deadline - time.monotonic()))
