"""The C firmware on an emulated Cortex-M4: QEMU mps2-an386 with -icount shift=0, where one instruction
takes one nanosecond of virtual time, so the device's microseconds are thousands of instructions
(deterministic, a stand-in for cycles).

1. size: the firmware without any model (bundles live in its flash slots), built with arm-none-eabi-gcc
   -Os: flash (text + data) against 32 KB, static RAM besides the tensor arena (data + bss -
   arena) against 8 KB; the same for builds that leave out operator names, the sensor loop, and every
   operator but those of one bundle (the images bundle; keyword spotting);
2. instructions per inference (BENCH on the chip: invokes of a fixed input after warm-ups) for a bundle
   of each classifier template (images: digits 0-4; sequences: basic_motions; vectors: digits as 64
   values; narrow vectors: wine, 13 values, whose input is watched too), the deployed bundle against
   the classifier alone (converted with the same settings and wrapped as a bundle so that the same
   firmware runs it, the mean of its probabilities standing in for the one layer error a bundle
   needs); target: at most 1.2x. Also the RAM each
   bundle needs on the chip (engine arena + score tables + OOD buffer; read from the firmware's
   DOES_NOT_FIT answer on a build with a 4 KB arena) against TFLite Micro's arena measured on the host;
3. upload throughput over the emulated UART (QEMU's CMSDK UART on a pty), and over the native build's
   pty for comparison: archive bytes per second of `flash`, verification and activation included;
4. the peer models (tests/data/models: MLPerf Tiny and TFLite Micro examples, wrapped without a
   fingerprint): instructions per inference with the kernels for the DSP extension and with the
   portable ones on the same emulated core, per multiply-accumulate, against the cycles of the
   MLPerf Tiny v0.5 reference submission (TFLite Micro with CMSIS-NN on a Cortex-M4 at 120 MHz; QEMU
   counts instructions, a lower bound of a Cortex-M4's cycles); the engine's arena against TFLite
   Micro's (both measured on the 64-bit host) and on the chip (with and without the sensor loop); the
   model's flash.

    python -m benchmarks.firmware            # 30 epochs per classifier, 200 timed invokes, every peer
    python -m benchmarks.firmware --quick    # one epoch per model, 20 timed invokes, two small peers

The quick mode's models learn little, but their graphs, which set every figure here, are the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile

import numpy as np

from benchmarks.common import FLOOR, floor, save, trained, vector_set
from edgefp import data
from edgefp.bundle import MODEL, Bundle, sha256
from edgefp.converter.convert import convert, int8_tflite, strip
from edgefp.firmware_host.firmware import engine
from edgefp.firmware_host.firmware.build import Options, budget_report, build, operators_of
from edgefp.firmware_host.firmware.launch import start, start_qemu
from edgefp.firmware_host.link import client
from edgefp.firmware_host.link.client import DeviceError
from edgefp.manifest import QUANTILES, FileEntry, Layer, Output, Outputs
from edgefp.runtime import LiteRT
from edgefp.wrap import wrap

FLASH_TARGET, STATIC_RAM_TARGET, RATIO_TARGET, PER_MAC_TARGET = 32 * 1024, 8 * 1024, 1.2, 3.0
PROBE_ARENA = 4096
PEER_PROBE_ARENA = 64  # wrapped models need no score tables or OOD buffer: the arena is the engine's alone
PEERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data", "models")
QUICK_PEERS = ("tflm_hello_world_int8", "mlperf_tiny_kws_ref")
PEER_FRAME = 12288  # the 96x96 person detector's input is 9,216 bytes
# MLPerf Tiny v0.5 closed division, reference submission (TFLite Micro + CMSIS-NN, Cortex-M4 at 120 MHz)
REFERENCE_CYCLES = {
    "mlperf_tiny_kws_ref": 181.9e-3 * 120e6,
    "mlperf_tiny_ad01_toycar_int8": 10.05e-3 * 120e6,
    "mlperf_tiny_v01_vww_96_int8_pad": 600.5e-3 * 120e6,
}


def datasets() -> dict:
    digits = data.load("digits:train:0-4")
    return {
        "images": digits,
        "sequences": data.load("basic_motions:train"),
        "vectors": data.Dataset(digits.x.reshape(len(digits.x), -1), digits.y, "digits-vectors"),
        "narrow_vectors": vector_set("wine"),
    }


def bundles(name: str, dataset: data.Dataset, epochs: dict, workdir: str) -> dict[str, Bundle]:
    """The deployed bundle, and as bundles of their own the classifier alone and the floor
    (:func:`benchmarks.common.floor`), each of these two with one placeholder 'layer'; ``epochs``:
    train's options ``epochs`` and ``autoencoder_epochs``."""
    fingerprint = trained(dataset, seed=0, **epochs)
    run_dir, out = os.path.join(workdir, f"{name}_run"), os.path.join(workdir, f"{name}.efp")
    fingerprint.save(run_dir)
    convert(run_dir, dataset, out)
    deployed = Bundle.load(out)
    calib_x = fingerprint.prepare(dataset.x)
    models = {
        "alone": strip(int8_tflite(classifier_alone(fingerprint), calib_x, name="alone")),
        "floor": floor(fingerprint, calib_x),
    }
    return {
        "deployed": deployed,
        **{kind: _placeholder_bundle(deployed, f"{name}_{kind}", m) for kind, m in models.items()},
    }


