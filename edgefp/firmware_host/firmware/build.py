"""The C firmware for microcontrollers (sources in ``c/``, docs/firmware.md): export it as a project for a
board, build it with the board's toolchain, read its sizes and what RAM a bundle needs in it. Running
a build as a device is :mod:`edgefp.firmware_host.firmware.launch`.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgefp.errors import EdgefpError
from edgefp.firmware_host.boards import BOARDS, Board, get_board
from edgefp.firmware_host.firmware import engine, third_party
from edgefp.firmware_host.firmware.contract import OOD_CAPACITY
from edgefp.fsutil import atomic_directory
from edgefp.isolation import step

SOURCE = Path(__file__).with_name("c")
STACK_BYTES = 16 * 1024  # bare-metal ports: the stack their link.ld sets aside (the Makefile's STACK_SIZE)


@dataclass(frozen=True)
class Options:
    """What a build of the firmware keeps (docs/firmware.md, "Footprint"): by default everything.

    ``operators``: only these builtin operators (names, as :func:`operators_of` gives them), the others
    refused at upload as operators the engine lacks; ``op_names``: refusals name operators and types
    (else they give their code numbers); ``sensor_loop``: the firmware classifies the board's own sensor
    windows when idle (a board without a sensor needs neither the loop nor the window in the arena);
    ``trust``: a raw Ed25519 public key built in, so that the firmware accepts only bundles signed with it
    (docs/security.md)."""

    operators: tuple[str, ...] | None = None
    op_names: bool = True
    sensor_loop: bool = True
    trust: bytes | None = None

    def cflags(self) -> str:
        flags = [] if self.operators is None else ["-DEFP_OPS_ONLY", *(f"-DEFP_OP_{name}" for name in self.operators)]
        flags += [] if self.op_names else ["-DEFP_OP_NAMES=0"]
        flags += [] if self.sensor_loop else ["-DEFP_SENSOR_LOOP=0"]
        flags += [] if self.trust is None else ["-DEFP_TRUST_KEY=" + ",".join(f"0x{b:02x}" for b in self.trust)]
        return " ".join(flags)


FULL = Options()


def operators_of(bundles) -> tuple[str, ...]:
    """The builtin operators the bundles' models use, for a build that runs these bundles alone."""
    return tuple(sorted({name for bundle in bundles for name in engine.operators(bundle.model_bytes)}))


def firmware_board(board_name: str) -> Board:
    """The board, when it runs the firmware (it has a port and a toolchain)."""
    board = get_board(board_name)
    if board.port is None or board.toolchain is None:
        raise EdgefpError(f"{board.name} runs {board.runtime}, not the firmware; use 'edgefp agent' there")
    return board


def make_variables(
    board: Board, arena_bytes: int | None = None, max_frame: int | None = None, cflags: str = ""
) -> list[str]:
    """The board's port and toolchain, and the firmware's budgets from the board profile (or another arena
    size and largest frame) with any further C flags (``-DEFP_DSP=0``: the portable kernels), as make
    variables. Inputs larger than a frame (2,048 bytes by default, docs/firmware.md) need a larger one."""
    flags = f"-DEFP_ARENA_BYTES={arena_bytes or board.ram_bytes}"
    flags += f" -DEFP_MAX_FRAME={max_frame}" if max_frame else ""
    flags += f" {cflags}" if cflags else ""
    return [f"BOARD={board.port}", *board.toolchain.make_variables(), f"CFLAGS={flags}"]


def export(board_name: str, out: str, *, force: bool = False, options: Options = FULL) -> dict:
    """Write a buildable firmware project for ``board_name`` into ``out`` (all at once), built with
    ``options``."""
    board = firmware_board(board_name)
    with atomic_directory(out, "firmware project", force=force) as tmp:
        shutil.copy(SOURCE / "Makefile", tmp)
        shutil.copytree(SOURCE / "src", os.path.join(tmp, "src"))
        shutil.copytree(SOURCE / "third_party", os.path.join(tmp, "third_party"))
        shutil.copytree(SOURCE / "boards" / board.port, os.path.join(tmp, "boards", board.port))
        variables = make_variables(board, cflags=options.cflags())
        settings = "".join(f"{name} = {value}\n" for name, value in (v.split("=", 1) for v in variables))
        with open(os.path.join(tmp, "board.mk"), "w") as handle:
            handle.write(f"# {board.description}: the Makefile reads these; build with  make\n{settings}")
    return {"board": board.name, "port": board.port, "out": out, "make": f"make -C {out}", "tested": board.tested}


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
    """Build the firmware for a board that runs here (cached by sources and flags); return the ELF or
    executable."""
    board = firmware_board(board_name)
    if not board.tested:
        runnable = ", ".join(name for name, other in BOARDS.items() if other.tested)
        raise EdgefpError(f"{board.name}'s port is a template to fill in (docs/porting.md); choose one of {runnable}")
    return compile_port(board, make_variables(board, arena_bytes, max_frame, cflags))


