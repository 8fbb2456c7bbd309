"""Run a firmware build as a device, each reachable at a URL like any other device, with a sensor the
host drives (the sensor link of docs/sensors.md): under QEMU (the board's launcher :class:`Qemu`: the
second UART) or as a process on this machine (:class:`Native`: a socket). Boards name their launcher
in edgefp/firmware_host/boards.py.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefp.errors import EdgefpError
from edgefp.firmware_host.boards import BOARDS, get_board
from edgefp.firmware_host.device.feed import SENSOR_ASK, run_feed, sensor_frames
from edgefp.firmware_host.firmware.build import build

QEMU = "qemu-system-arm"
START_TIMEOUT_S = 20.0


@dataclass
class Emulated:
    """A firmware running as a device: ``url`` is what hosts open."""

    url: str
    process: subprocess.Popen
    keep: tuple[int, ...] = ()  # file descriptors to close at the end
    scratch: str | None = None  # a flash file to remove at the end
    sensor: int | None = None  # the host's end of the chip's sensor link
    feeding: threading.Event | None = None  # set to stop the sensor

    def __enter__(self) -> Emulated:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def feed(self, x: np.ndarray, rate_hz: float, *, repeat_from: int | None = 0) -> None:
        """Be the chip's sensor from a background thread: answer each window it asks for with the next
        raw sample of ``x``, at ``rate_hz`` at most (see :func:`edgefp.firmware_host.device.feed.run_feed`)."""
        if self.sensor is None:
            raise EdgefpError("this firmware has no sensor link")
        self.feeding = threading.Event()
        numbers = iter(range(1 << 62))
        send = lambda window: self._send(sensor_frames(window, next(numbers)))  # noqa: E731
        options = {"repeat_from": repeat_from, "ready": self._asked}
        threading.Thread(target=run_feed, args=(send, x, rate_hz, self.feeding), kwargs=options, daemon=True).start()

    def _asked(self) -> bool:
        """Whether the chip asked for a window (what else it sent is dropped); stops the sensor when it is gone."""
        try:
            while select.select([self.sensor], [], [], 0)[0]:
                data = os.read(self.sensor, 4096)
                if not data:
                    raise OSError("the chip is gone")
                if bytes([SENSOR_ASK]) in data:
                    return True
        except OSError:
            self.feeding.set()
        return False

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self.feeding.is_set():
            try:
                if select.select([], [self.sensor], [], 0.1)[1]:
                    view = view[os.write(self.sensor, view) :]
            except OSError:
                self.feeding.set()

    def kill(self) -> None:
        """Pull the power: the process ends at once, whatever it was doing."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def close(self) -> None:
        if self.feeding is not None:
            self.feeding.set()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()
        for fd in self.keep:
            os.close(fd)
        self.keep, self.sensor = (), None
        if self.scratch and os.path.exists(self.scratch):
            os.remove(self.scratch)


def can_start(board_name: str) -> bool:
    """Whether this machine can build the board's firmware and run it."""
    board = get_board(board_name)
    if board.launcher is None:
        return False
    return all(shutil.which(tool) for tool in ("make", board.toolchain.compiler, *board.launcher.tools))


def can_emulate() -> bool:
    """Whether this machine can build and run the firmware on an emulated chip (QEMU)."""
    return any(board.instructions_per_us and can_start(name) for name, board in BOARDS.items())


def start_qemu(elf: Path, machine: str = "mps2-an386", *, tcp_port: int | None = None) -> Emulated:
    """Run a firmware ELF on QEMU's ``machine`` with -icount shift=0 (one instruction = one virtual ns).

    UART0 is a new pty (its path is the URL), or a TCP server on 127.0.0.1 with ``tcp_port``; UART1,
    the sensor link, is another pty.
    """
    if shutil.which(QEMU) is None:
        raise EdgefpError(f"{QEMU} is not installed (Debian: apt-get install qemu-system-arm)")
    serial = "pty" if tcp_port is None else f"tcp:127.0.0.1:{tcp_port},server=on,wait=off"
    command = [QEMU, "-M", machine, "-nographic", "-monitor", "none", "-serial", serial, "-serial", "pty"]
    command += ["-icount", "shift=0", "-kernel", str(elf)]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline, seen, ptys = time.monotonic() + START_TIMEOUT_S, b"", {}
    while time.monotonic() < deadline and len(ptys) < (2 if tcp_port is None else 1):
        line = process.stdout.readline()
        seen += line
        found = re.search(rb"char device redirected to (\S+) \(label (\w+)\)", line)
        if found:  # held open here: QEMU reads a pty at once only while its other side is open
            held = os.open(found.group(1), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            tty.setraw(held)
            ptys[found.group(2).decode()] = (found.group(1).decode(), held)
        if not line and process.poll() is not None:
            break
    if "serial1" in ptys and ("serial0" in ptys or tcp_port is not None):
        url = f"socket://127.0.0.1:{tcp_port}" if tcp_port is not None else ptys["serial0"][0]
        return Emulated(url, process, keep=tuple(fd for _, fd in ptys.values()), sensor=ptys["serial1"][1])
    process.kill()
    for _, fd in ptys.values():
        os.close(fd)
    raise EdgefpError(f"QEMU did not start: {seen.decode(errors='replace').strip()[-300:]}")


def start_native(executable: Path, flash_file: str | None = None) -> Emulated:
    """Run the native build as a device on a new pty; its flash is ``flash_file`` (kept across runs; a new
    one removed at the end when none is given), its sensor link a socket."""
    scratch = None if flash_file else scratch_flash()
    flash_file = flash_file or scratch
    master, slave = os.openpty()
    tty.setraw(slave)
    host_end, chip_end = socket.socketpair()
    env = {**os.environ, "EFP_FLASH_FILE": flash_file, "EFP_SENSOR_FD": str(chip_end.fileno())}
    process = subprocess.Popen(
        [str(executable)], stdin=master, stdout=master, env=env, close_fds=True, pass_fds=(chip_end.fileno(),)
    )
    os.close(master)
    chip_end.close()
    sensor = host_end.detach()
    return Emulated(os.ttyname(slave), process, keep=(slave, sensor), scratch=scratch, sensor=sensor)


def scratch_flash() -> str:
    """A new, empty flash file for a native device."""
    handle, path = tempfile.mkstemp(prefix="edgefp-flash-", suffix=".bin")
    os.close(handle)
    os.remove(path)
    return path


def start(board_name: str, *, tcp: bool = False, flash_file: str | None = None, trust: bytes | None = None) -> Emulated:
    """Build (if needed) and start the firmware of a board with a launcher as a device; with ``trust`` (a raw
    Ed25519 public key) built in, so that it accepts only bundles signed with it."""
    board = get_board(board_name)
    if board.launcher is None:
        runnable = ", ".join(name for name, other in BOARDS.items() if other.launcher)
        raise EdgefpError(f"{board.name} cannot run here as a device; choose one of {runnable}")
    from edgefp.firmware_host.firmware.build import Options

    cflags = Options(trust=trust).cflags()
    return board.launcher.start(build(board_name, cflags=cflags), tcp=tcp, flash_file=flash_file)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
