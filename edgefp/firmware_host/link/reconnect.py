"""One reconnect policy for everything that follows a device over time (``monitor``, ``record``, ``watch``):
open the device, work, and when the link drops, say so, wait and open it again."""

from __future__ import annotations

import logging
import time

from edgefp.errors import EdgefpError
from edgefp.firmware_host.link import client
from edgefp.firmware_host.link.protocol import Err

log = logging.getLogger(__name__)
RETRY_S = 1.0
# Refusals a new session cures: a device that reset has forgotten the authentication, and a frame it
# could not read was garbled on the way. Every other refusal would only come again.
SESSION_ERRORS = {Err.AUTH_REQUIRED, Err.BAD_FRAME}


def retryable(exc: BaseException) -> bool:
    """Whether reconnecting may cure ``exc``: the link's faults (it dropped, no answer came, the port
    is gone for now) and a forgotten session are; the device's other refusals, and what the host finds
    wrong with the device's answers (no bundle, another protocol version, a bad manifest), are not."""
    if isinstance(exc, client.DeviceError):
        return exc.code in SESSION_ERRORS
    return isinstance(exc, (client.LinkError, OSError))


def reconnecting(url: str, work, *, key: bytes | None = None, done=None, retry_s: float = RETRY_S, sleep=time.sleep):
    """Open the device at ``url`` and return ``work(device)``; while the link keeps dropping (and ``done()``
    is not true), log it, wait ``retry_s`` seconds and open the device again. A device never reached (a
    wrong URL or key) and an error reconnecting cannot cure are raised at once. Returns None when
    ``done()`` became true while the link was down."""
    connected, lost = False, False
    while not (done is not None and done()):
        try:
            with client.open_device(url, key=key) as device:
                if lost:
                    log.info("reconnected to %s", url)
                connected, lost = True, False
                return work(device)
        except (EdgefpError, OSError) as exc:
            if not connected or not retryable(exc):
                raise
            if not lost:
                log.info("link to %s lost (%s); reconnecting", url, str(exc).splitlines()[0])
            lost = True
            sleep(retry_s)
    return None