def compile_port(board: Board, variables: list[str], goal: str = "all") -> Path:
    """Run the firmware's Makefile for the board with these variables (cached by sources and variables);
    the target it builds. ``goal`` ``objects`` compiles without linking (ports without a linker script)."""
    compiler = board.toolchain.compiler
    if shutil.which(compiler) is None or shutil.which("make") is None:
        raise EdgefpError(f"building the {board.name} firmware needs make and {compiler}; install them first")
    third_party.check()
    out = cache_dir() / f"{board.name}-{_sources_digest(variables)}"
    target = out / (board.toolchain.target if goal == "all" else "objects.done")
    if target.exists():
        return target
    # built aside and renamed into place, so that no process finds a build another one is still writing
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    try:
        command = ["make", "-s", "-C", str(SOURCE), *variables, f"BUILD_DIR={staging}", goal]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise EdgefpError(f"the {board.name} firmware did not build: {result.stderr.strip()[-500:]}")
        if out.exists() and not target.exists():  # a build cut short before builds were renamed into place
            shutil.rmtree(out, ignore_errors=True)
        try:
            os.rename(staging, out)
        except OSError:  # another process finished the same build first: the same sources, the same result
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def sizes(target: Path, board: Board) -> dict:
    """text, data and bss bytes of a firmware built for the board (Berkeley format of ``size``)."""
    command = [board.toolchain.size_tool, str(target)]
    lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()
    text, data, bss = (int(v) for v in lines[1].split()[:3])
    return {"text": text, "data": data, "bss": bss}


def budget_report(board_name: str, options: Options = FULL) -> dict:
    """Flash and RAM the firmware itself takes on a tested port, built with ``options`` (no model:
    bundles live in the slots)."""
    board = firmware_board(board_name)
    built = sizes(build(board_name, cflags=options.cflags()), board)
    report = {
        **built,
        "flash_bytes": built["text"] + built["data"],
        "static_ram_bytes": built["data"] + built["bss"] - board.ram_bytes,
        "arena_bytes": board.ram_bytes,
        "slot_bytes": board.flash_bytes,
    }
    if not board.toolchain.hosted:
        report["stack_bytes"] = STACK_BYTES
    return report


def budget_lines(report: dict) -> list[str]:
    return [
        f"  firmware: {report['flash_bytes']:,} bytes of flash (text {report['text']:,} + data {report['data']:,}), "
        f"{report['static_ram_bytes']:,} bytes of static RAM besides the {report['arena_bytes']:,}-byte arena",
        f"  bundles: two slots of {report['slot_bytes']:,} bytes in flash",
    ]


def bundle_ram(bundle, board_name: str, options: Options = FULL) -> dict:
    """RAM a bundle needs in the firmware built with ``options`` against the board's arena: the engine's
    arena; score tables and OOD buffer (none without a fingerprint); a mean and a std per channel (a
    standardised input only) and the sensor window (with the sensor loop only), as the firmware's
    extras_for() counts them. The engine's part is measured by the engine itself, built for this machine
    with the board's kernels: 64-bit pointers make it an upper bound of what a 32-bit microcontroller
    needs."""
    board = firmware_board(board_name)
    try:
        with step("checking the model with the firmware's engine"):
            arena = engine.arena_needed(bundle.model_bytes, dsp=board.dsp)
    except engine.EngineError as refused:
        raise EdgefpError(f"{bundle.source}: the firmware cannot run this model: {refused}") from None
    shape, layers = bundle.manifest.input.shape, len(bundle.manifest.layers)
    tables = _round16(bundle.evidence_values * 256 * 4)  # 256 int32 entries per evidence value
    extras = tables + (_round16(OOD_CAPACITY * bundle.input_bytes) if layers else 0)
    standardised = bundle.manifest.input.preprocessing.type == "standardize"
    standardisation = _round16(2 * 4 * shape[-1]) if standardised else 0  # a mean and a std per channel
    window = _round16(4 * math.prod(shape)) if options.sensor_loop else 0  # float32 values
    sensor = standardisation + window
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
