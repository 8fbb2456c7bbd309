"""Board profiles: what each target runs and how much flash and RAM a bundle may use there."""

from __future__ import annotations

from dataclasses import dataclass

from edgefp.errors import EdgefpError

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    runtime: str  # tflm, litert or edgetpu
    flash_bytes: int  # room for the model
    ram_bytes: int  # room for the tensor arena
    instructions_per_us: int = 0  # emulators counting instructions as time (QEMU -icount): their rate
    dsp: bool = False  # a core with the DSP extension: the firmware's kernels for it (docs/firmware.md)


BOARDS = {
    board.name: board
    for board in (
        Board("nrf52840", "Nordic nRF52840, Cortex-M4F at 64 MHz", "tflm", 1 * MIB, 256 * KIB, dsp=True),
        Board("esp32s3", "Espressif ESP32-S3, Xtensa LX7 at 240 MHz (internal SRAM)", "tflm", 8 * MIB, 512 * KIB),
        Board("rp2040", "Raspberry Pi RP2040, Cortex-M0+ at 133 MHz", "tflm", 2 * MIB, 264 * KIB),
        Board("stm32f746", "ST STM32F746, Cortex-M7 at 216 MHz", "tflm", 1 * MIB, 320 * KIB, dsp=True),
        Board("qemu-m4", "the edgefp firmware on QEMU mps2-an386 (Cortex-M4)", "tflm", 1 * MIB, 160 * KIB, 1000, True),
        Board("native", "the edgefp firmware built for this machine", "tflm", 1 * MIB, 160 * KIB),
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
