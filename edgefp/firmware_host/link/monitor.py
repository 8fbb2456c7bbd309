"""Following a device's inferences live, reconnecting when the device resets or the link drops."""

from __future__ import annotations

import time
from dataclasses import asdict

from edgefp.errors import EdgefpError
from edgefp.firmware_host.link import client

KEEPALIVE_S = 2.0  # idle this long: subscribe again (a device that reset has forgotten the subscription)
RETRY_S = 1.0


def follow(
    url: str,
    on_event,
    on_status,
    *,
    key: bytes | None = None,
    stop=None,
    count: int | None = None,
    duration: float | None = None,
) -> int:
    """Call ``on_event(dict)`` for each inference the device reports and ``on_status(str)`` when the
    link goes or comes back, until ``stop()`` is true, ``count`` events were seen or ``duration``
    seconds passed. Returns the number of events seen."""
    seen, end = 0, None if duration is None else time.monotonic() + duration

    def done() -> bool:
        return (
            (stop is not None and stop())
            or (count is not None and seen >= count)
            or (end is not None and time.monotonic() >= end)
        )

    connected = None
    while not done():
        try:
            with client.open_device(url, key=key) as device:
                client.subscribe(device)
                if connected is not None:
                    on_status(f"reconnected to {url}")
                connected, idle_since = True, time.monotonic()
                while not done():
                    event = device.read_event(0.2)
                    if event is None:
                        if time.monotonic() - idle_since > KEEPALIVE_S:
                            client.subscribe(device)
                            idle_since = time.monotonic()
                        continue
                    seen, idle_since = seen + 1, time.monotonic()
                    on_event({"received": time.time(), **asdict(event)})
        except (EdgefpError, OSError) as exc:
            if connected is None:  # never reached: a wrong port or key, said at once
                raise
            if connected is not False:
                on_status(f"link to {url} lost ({str(exc).splitlines()[0]}); reconnecting")
            connected = False
            time.sleep(RETRY_S)
    return seen