def _placeholder_bundle(deployed: Bundle, name: str, model: bytes) -> Bundle:
    """A model of two outputs (probabilities, one value) as a bundle with the deployed one's settings."""
    specs = [_spec(index, detail) for index, detail in enumerate(LiteRT(model).output_details())]
    manifest = dataclasses.replace(
        deployed.manifest,
        name=name,
        outputs=Outputs(
            probs=next(spec for spec in specs if spec.shape != (1,)),
            layer_errors=(next(spec for spec in specs if spec.shape == (1,)),),
        ),
        layers=(Layer("none", "autoencoder", "log", 0.5, 1, 0.0, 1.0, (0.0,) * QUANTILES, (0,) * 256),),
        files={MODEL: FileEntry(sha256(model), len(model))},
        flash_bytes=len(model),
    )
    return Bundle(manifest, {MODEL: model})


def classifier_alone(fingerprint):
    """The classifier, with the mean of its probabilities as a second output of one value: a bundle
    needs a layer-error output, and this one costs a handful of instructions."""
    import keras

    model = fingerprint.model_
    probs = model.outputs[0]
    return keras.Model(model.inputs, [probs, keras.ops.mean(probs, axis=-1, keepdims=True)], name="alone")


def _spec(index: int, detail: dict) -> Output:
    scale, zero_point = detail["quantization"]
    return Output(index, tuple(int(n) for n in detail["shape"][1:]), float(scale), int(zero_point))


def instructions(device: client.Device, bundle: Bundle, runs: int) -> float:
    client.flash(device, bundle.archive_bytes())
    return client.bench(device, runs=runs, warmup=3)["instructions"]["mean"]


def ram_needed(device: client.Device, bundle: Bundle, probe_arena: int = PROBE_ARENA) -> int:
    try:
        client.flash(device, bundle.archive_bytes())
    except DeviceError as refused:
        return probe_arena + int(str(refused).split("needs ")[1].split()[0])
    raise AssertionError(f"a {probe_arena}-byte arena fitted the bundle")


def macs(model: bytes) -> int:
    """Multiply-accumulates of a model's convolutions and fully connected layers."""
    from tensorflow.lite.python import schema_py_generated as schema

    m = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model, 0))
    graph, total = m.subgraphs[0], 0
    for op in graph.operators:
        code = m.operatorCodes[op.opcodeIndex]
        code = max(code.builtinCode, code.deprecatedBuiltinCode)
        if code not in (3, 4, 9):
            continue
        out, weights = graph.tensors[op.outputs[0]].shape, graph.tensors[op.inputs[1]].shape
        if code == 3:  # CONV_2D: every output against filter height x width x depth
            total += int(np.prod(out)) * int(np.prod(weights[1:]))
        elif code == 4:  # DEPTHWISE_CONV_2D
            total += int(np.prod(out)) * int(weights[1] * weights[2])
        else:  # FULLY_CONNECTED
            total += int(np.prod(out)) * int(weights[1])
    return total


