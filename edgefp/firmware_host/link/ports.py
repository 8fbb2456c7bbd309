"""The serial ports of this machine, and which of them answer the edgefp handshake."""

from __future__ import annotations

from edgefp.errors import EdgefpError

PROBE_TIMEOUT_S = 0.3


def list_ports(*, probe: bool = False) -> list[dict]:
    """Each serial port with its USB VID:PID, serial number and description, sorted by name; with
    ``probe``, also ``edgefp``: the board and runtime of an edgefp device answering there, else None
    (every port probed at once)."""
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
    from edgefp.firmware_host.link.client import open_device

    try:
        with open_device(url, timeout=PROBE_TIMEOUT_S, retries=1) as device:
            return {"board": device.info.board, "runtime": device.info.runtime}
    except EdgefpError:
        return None
