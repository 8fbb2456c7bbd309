"""The firmware's boards and C sources as a whole: every board's port exists and compiles with its
toolchain, the host-firmware contract header is what the Python generates, every public C name carries
the efp_ prefix, and the static analysis and formatting pass."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from edgefp.errors import EdgefpError
from edgefp.firmware_host import boards
from edgefp.firmware_host.boards import BOARDS
from edgefp.firmware_host.firmware import contract
from edgefp.firmware_host.firmware.build import SOURCE, Options, build, compile_port, export, make_variables, sizes
from edgefp.firmware_host.firmware.launch import start

FIRMWARE_BOARDS = [name for name, board in BOARDS.items() if board.runtime == "tflm"]
# Names a Cortex-M startup file must have: CMSIS's vector names, and main.
UNPREFIXED = re.compile(r"main|\w+_(Handler|IRQHandler)")


def _has(*tools: str) -> bool:
    return all(shutil.which(tool) for tool in tools)


def test_every_firmware_board_has_a_port_toolchain_and_at_most_one_launcher():
    for name, board in BOARDS.items():
        if board.runtime != "tflm":
            assert board.port is None and board.toolchain is None and board.launcher is None, name
            continue
        folder = SOURCE / "boards" / board.port
        assert (folder / "board.c").is_file(), f"{name}: no {folder}/board.c"
        assert board.toolchain is not None, name
        if board.tested and not board.toolchain.hosted:  # a bare-metal port that runs here links with its script
            assert (folder / "link.ld").is_file(), name
        assert board.tested == (board.port != boards.TEMPLATE_PORT), name
    assert {"native", "qemu-m4"} <= {name for name, board in BOARDS.items() if board.tested}


@pytest.mark.heavy
@pytest.mark.parametrize("name", FIRMWARE_BOARDS)
def test_every_firmware_board_compiles_with_its_toolchain(name):
    """Tested ports link (the ELF or executable exists); template ports compile warning-free (-Werror)
    with the board's CPU flags, their stubs included, and stop before linking."""
    board = BOARDS[name]
    if not _has("make", board.toolchain.compiler):
        pytest.skip(f"needs make and {board.toolchain.compiler}")
    if board.tested:
        assert build(name).is_file()
    else:
        assert compile_port(board, make_variables(board), "objects").is_file()
        with pytest.raises(EdgefpError, match="a template to fill in"):
            build(name)


@pytest.mark.heavy
@pytest.mark.parametrize("name", [name for name in FIRMWARE_BOARDS if BOARDS[name].tested])
def test_tested_ports_build_without_what_a_deployment_leaves_out(name):
    """One operator, no operator names, no sensor loop: the port still builds warning-free, and smaller."""
    board = BOARDS[name]
    if not _has("make", board.toolchain.compiler, board.toolchain.size_tool):
        pytest.skip(f"needs make and {board.toolchain.compiler}")
    smallest = Options(("FULLY_CONNECTED",), op_names=False, sensor_loop=False)
    full, small = (sizes(build(name, cflags=options.cflags()), board)["text"] for options in (Options(), smallest))
    assert small < full - 4096


def test_boards_that_cannot_do_it_are_refused_clearly(tmp_path):
    with pytest.raises(EdgefpError, match="pi runs litert, not the firmware"):
        export("pi", str(tmp_path / "fw"))
    assert not (tmp_path / "fw").exists()
    with pytest.raises(EdgefpError, match="nrf52840 cannot run here as a device; choose one of qemu-m4, native"):
        start("nrf52840")
    with pytest.raises(EdgefpError, match="the native firmware serves a pty only"):
        BOARDS["native"].launcher.start(tmp_path / "firmware", tcp=True)


def test_the_contract_header_is_generated_from_the_python_definitions():
    """Checked in as generated: regenerating it changes nothing (python -m ...contract --check says so)."""
    assert contract.HEADER.read_text() == contract.render()
    checked = subprocess.run(
        [sys.executable, "-m", "edgefp.firmware_host.firmware.contract", "--check"], capture_output=True, text=True
    )
    assert checked.returncode == 0 and "current" in checked.stdout
    text = contract.render()
    for _, prefix, values, _ in contract.ENUMS:
        for member in values:
            assert f"    {prefix}{member.name} = 0x{member.value:02X}," in text
    for name, value, _ in contract.CONSTANTS:
        assert re.search(rf"^#define {name} +{value} ", text, re.M), name


def test_the_contract_check_fails_on_a_stale_header(tmp_path, monkeypatch):
    stale = tmp_path / "efp_contract.h"
    stale.write_text(contract.render().replace("EFP_ERR_BAD_FRAME = 0x01", "EFP_ERR_BAD_FRAME = 0x09"))
    monkeypatch.setattr(contract, "HEADER", stale)
    assert contract.main(["--check"]) == 1
    assert contract.main([]) == 0 and stale.read_text() == contract.render()


def _public_symbols(objects: list) -> set[str]:
    listed = subprocess.run(["nm", "-g", "--defined-only", *map(str, objects)], capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    return {line.split()[-1] for line in listed.stdout.splitlines() if len(line.split()) == 3}


@pytest.mark.heavy
@pytest.mark.parametrize("name", ["native", "qemu-m4", "nrf52840"])
def test_every_public_c_symbol_is_prefixed(name):
    """What the firmware's objects export (functions and globals, the board's included) starts with efp_,
    so that it links beside a vendor SDK; so does every macro, type and enum constant of its headers."""
    board = BOARDS[name]
    if not _has("make", "nm", board.toolchain.compiler):
        pytest.skip(f"needs make, nm and {board.toolchain.compiler}")
    done = compile_port(board, make_variables(board), "objects")
    symbols = _public_symbols(sorted(done.parent.glob(f"obj-{board.port}/**/*.o")))
    assert symbols and not {s for s in symbols if not s.startswith("efp_") and not UNPREFIXED.fullmatch(s)}
    for header in sorted((SOURCE / "src").glob("*.h")):
        text = header.read_text()
        names = re.findall(r"^#define (\w+)", text, re.M) + re.findall(r"^} (\w+);", text, re.M)
        for body in re.findall(r"^enum \w* ?\{(.*?)\}", text, re.M | re.S):
            names += re.findall(r"^\s*([A-Za-z]\w*)\s*[=,]", re.sub(r"/\*.*?\*/", "", body, flags=re.S), re.M)
        assert all(n.lower().startswith("efp_") for n in names), (header.name, names)


@pytest.mark.heavy
@pytest.mark.skipif(not _has("make", "cppcheck"), reason="needs cppcheck (Debian: apt-get install cppcheck)")
def test_static_analysis_finds_nothing():
    """cppcheck on every source and board, with both kernel sets (make lint)."""
    result = subprocess.run(["make", "-s", "-C", str(SOURCE), "lint"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(not _has("clang-format"), reason="needs clang-format (Debian: apt-get install clang-format)")
def test_the_c_sources_follow_the_clang_format_style():
    sources = sorted(map(str, [*SOURCE.glob("src/*.[ch]"), *SOURCE.glob("boards/*/*.[ch]")]))
    result = subprocess.run(["clang-format", "--dry-run", "-Werror", *sources], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
