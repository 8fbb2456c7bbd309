"""Running a device in this process: the agent served on a serial port, TCP or a new pty, and the
simulated boards of ``edgefp sim`` (the agent with a board profile, or the C firmware built and started)."""

from __future__ import annotations

import contextlib
import tempfile

import numpy as np

from edgefp.errors import EdgefpError, option


def serve(agent, *, serial_path: str | None = None, tcp: str | None = None, samples_address=None, on_address=None):
    """Serve ``agent`` until the process ends: on the serial port ``serial_path``, on ``tcp`` (HOST:PORT),
    or (neither) on a new pty. With ``samples_address`` it also takes sensor windows there. Each address
    opened is told to ``on_address(what, address)``: ``("samples", ...)`` first, then ``("url", ...)``,
    the URL a host opens."""
    from edgefp.firmware_host.device import agent as agent_module
    from edgefp.firmware_host.device.samples import SampleServer
    from edgefp.firmware_host.link.transport import open_pty

    def announce(what: str, address: str) -> None:
        if on_address:
            on_address(what, address)

    with contextlib.ExitStack() as opened:  # the sample socket's file goes when serving ends, however it ends
        if samples_address is not None:
            announce("samples", opened.enter_context(SampleServer(agent, samples_address)).address)
        if tcp is not None:
            host, _, port_text = tcp.rpartition(":")
            if not host or not port_text.isdigit():
                raise EdgefpError(f"{option('tcp')} must be HOST:PORT, got '{tcp}'")
            server = agent_module.listen_tcp(agent, host, int(port_text))
            announce("url", f"socket://{host}:{server.getsockname()[1]}")
            agent_module.serve_tcp(agent, server)
            return
        if serial_path is not None:
            import serial

            try:
                port = serial.Serial(serial_path, timeout=0)
            except serial.SerialException as exc:
                raise EdgefpError(f"cannot open {serial_path}: {exc}") from None
        else:
            port, path = open_pty()
            announce("url", path)
        agent.serve(port)


def simulate(
    profile: str,
    *,
    tcp: bool = False,
    data_dir: str | None = None,
    sensor: tuple[np.ndarray, int] | None = None,
    rate: float = 10.0,
    samples_address=None,
    on_address=None,
    trust: bytes | None = None,
) -> None:
    """Act as a board of ``profile`` until the process ends: the agent with the profile's runtime and
    budgets (slots in ``data_dir``, else a temporary directory), or for a tested firmware port the C
    firmware itself; with ``trust`` (a raw Ed25519 public key) either accepts only bundles signed with it.
    ``sensor`` (samples, index to repeat from; :func:`~edgefp.firmware_host.device.feed.feed_samples`)
    is replayed at ``rate`` Hz as a live sensor. The URL is told to ``on_address("url", url)``."""
    from edgefp.firmware_host.boards import get_board
    from edgefp.firmware_host.device.agent import Agent
    from edgefp.firmware_host.device.feed import feed_agent
    from edgefp.firmware_host.firmware.launch import start

    if get_board(profile).launcher is not None:
        if data_dir or samples_address:
            raise EdgefpError(
                f"{option('data_dir')} and {option('samples_address')} are for simulated boards; "
                f"{profile} keeps bundles in flash"
            )
        with start(profile, tcp=tcp, trust=trust) as device:
            if on_address:
                on_address("url", device.url)
            if sensor is not None:
                device.feed(sensor[0], rate, repeat_from=sensor[1])
            device.process.wait()
        return
    with tempfile.TemporaryDirectory(prefix="edgefp-sim-", ignore_cleanup_errors=True) as scratch:
        agent = Agent(data_dir or scratch, profile, trust=trust)
        if sensor is not None:
            feed_agent(agent, sensor[0], rate, repeat_from=sensor[1])
        tcp_address = "127.0.0.1:0" if tcp else None
        serve(agent, tcp=tcp_address, samples_address=samples_address, on_address=on_address)
