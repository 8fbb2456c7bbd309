"""Byte pipes with pyserial's interface (``read``, ``write``, ``in_waiting``, ``timeout``, ``close``) for
the device side (a pty master, an accepted TCP connection) and a fault-injecting wrapper for tests.

Hosts open devices with ``serial.serial_for_url`` (client.open_device); these are what an agent serves.
"""

from __future__ import annotations

import fcntl
import os
import random
import select
import struct
import termios
import time
import tty
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported by the one class that uses it: a host on a serial port or pty needs no sockets
    import socket

READ_SIZE = 65536


def _pending(fileno: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fileno, termios.FIONREAD, b"\0\0\0\0"))[0]


def read_some(port, wait: float) -> bytes:
    """What ``port`` holds once anything arrives within ``wait`` seconds, without waiting for more.

    The port must have ``timeout = 0`` (non-blocking reads); ports without ``fileno`` (``loop://``) are polled.
    """
    fileno = getattr(port, "fileno", None)
    if fileno is None:
        deadline = time.monotonic() + wait
        while not port.in_waiting and time.monotonic() < deadline:
            time.sleep(0.001)
    elif not select.select([fileno()], [], [], wait)[0]:
        return b""
    return port.read(READ_SIZE)


class FdPort:
    """A file descriptor (a pty master) as a port. Reading after the other side is gone raises OSError."""

    def __init__(self, fd: int, timeout: float | None = 0.0, keep: tuple[int, ...] = ()):
        self.fd, self.timeout, self._keep = fd, timeout, keep

    def fileno(self) -> int:
        return self.fd

    @property
    def in_waiting(self) -> int:
        return _pending(self.fd)

    def read(self, size: int = 1) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], self.timeout)
        return os.read(self.fd, size) if ready else b""

    def write(self, data: bytes) -> int:
        view = memoryview(bytes(data))
        while view:
            view = view[os.write(self.fd, view) :]
        return len(data)

    def close(self) -> None:
        for fd in (self.fd, *self._keep):
            os.close(fd)


def open_pty() -> tuple[FdPort, str]:
    """A raw pseudo-terminal: the port a device serves, and the path a host opens (``serial_for_url(path)``).

    The device keeps the other side open too, so that hosts may come and go without ending the pty.
    """
    master, slave = os.openpty()
    tty.setraw(slave)
    return FdPort(master, keep=(slave,)), os.ttyname(slave)


class SocketPort:
    """A connected TCP socket as a port; reading after the peer closed raises ConnectionError."""

    def __init__(self, sock: socket.socket, timeout: float | None = 0.0):
        import socket

        self.sock, self.timeout = sock, timeout
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def fileno(self) -> int:
        return self.sock.fileno()

    @property
    def in_waiting(self) -> int:
        return _pending(self.sock.fileno())

    def read(self, size: int = 1) -> bytes:
        ready, _, _ = select.select([self.sock], [], [], self.timeout)
        if not ready:
            return b""
        data = self.sock.recv(size)
        if not data:
            raise ConnectionError("the connection was closed")
        return data

    def write(self, data: bytes) -> int:
        self.sock.sendall(data)
        return len(data)

    def close(self) -> None:
        self.sock.close()


class FaultyPort:
    """Wraps a port and damages what passes: each write and each non-empty read is, with probability
    ``rate``, dropped, cut short, duplicated or has one byte flipped (seeded, so tests repeat)."""

    def __init__(self, port, rate: float = 0.1, seed: int = 0):
        self.port, self.rate, self.rng = port, rate, random.Random(seed)
        self.faults = 0

    def __getattr__(self, name):
        return getattr(self.port, name)

    def __setattr__(self, name, value):
        if name == "timeout":
            self.port.timeout = value
        else:
            super().__setattr__(name, value)

    @property
    def in_waiting(self) -> int:
        return self.port.in_waiting

    def _damage(self, data: bytes) -> bytes:
        if not data or self.rng.random() >= self.rate:
            return data
        self.faults += 1
        kind, at = self.rng.randrange(4), self.rng.randrange(len(data))
        if kind == 0:
            return b""
        if kind == 1:
            return data[:at]
        if kind == 2:
            return data + data
        return data[:at] + bytes([data[at] ^ (1 << self.rng.randrange(8))]) + data[at + 1 :]

    def read(self, size: int = 1) -> bytes:
        return self._damage(self.port.read(size))

    def write(self, data: bytes) -> int:
        self.port.write(self._damage(bytes(data)))
        return len(data)