def peers(workdir: str, quick: bool, runs: int) -> dict:
    """Each peer model wrapped and run on the emulated Cortex-M4: DSP kernels, portable kernels (full
    runs), the arena a 64-byte-arena build reports missing (with and without the sensor loop); the host
    arenas beside."""
    names = sorted(n[:-7] for n in os.listdir(PEERS) if n.endswith(".tflite") and (not quick or n[:-7] in QUICK_PEERS))
    rows, made = {}, {}
    for name in names:
        made[name] = os.path.join(workdir, f"{name}.efp")
        manifest = wrap(os.path.join(PEERS, f"{name}.tflite"), made[name])
        model = Bundle.load(made[name]).model_bytes
        rows[name] = {
            "macs": macs(model),
            "flash_bytes": manifest.flash_bytes,
            "tflm_arena_bytes": manifest.tflm_arena_bytes,
            "engine_arena_bytes": engine.arena_needed(model),
            "reference_cycles": REFERENCE_CYCLES.get(name),
        }
    for kernels, cflags in (("dsp", ""), ("portable", "-DEFP_DSP=0"))[: 1 if quick else 2]:
        elf = build("qemu-m4", max_frame=PEER_FRAME, cflags=cflags)
        with start_qemu(elf) as chip, client.open_device(chip.url, timeout=30.0) as device:
            for name in names:
                client.flash(device, Bundle.load(made[name]).archive_bytes())
                timed = client.bench(device, runs=runs, warmup=1)
                rows[name][f"instructions_{kernels}"] = timed["instructions"]["mean"]
    for key, options in (("chip_arena_bytes", Options()), ("chip_arena_bytes_no_sensor", Options(sensor_loop=False))):
        elf = build("qemu-m4", arena_bytes=PEER_PROBE_ARENA, max_frame=PEER_FRAME, cflags=options.cflags())
        with start_qemu(elf) as probe, client.open_device(probe.url, timeout=30.0) as device:
            for name in names:
                rows[name][key] = ram_needed(device, Bundle.load(made[name]), PEER_PROBE_ARENA)
    for row in rows.values():
        row["per_mac"] = row["instructions_dsp"] / row["macs"]
        if row["reference_cycles"]:
            row["vs_reference"] = row["instructions_dsp"] / row["reference_cycles"]
    return rows


