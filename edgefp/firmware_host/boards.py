"""Boards: what each target runs, how much flash and RAM a bundle may use there and, for the firmware's
boards, the C port it is built from, the toolchain that builds it and how it is launched as a device.

Adding a board is one :class:`Board` in :data:`BOARDS` plus, for a new port, one folder under
``firmware/c/boards/`` (docs/porting.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgefp.errors import EdgefpError

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30
TEMPLATE_PORT = "template"  # the board layer left to write (docs/porting.md): compiles, does not run


@dataclass(frozen=True)
class Toolchain:
    """How a port's C is compiled: the compiler's prefix (``arm-none-eabi-``, empty for this machine's
    gcc), its CPU flags and its optimisation; the firmware's Makefile variables CROSS, ARCH and OPT."""

    cross: str = ""
    arch: str = ""
    optimise: str = "-Os"

    @property
    def compiler(self) -> str:
        return f"{self.cross}gcc"

    @property
    def size_tool(self) -> str:
        return f"{self.cross}size"

    @property
    def hosted(self) -> bool:
        """Built for this machine (an executable), not for a bare-metal chip (an ELF)."""
        return not self.cross

    @property
    def target(self) -> str:
        return "firmware" if self.hosted else "firmware.elf"

    def make_variables(self) -> list[str]:
        return [f"CROSS={self.cross}", f"ARCH={self.arch}", f"OPT={self.optimise}"]


@dataclass(frozen=True)
class Qemu:
    """Run the firmware's ELF under qemu-system-arm on an emulated machine, with -icount shift=0: one
    instruction is one nanosecond of virtual time (``instructions_per_us``)."""

    machine: str
    instructions_per_us: int = 1000
    tools: tuple[str, ...] = ("qemu-system-arm",)

    def start(self, target, *, tcp: bool = False, flash_file: str | None = None):
        from edgefp.firmware_host.firmware import launch

        if flash_file is not None:
            raise EdgefpError(f"the firmware on QEMU {self.machine} keeps its flash in memory: give no flash file")
        return launch.start_qemu(target, self.machine, tcp_port=launch.free_port() if tcp else None)


@dataclass(frozen=True)
class Native:
    """Run the firmware built for this machine as a process: its UART a pty, its flash a file, its sensor
    link a socket."""

    instructions_per_us: int = 0
    tools: tuple[str, ...] = ()

    def start(self, target, *, tcp: bool = False, flash_file: str | None = None):
        from edgefp.firmware_host.firmware import launch

        if tcp:
            raise EdgefpError("the native firmware serves a pty only: start it without a TCP port")
        return launch.start_native(target, flash_file)


HOST = Toolchain(optimise="-O2")
CORTEX_M0PLUS = Toolchain("arm-none-eabi-", "-mcpu=cortex-m0plus -mthumb -mfloat-abi=soft")
CORTEX_M4F = Toolchain("arm-none-eabi-", "-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16")
CORTEX_M7F = Toolchain("arm-none-eabi-", "-mcpu=cortex-m7 -mthumb -mfloat-abi=hard -mfpu=fpv5-sp-d16")
ESP32S3 = Toolchain("xtensa-esp32s3-elf-", "-mlongcalls")


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    runtime: str  # tflm, litert or edgetpu
    flash_bytes: int  # room for the model
    ram_bytes: int  # room for the tensor arena
    dsp: bool = False  # a core with the DSP extension: the firmware's kernels for it (docs/firmware.md)
    port: str | None = None  # the firmware's board layer, a folder under firmware/c/boards/ (tflm boards)
    toolchain: Toolchain | None = field(default=None, repr=False)
    launcher: Qemu | Native | None = field(default=None, repr=False)  # how it runs here as a device, if it can

    @property
    def instructions_per_us(self) -> int:
        """Emulators counting instructions as time (QEMU -icount): their rate; 0 for real time."""
        return self.launcher.instructions_per_us if self.launcher else 0

    @property
    def tested(self) -> bool:
        """Its firmware port is complete and runs here (QEMU or natively), not a template to fill in."""
        return self.launcher is not None


def _firmware(name, description, flash, ram, toolchain, *, dsp=False, port=TEMPLATE_PORT, launcher=None) -> Board:
    """A board that runs the firmware (TFLite Micro's place), from its port (default: the template)."""
    return Board(name, description, "tflm", flash, ram, dsp, port, toolchain, launcher)


BOARDS = {
    board.name: board
    for board in (
        _firmware("nrf52840", "Nordic nRF52840, Cortex-M4F at 64 MHz", 1 * MIB, 256 * KIB, CORTEX_M4F, dsp=True),
        _firmware("esp32s3", "Espressif ESP32-S3, Xtensa LX7 at 240 MHz (internal SRAM)", 8 * MIB, 512 * KIB, ESP32S3),
        _firmware("rp2040", "Raspberry Pi RP2040, Cortex-M0+ at 133 MHz", 2 * MIB, 264 * KIB, CORTEX_M0PLUS),
        _firmware("stm32f746", "ST STM32F746, Cortex-M7 at 216 MHz", 1 * MIB, 320 * KIB, CORTEX_M7F, dsp=True),
        _firmware(
            "qemu-m4",
            "the edgefp firmware on QEMU mps2-an386 (Cortex-M4)",
            1 * MIB,
            160 * KIB,
            CORTEX_M4F,
            dsp=True,
            port="mps2-an386",
            launcher=Qemu("mps2-an386"),
        ),
        _firmware(
            "native",
            "the edgefp firmware built for this machine",
            1 * MIB,
            160 * KIB,
            HOST,
            port="host",
            launcher=Native(),
        ),
        Board("pi", "Raspberry Pi 4/5 running LiteRT", "litert", 8 * GIB, 1 * GIB),
        Board("coral", "Coral Dev Board, LiteRT with the Edge TPU delegate", "edgetpu", 8 * GIB, 1 * GIB),
    )
}


def get_board(name: str) -> Board:
    try:
        return BOARDS[name]
    except KeyError:
        raise EdgefpError(f"unknown board '{name}'; choose one of {', '.join(BOARDS)}") from None


def fit_problems(board: Board, flash_bytes: int, arena_bytes: int | None) -> list[str]:
    """Why a model does not fit the board, saying by how much; empty when it fits."""
    problems = []
    if flash_bytes > board.flash_bytes:
        problems.append(f"the model needs {flash_bytes - board.flash_bytes} bytes more flash than {board.name} has")
    if arena_bytes is not None and arena_bytes > board.ram_bytes:
        problems.append(f"the arena needs {arena_bytes - board.ram_bytes} bytes more RAM than {board.name} has")
    return problems
