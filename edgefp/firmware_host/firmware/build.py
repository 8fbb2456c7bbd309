"""The C firmware for microcontrollers (sources in ``c/``, docs/firmware.md): export it as a project,
build it for a port, read its sizes, and run it as a device under QEMU (``qemu-m4``) or on the host
(``native``, for machines without QEMU), each reachable at a URL like any other device, with a sensor
the host drives (the sensor link of docs/sensors.md: QEMU's second UART, a socket for the native build).
"""

from __future__ import annotations

import hashlib
import math
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
from edgefp.firmware_host.boards import Board, get_board
from edgefp.firmware_host.device.feed import SENSOR_ASK, run_feed, sensor_frames
from edgefp.firmware_host.firmware import engine
from edgefp.fsutil import atomic_directory
from edgefp.isolation import step

SOURCE = Path(__file__).with_name("c")
PORTS = {"qemu-m4": "mps2-an386", "native": "host"}  # board profile -> tested port under c/boards/
TEMPLATE_PORT = "template"  # what other boards get: the board layer to write (docs/porting.md)
STACK_BYTES = 16 * 1024
OOD_CAPACITY = 16  # recent OOD inputs the firmware keeps (EFP_OOD_CAPACITY in c/src/config.h)
QEMU = "qemu-system-arm"
START_TIMEOUT_S = 20.0


def port_of(board: Board) -> str:
    return PORTS.get(board.name, TEMPLATE_PORT)


def make_variables(
    board: Board, arena_bytes: int | None = None, max_frame: int | None = None, cflags: str = ""
) -> list[str]:
    """The firmware's budgets from the board profile (or another arena size and largest frame), and any
    further C flags (``-DEFP_DSP=0``: the portable kernels), as make variables. Inputs larger than a
    frame (2,048 bytes by default, docs/firmware.md) need a larger one."""
    flags = f"-DEFP_ARENA_BYTES={arena_bytes or board.ram_bytes}"
    flags += f" -DEFP_MAX_FRAME={max_frame}" if max_frame else ""
    flags += f" {cflags}" if cflags else ""
    return [f"BOARD={port_of(board)}", f"CFLAGS={flags}"]


def export(board_name: str, out: str, *, force: bool = False) -> dict:
    """Write a buildable firmware project for ``board_name`` into ``out`` (all at once)."""
    board = get_board(board_name)
    if board.runtime != "tflm":
        raise EdgefpError(f"{board.name} runs {board.runtime}, not firmware; use 'edgefp agent' there")
    port = port_of(board)
    with atomic_directory(out, "firmware project", force=force) as tmp:
        shutil.copy(SOURCE / "Makefile", tmp)
        shutil.copytree(SOURCE / "src", os.path.join(tmp, "src"))
        shutil.copytree(SOURCE / "boards" / port, os.path.join(tmp, "boards", port))
        variables = " ".join(make_variables(board))
        with open(os.path.join(tmp, "board.mk"), "w") as handle:
            handle.write(f"# {board.description}: build with  make $(cat board.mk)\n{variables}\n")
    return {"board": board.name, "port": port, "out": out, "make": f"make {variables}", "tested": port != TEMPLATE_PORT}


