"""Following a device's inferences live, reconnecting when the device resets or the link drops."""

from __future__ import annotations

import time
from dataclasses import asdict

from edgefp.firmware_host.link import client
from edgefp.firmware_host.link.reconnect import reconnecting

KEEPALIVE_S = 2.0  # idle this long: subscribe again (a device that reset has forgotten the subscription)


def follow(
    url: str,
    on_event,
    *,
    key: bytes | None = None,
    stop=None,
    count: int | None = None,
    duration: float | None = None,
) -> int:
    """Call ``on_event(dict)`` for each inference the device reports until ``stop()`` is true, ``count``
    events were seen or ``duration`` seconds passed; the link going and coming back is logged
    (:mod:`~edgefp.firmware_host.link.reconnect`). Returns the number of events seen."""
    seen, end = 0, None if duration is None else time.monotonic() + duration

    def done() -> bool:
        return (
            (stop is not None and stop())
            or (count is not None and seen >= count)
            or (end is not None and time.monotonic() >= end)
        )

    def work(device) -> None:
        nonlocal seen
        client.subscribe(device)
        idle_since = time.monotonic()
        while not done():
            event = device.read_event(0.2)
            if event is None:
                if time.monotonic() - idle_since > KEEPALIVE_S:
                    client.subscribe(device)
                    idle_since = time.monotonic()
                continue
            seen, idle_since = seen + 1, time.monotonic()
            on_event({"received": time.time(), **asdict(event)})

    reconnecting(url, work, key=key, done=done)
    return seen