def peer_lines(rows: dict) -> list[str]:
    lines = [
        "| peer model | MACs | instructions (DSP kernels) | per MAC | portable kernels | reference cycles "
        "| engine arena / TFLM (host) | arena on the chip, with / without the sensor loop | flash |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        portable = f"{row['instructions_portable']:,.0f}" if "instructions_portable" in row else "-"
        reference = (
            f"{row['reference_cycles'] / 1e6:.1f} M ({row['vs_reference']:.2f}x)" if row["reference_cycles"] else "-"
        )
        lines.append(
            f"| {name} | {row['macs']:,} | {row['instructions_dsp']:,.0f} | {row['per_mac']:.2f} | {portable} "
            f"| {reference} | {row['engine_arena_bytes']:,} / {row['tflm_arena_bytes']:,} "
            f"| {row['chip_arena_bytes']:,} / {row['chip_arena_bytes_no_sensor']:,} | {row['flash_bytes']:,} |"
        )
    return lines


def footprints(images: Bundle) -> dict:
    """Flash and static RAM of the firmware built whole, and built without what a deployment may not need."""
    with open(os.path.join(PEERS, "mlperf_tiny_kws_ref.tflite"), "rb") as handle:
        kws = engine.operators(handle.read())
    alone = {"op_names": False, "sensor_loop": False}
    builds = {
        "everything": Options(),
        "without operator names": Options(op_names=False),
        "without the sensor loop": Options(sensor_loop=False),
        "the images bundle alone": Options(operators_of([images]), **alone),
        "keyword spotting alone": Options(tuple(kws), **alone),
    }
    return {name: budget_report("qemu-m4", options) for name, options in builds.items()}


def upload_rate(url: str, archive: bytes) -> dict:
    with client.open_device(url) as device:
        report = client.flash(device, archive)
    return {"bytes": report["bytes"], "seconds": report["seconds"], "bytes_per_s": report["bytes"] / report["seconds"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one epoch per model, fewer invokes (for tests)")
    args = parser.parse_args(argv)
    epochs = {"epochs": 1, "autoencoder_epochs": 1} if args.quick else {"epochs": 30, "autoencoder_epochs": None}
    runs = 20 if args.quick else 200

    sizes = budget_report("qemu-m4")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="edgefp-bench-") as workdir:
        made = {name: bundles(name, dataset, epochs, workdir) for name, dataset in datasets().items()}
        builds = footprints(made["images"]["deployed"])
        with start("qemu-m4") as chip, client.open_device(chip.url, timeout=5.0) as device:
            for name, made_bundles in made.items():
                rows[name] = {kind: instructions(device, bundle, runs) for kind, bundle in made_bundles.items()}
                rows[name]["ratio"] = rows[name]["deployed"] / rows[name]["alone"]
                rows[name]["floor_ratio"] = rows[name]["floor"] / rows[name]["alone"]
        probe = start_qemu(build("qemu-m4", arena_bytes=PROBE_ARENA))
        with probe, client.open_device(probe.url, timeout=5.0) as device:
            for name, made_bundles in made.items():
                rows[name]["ram_bytes"] = ram_needed(device, made_bundles["deployed"])
                rows[name]["tflm_arena_bytes"] = made_bundles["deployed"].manifest.tflm_arena_bytes
        archive = made["sequences"]["deployed"].archive_bytes()
        with start("qemu-m4") as chip:
            upload = {"qemu-m4": upload_rate(chip.url, archive)}
        with start("native") as native:
            upload["native"] = upload_rate(native.url, archive)
        peer_rows = peers(workdir, args.quick, 3 if args.quick else 10)

    lines = [
        "# The firmware on QEMU mps2-an386 (Cortex-M4, -icount shift=0)",
        "",
        f"Firmware without a model: {sizes['flash_bytes']:,} bytes of flash (target {FLASH_TARGET:,}), "
        f"{sizes['static_ram_bytes']:,} bytes of static RAM besides the {sizes['arena_bytes']:,}-byte arena "
        f"(target {STATIC_RAM_TARGET:,}); text {sizes['text']:,}, data {sizes['data']:,}, bss {sizes['bss']:,}.",
        "",
        "| build | flash | static RAM |",
        "|---|---|---|",
        *(f"| {name} | {row['flash_bytes']:,} | {row['static_ram_bytes']:,} |" for name, row in builds.items()),
        "",
        "| template | instructions, deployed | classifier alone | ratio (target <= 1.2) "
        "| the floor: instructions, ratio | RAM on the chip | TFLM arena (host) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {name} | {row['deployed']:,.0f} | {row['alone']:,.0f} | {row['ratio']:.3f} "
            f"| {row['floor']:,.0f}, {row['floor_ratio']:.3f} | {row['ram_bytes']:,} | {row['tflm_arena_bytes']:,} |"
        )
    lines += ["", FLOOR + "."]
    lines += ["", "| link | archive bytes | seconds | bytes/s |", "|---|---|---|---|"]
    for link, row in upload.items():
        lines.append(f"| {link} | {row['bytes']:,} | {row['seconds']:.3f} | {row['bytes_per_s']:,.0f} |")
    lines += ["", *peer_lines(peer_rows)]
    results = {
        "quick": args.quick,
        **epochs,
        "runs": runs,
        "sizes": sizes,
        "builds": builds,
        "targets": {
            "flash_bytes": FLASH_TARGET,
            "static_ram_bytes": STATIC_RAM_TARGET,
            "ratio": RATIO_TARGET,
            "instructions_per_mac": PER_MAC_TARGET,
        },
        "templates": rows,
        "upload": upload,
        "peers": peer_rows,
        "met": {
            "flash": sizes["flash_bytes"] <= FLASH_TARGET,
            "static_ram": sizes["static_ram_bytes"] <= STATIC_RAM_TARGET,
            "ratio": all(row["ratio"] <= RATIO_TARGET for row in rows.values()),
            "arena": all(row["engine_arena_bytes"] <= row["tflm_arena_bytes"] for row in peer_rows.values()),
            "reference": all(row.get("vs_reference", 0) < 1 for row in peer_rows.values()),
        },
    }
    save("firmware_quick" if args.quick else "firmware", results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