def _sources_digest(variables: list[str]) -> str:
    digest = hashlib.sha256(" ".join(variables).encode())
    for path in sorted(SOURCE.rglob("*")):
        if path.is_file() and "build" not in path.relative_to(SOURCE).parts:
            digest.update(str(path.relative_to(SOURCE)).encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "edgefp" / "firmware"


def build(board_name: str, *, arena_bytes: int | None = None, max_frame: int | None = None, cflags: str = "") -> Path:
    """Build the firmware for a tested port (cached by sources and flags); return the ELF or executable."""
    board = get_board(board_name)
    if board.name not in PORTS:
        raise EdgefpError(f"no tested firmware port for {board.name}; choose one of {', '.join(PORTS)}")
    native = board.name == "native"
    compiler = "gcc" if native else "arm-none-eabi-gcc"
    if shutil.which(compiler) is None or shutil.which("make") is None:
        raise EdgefpError(f"building the {board.name} firmware needs make and {compiler}; install them first")
    variables = make_variables(board, arena_bytes, max_frame, cflags)
    out = cache_dir() / f"{board.name}-{_sources_digest(variables)}"
    target = out / ("firmware" if native else "firmware.elf")
    if not target.exists():
        result = subprocess.run(
            ["make", "-s", "-C", str(SOURCE), *variables, f"BUILD_DIR={out}"], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise EdgefpError(f"the {board.name} firmware did not build: {result.stderr.strip()[-500:]}")
    return target


def sizes(target: Path) -> dict:
    """text, data and bss bytes of a built firmware (Berkeley format of ``size``)."""
    tool = "size" if target.suffix != ".elf" else "arm-none-eabi-size"
    lines = subprocess.run([tool, str(target)], capture_output=True, text=True, check=True).stdout.splitlines()
    text, data, bss = (int(v) for v in lines[1].split()[:3])
    return {"text": text, "data": data, "bss": bss}


def budget_report(board_name: str) -> dict:
    """Flash and RAM the firmware itself takes on a tested port (no model: bundles live in the slots)."""
    board = get_board(board_name)
    built = sizes(build(board_name))
    report = {
        **built,
        "flash_bytes": built["text"] + built["data"],
        "static_ram_bytes": built["data"] + built["bss"] - board.ram_bytes,
        "arena_bytes": board.ram_bytes,
        "slot_bytes": board.flash_bytes,
    }
    if board.name == "qemu-m4":
        report["stack_bytes"] = STACK_BYTES
    return report


def budget_lines(report: dict) -> list[str]:
    return [
        f"  firmware: {report['flash_bytes']:,} bytes of flash (text {report['text']:,} + data {report['data']:,}), "
        f"{report['static_ram_bytes']:,} bytes of static RAM besides the {report['arena_bytes']:,}-byte arena",
        f"  bundles: two slots of {report['slot_bytes']:,} bytes in flash",
    ]


def bundle_ram(bundle, board_name: str) -> dict:
    """RAM a bundle needs in the firmware (engine arena; score tables and OOD buffer, none without a
    fingerprint; input quantisation and sensor window) against the board's arena. The engine's part is
    measured by the engine itself, built for this machine with the board's kernels: 64-bit pointers make
    it an upper bound of what a 32-bit microcontroller needs."""
    board = get_board(board_name)
    try:
        with step("checking the model with the firmware's engine"):
            arena = engine.arena_needed(bundle.model_bytes, dsp=board.dsp)
    except engine.EngineError as refused:
        raise EdgefpError(f"{bundle.source}: the firmware cannot run this model: {refused}") from None
    shape, layers = bundle.manifest.input.shape, len(bundle.manifest.layers)
    extras = _round16(layers * 256 * 4) + (_round16(OOD_CAPACITY * bundle.input_bytes) if layers else 0)
    sensor = _round16(2 * 4 * shape[-1]) + _round16(4 * math.prod(shape))  # input quantisation, sensor window
    needed = arena + extras + sensor
    return {
        "bundle": bundle.manifest.name,
        "engine_arena_bytes": arena,
        "tables_and_ood_bytes": extras,
        "sensor_bytes": sensor,
        "ram_bytes": needed,
        "board_ram_bytes": board.ram_bytes,
        "fits": needed <= board.ram_bytes,
    }


def _round16(n: int) -> int:
    return (n + 15) // 16 * 16


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


def can_emulate() -> bool:
    """Whether this machine can build the firmware for qemu-m4 and run it."""
    return all(shutil.which(tool) for tool in ("make", "arm-none-eabi-gcc", QEMU))


def start_qemu(elf: Path, *, tcp_port: int | None = None) -> Emulated:
    """Run the mps2-an386 firmware under QEMU with -icount shift=0 (one instruction = one virtual ns).

    UART0 is a new pty (its path is the URL), or a TCP server on 127.0.0.1 with ``tcp_port``; UART1,
    the sensor link, is another pty.
    """
    if shutil.which(QEMU) is None:
        raise EdgefpError(f"{QEMU} is not installed (Debian: apt-get install qemu-system-arm)")
    serial = "pty" if tcp_port is None else f"tcp:127.0.0.1:{tcp_port},server=on,wait=off"
    command = [QEMU, "-M", "mps2-an386", "-nographic", "-monitor", "none", "-serial", serial, "-serial", "pty"]
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


def start_native(executable: Path, flash_file: str) -> Emulated:
    """Run the native build as a device on a new pty; its flash is ``flash_file`` (kept across runs), its
    sensor link a socket."""
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
    return Emulated(os.ttyname(slave), process, keep=(slave, sensor), sensor=sensor)


def scratch_flash() -> str:
    """A new, empty flash file for a native device."""
    handle, path = tempfile.mkstemp(prefix="edgefp-flash-", suffix=".bin")
    os.close(handle)
    os.remove(path)
    return path


def start(board_name: str, *, tcp: bool = False, flash_file: str | None = None) -> Emulated:
    """Build (if needed) and start the firmware of a tested port as a device."""
    target = build(board_name)
    if board_name == "native":
        if tcp:
            raise EdgefpError("the native firmware serves a pty only; leave out --tcp")
        path = flash_file or scratch_flash()
        device = start_native(target, path)
        if flash_file is None:
            device.scratch = path
        return device
    return start_qemu(target, tcp_port=_free_port() if tcp else None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
