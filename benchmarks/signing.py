"""What signed bundles cost the C firmware on an emulated Cortex-M4 (QEMU mps2-an386, arm-none-eabi-gcc -Os):

1. flash: the firmware built with a public key (export-firmware --trust) against the same firmware without
   one: Monocypher's verification, LibTomCrypt's SHA-512 and the firmware's check around them;
2. time: instructions of one signature check of a bundle on the chip (SHA-256 of its manifest, then
   Ed25519: the signed bundle accepted, the same with one bit of its signature flipped refused), under
   -icount shift=0 (one instruction per virtual nanosecond, a lower bound of a Cortex-M4's cycles);
   and the host's check of the same signature with ``cryptography``, for comparison.

    python -m benchmarks.signing            # both
    python -m benchmarks.signing --quick    # the time alone (no firmware builds; for tests)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from benchmarks.common import save
from edgefp.bundle import Bundle
from edgefp.firmware_host.boards import get_board
from edgefp.firmware_host.firmware import build
from edgefp.firmware_host.firmware.launch import QEMU
from edgefp.signing import Signature, check, public_raw, signed_message
from edgefp.wrap import wrap

BOARD = "qemu-m4"
ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests" / "data" / "models" / "tflm_hello_world_int8.tflite"
SOURCES = ("signature.c", "sha256.c", "emulated_flash.c", "sensor_link.c", "framing.c")


def c_array(name: str, content: bytes) -> str:
    return f"static const uint8_t {name}[{len(content)}] = {{{','.join(str(b) for b in content)}}};\n"


def signed_bundle(scratch: str) -> tuple[Bundle, bytes]:
    """A wrapped bundle signed with a new key, and the key's raw public half."""
    key = Ed25519PrivateKey.generate()
    wrap(str(MODEL), os.path.join(scratch, "hello.efp"), name="hello")
    bundle = Bundle.load(os.path.join(scratch, "hello.efp"))
    bundle.sign(key, 1)
    return bundle, public_raw(key.public_key())


def chip_instructions(bundle: Bundle, public: bytes, scratch: str) -> dict:
    """Run benchmarks/c/ed25519_bench.c on the emulated chip; its instruction counts."""
    board = get_board(BOARD)
    sources = Path(scratch) / "src"
    sources.mkdir()
    for name in SOURCES:
        shutil.copy(build.SOURCE / "src" / name, sources)
    shutil.copy(ROOT / "benchmarks" / "c" / "ed25519_bench.c", sources)
    arrays = {"KEY": public, "SIGNATURE": bundle.signature, "MANIFEST": bundle.manifest_bytes}
    (sources / "vector.h").write_text("#include <stdint.h>\n" + "".join(c_array(*item) for item in arrays.items()))
    variables = build.make_variables(board, cflags=build.Options(trust=public).cflags())
    command = ["make", "-s", "-C", str(build.SOURCE), *variables, f"SRC_DIR={sources}"]
    made = subprocess.run([*command, f"BUILD_DIR={scratch}/build"], capture_output=True, text=True)
    if made.returncode != 0:
        raise SystemExit(f"the benchmark did not build: {made.stderr[-2000:]}")
    elf = f"{scratch}/build/{board.toolchain.target}"
    qemu = [QEMU, "-M", "mps2-an386", "-nographic", "-monitor", "none", "-serial", "stdio", "-serial", "null"]
    process = subprocess.Popen([*qemu, "-icount", "shift=0", "-kernel", elf], stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
    finally:
        process.kill()
        process.wait()
    found = dict(re.findall(r"(\w+) (\d+)", line))
    if found.get("accepted") != "1" or found.get("refused") != "1":
        raise SystemExit(f"the chip did not check the signature as expected: {line!r}")
    return {"accept": int(found["accept_us"]) * 1000, "refuse": int(found["refuse_us"]) * 1000}


def flash_cost(public: bytes) -> dict:
    """The firmware's flash and static RAM without a key and with ``public`` built in."""
    plain = build.budget_report(BOARD)
    trusting = build.budget_report(BOARD, build.Options(trust=public))
    return {
        "flash_bytes": plain["flash_bytes"],
        "flash_bytes_trusting": trusting["flash_bytes"],
        "flash_cost_bytes": trusting["flash_bytes"] - plain["flash_bytes"],
        "static_ram_cost_bytes": trusting["static_ram_bytes"] - plain["static_ram_bytes"],
    }


def host_microseconds(bundle: Bundle, public: bytes, runs: int = 200) -> float:
    start = time.perf_counter()
    for _ in range(runs):
        check(bundle.signature, bundle.manifest_bytes, public)
    return (time.perf_counter() - start) / runs * 1e6


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the time alone, without the flash builds (for tests)")
    quick = parser.parse_args(argv).quick
    with tempfile.TemporaryDirectory() as scratch:
        bundle, public = signed_bundle(scratch)
        sizes = {} if quick else flash_cost(public)
        instructions = chip_instructions(bundle, public, scratch)
        host_us = host_microseconds(bundle, public)
    signature = Signature.unpack(bundle.signature)
    results = {
        "board": BOARD,
        "quick": quick,
        **sizes,
        "manifest_bytes": len(bundle.manifest_bytes),
        "signed_message_bytes": len(signed_message(signature.version, signature.key_id, bundle.manifest_bytes)),
        "instructions_accept": instructions["accept"],
        "instructions_refuse": instructions["refuse"],
        "host_check_us": host_us,
    }
    rows = (
        []
        if quick
        else [
            f"| firmware flash without a key | {results['flash_bytes']:,} bytes |",
            f"| firmware flash with a key built in | {results['flash_bytes_trusting']:,} bytes |",
            f"| flash cost of signature checks | {results['flash_cost_bytes']:,} bytes |",
            f"| static RAM cost | {results['static_ram_cost_bytes']:,} bytes |",
        ]
    )
    markdown = "\n".join(
        [
            f"# Signed bundles on the firmware ({BOARD}, arm-none-eabi-gcc -Os)",
            "",
            "| what | figure |",
            "|---|---|",
            *rows,
            f"| one check, accepted ({results['manifest_bytes']:,}-byte manifest) | "
            f"{results['instructions_accept']:,} instructions |",
            f"| one check, refused (a flipped signature bit) | {results['instructions_refuse']:,} instructions |",
            f"| the same check on the host (cryptography) | {results['host_check_us']:.0f} us |",
            "",
            "QEMU -icount shift=0 counts instructions (1,000 per virtual microsecond, the firmware's clock), "
            "a lower bound of a Cortex-M4's cycles.",
            "",
        ]
    )
    save("signing_quick" if quick else "signing", results, markdown)


if __name__ == "__main__":
    main()
