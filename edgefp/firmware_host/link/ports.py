"""The serial ports of this machine, and which of them answer the edgefp handshake."""

from __future__ import annotations

import contextlib

from edgefp.errors import EdgefpError

PROBE_TIMEOUT_S = 0.3


def list_ports(*, probe: bool = False) -> list[dict]:
    """Each serial port with its USB VID:PID, serial number and description, sorted by name; with
    ``probe``, also ``edgefp``: the board and runtime of an edgefp device answering there, and whether it
    requires a key, else None (every port probed at once)."""
    from serial.tools.list_ports import comports

    from edgefp.firmware_host.link.fanout import on_each

    found = [
        {
            "port": port.device,
            "vid_pid": f"{port.vid:04x}:{port.pid:04x}" if port.vid is not None else None,
            "serial_number": port.serial_number,
            "description": port.description,
        }
        for port in sorted(comports(), key=lambda p: p.device)
    ]
    if probe:
        for entry, outcome in zip(found, on_each([entry["port"] for entry in found], _probe)):
            entry["edgefp"] = outcome.result
    return found


def answering() -> list[str]:
    """The serial ports where an edgefp device answers the handshake, sorted by name."""
    return [entry["port"] for entry in list_ports(probe=True) if entry["edgefp"]]


def _probe(url: str, _progress) -> dict | None:
    """The board and runtime of the edgefp device answering HELLO at ``url`` (one that asks for a key
    answered too), else None."""
    from edgefp.firmware_host.link.client import Device, hello, open_port

    try:
        with Device(open_port(url), url=url, timeout=PROBE_TIMEOUT_S, retries=1) as device:
            with contextlib.suppress(EdgefpError):  # HELLO answered (device.info) and no key given: still edgefp
                hello(device)
    except EdgefpError:
        return None
    found = device.info
    return found and {"board": found.board, "runtime": found.runtime, "key_required": found.auth_required}
