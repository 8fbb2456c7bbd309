"""The C firmware on an emulated Cortex-M4: QEMU mps2-an386 with -icount shift=0, where one instruction
takes one nanosecond of virtual time, so the device's microseconds are thousands of instructions
(deterministic, a stand-in for cycles).

1. size: the firmware without any model (bundles live in its flash slots), built with arm-none-eabi-gcc
   -Os: flash (text + data) against 32 KB, static RAM besides the tensor arena (data + bss - arena)
   against 8 KB;
2. instructions per inference (BENCH on the chip: invokes of a fixed input after warm-ups) for a bundle
   of each classifier template (images: digits 0-4; sequences: basic_motions; vectors: digits as 64
   values), the deployed bundle against the classifier alone (converted with the same settings and
   wrapped as a bundle so that the same firmware runs it); target: at most 1.2x. Also the RAM each
   bundle needs on the chip (engine arena + score tables + OOD buffer; read from the firmware's
   DOES_NOT_FIT answer on a build with a 4 KB arena) against TFLite Micro's arena measured on the host;
3. upload throughput over the emulated UART (QEMU's CMSDK UART on a pty), and over the native build's
   pty for comparison: archive bytes per second of `flash`, verification and activation included.

    python -m benchmarks.firmware            # 30 epochs per classifier, 200 timed invokes
    python -m benchmarks.firmware --quick    # 10 epochs, 20 timed invokes
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile

from benchmarks.common import save
from edgefp import data
from edgefp.bundle import MODEL, Bundle, sha256
from edgefp.converter.convert import batch_of_one, convert, int8_model, strip
from edgefp.firmware_host import client, firmware
from edgefp.firmware_host.client import DeviceError
from edgefp.shifts import range_samples
from edgefp.trainer import train

FLASH_TARGET, STATIC_RAM_TARGET, RATIO_TARGET = 32 * 1024, 8 * 1024, 1.2
PROBE_ARENA = 4096


def datasets() -> dict:
    digits = data.load("digits:train:0-4")
    return {
        "images": digits,
        "sequences": data.load("basic_motions:train"),
        "vectors": data.Dataset(digits.x.reshape(len(digits.x), -1), digits.y, "digits-vectors"),
    }


def bundles(name: str, dataset: data.Dataset, epochs: int, workdir: str) -> tuple[Bundle, Bundle]:
    """The deployed bundle, and the classifier alone as a bundle (its one 'layer' a placeholder)."""
    fingerprint = train(dataset, epochs=epochs, seed=0, progress=False)
    run_dir, out = os.path.join(workdir, f"{name}_run"), os.path.join(workdir, f"{name}.efp")
    fingerprint.save(run_dir)
    convert(run_dir, dataset, out)
    deployed = Bundle.load(out)
    model = strip(
        int8_model(batch_of_one(fingerprint.model_, "classifier"), range_samples(fingerprint.prepare(dataset.x)))
    )
    manifest = copy.deepcopy(deployed.manifest)
    probs = {**manifest["outputs"]["probs"], "index": 0}
    manifest["outputs"] = {"probs": probs, "layer_errors": [probs]}
    manifest["layers"] = [{"name": "none", "features": 0, "z_table": [0] * 256}]
    manifest["files"] = {MODEL: {"sha256": sha256(model), "bytes": len(model)}}
    manifest.update(name=f"{name}_classifier", flash_bytes=len(model))
    return deployed, Bundle(manifest, {MODEL: model})


def instructions(device: client.Device, bundle: Bundle, runs: int) -> float:
    client.flash(device, bundle.archive_bytes())
    return client.bench(device, runs=runs, warmup=3)["instructions"]["mean"]


def ram_needed(device: client.Device, bundle: Bundle) -> int:
    try:
        client.flash(device, bundle.archive_bytes())
    except DeviceError as refused:
        return PROBE_ARENA + int(str(refused).split("needs ")[1].split()[0])
    raise AssertionError("a 4 KB arena fitted the bundle")


def upload_rate(url: str, archive: bytes) -> dict:
    with client.open_device(url) as device:
        report = client.flash(device, archive)
    return {"bytes": report["bytes"], "seconds": report["seconds"], "bytes_per_s": report["bytes"] / report["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and invokes (for tests)")
    args = parser.parse_args()
    epochs, runs = (10, 20) if args.quick else (30, 200)

    sizes = firmware.budget_report("qemu-m4")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="edgefp-bench-") as workdir:
        made = {name: bundles(name, dataset, epochs, workdir) for name, dataset in datasets().items()}
        with firmware.start("qemu-m4") as chip, client.open_device(chip.url, timeout=5.0) as device:
            for name, (deployed, alone) in made.items():
                rows[name] = {
                    "deployed": instructions(device, deployed, runs),
                    "alone": instructions(device, alone, runs),
                }
                rows[name]["ratio"] = rows[name]["deployed"] / rows[name]["alone"]
        probe = firmware.start_qemu(firmware.build("qemu-m4", arena_bytes=PROBE_ARENA))
        with probe, client.open_device(probe.url, timeout=5.0) as device:
            for name, (deployed, _) in made.items():
                rows[name]["ram_bytes"] = ram_needed(device, deployed)
                rows[name]["tflm_arena_bytes"] = deployed.manifest["tflm_arena_bytes"]
        archive = made["sequences"][0].archive_bytes()
        with firmware.start("qemu-m4") as chip:
            upload = {"qemu-m4": upload_rate(chip.url, archive)}
        with firmware.start("native") as native:
            upload["native"] = upload_rate(native.url, archive)

    lines = [
        "# The firmware on QEMU mps2-an386 (Cortex-M4, -icount shift=0)",
        "",
        f"Firmware without a model: {sizes['flash_bytes']:,} bytes of flash (target {FLASH_TARGET:,}), "
        f"{sizes['static_ram_bytes']:,} bytes of static RAM besides the {sizes['arena_bytes']:,}-byte arena "
        f"(target {STATIC_RAM_TARGET:,}); text {sizes['text']:,}, data {sizes['data']:,}, bss {sizes['bss']:,}.",
        "",
        "| template | instructions, deployed | classifier alone | ratio (target <= 1.2) "
        "| RAM on the chip | TFLM arena (host) |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['deployed']:,.0f} | {row['alone']:,.0f} | {row['ratio']:.3f} "
            f"| {row['ram_bytes']:,} | {row['tflm_arena_bytes']:,} |"
        )
    lines += ["", "| link | archive bytes | seconds | bytes/s |", "|---|---|---|---|"]
    for link, row in upload.items():
        lines.append(f"| {link} | {row['bytes']:,} | {row['seconds']:.3f} | {row['bytes_per_s']:,.0f} |")
    results = {
        "quick": args.quick,
        "epochs": epochs,
        "runs": runs,
        "sizes": sizes,
        "targets": {"flash_bytes": FLASH_TARGET, "static_ram_bytes": STATIC_RAM_TARGET, "ratio": RATIO_TARGET},
        "templates": rows,
        "upload": upload,
        "met": {
            "flash": sizes["flash_bytes"] <= FLASH_TARGET,
            "static_ram": sizes["static_ram_bytes"] <= STATIC_RAM_TARGET,
            "ratio": all(row["ratio"] <= RATIO_TARGET for row in rows.values()),
        },
    }
    save("firmware_quick" if args.quick else "firmware", results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
