"""`edgefp demo`: the kit end to end on the built-in digits."""

from __future__ import annotations

import contextlib
import dataclasses
import os

from edgefp import data, metrics, shifts
from edgefp.firmware_host.boards import get_board
from edgefp.fsutil import output_path

ID_CLASSES = "0-4"
UNSEEN_CLASSES = "5-9"
CORRUPTIONS = ("gaussian", "invert", "blur", "stuck")
REPORT_BOARD = "nrf52840"


def run_demo(out: str, *, seed: int = 0, progress=None) -> dict:
    """Train on digits 0-4 and fingerprint; convert to an int8 bundle; score held-out 0-4, unseen 5-9
    and corrupted 0-4 with both; time the bundle on TFLite Micro and write the HTML report.

    Writes the RUN, the bundle, one score file per set and model, the bench result and the report
    under ``out``; returns a table of accuracy, share flagged OOD and AUROC against the held-out 0-4,
    float and int8 side by side.
    """

    from edgefp.bench import bench_bundle
    from edgefp.bench import save as save_bench
    from edgefp.bundle import Bundle
    from edgefp.converter.convert import convert
    from edgefp.report import build_report
    from edgefp.trainer import train

    out = output_path(out)  # never the current directory or one above it: the demo writes many files there
    run_dir, bundle_dir = os.path.join(out, "run"), os.path.join(out, "bundle")
    fingerprint = train(data.load(f"digits:train:{ID_CLASSES}"), seed=seed, progress=progress)
    fingerprint.save(run_dir, force=True)
    unseen = data.load(f"digits:test:{UNSEEN_CLASSES}")
    calib = data.load(f"digits:train:{ID_CLASSES}")
    manifest = convert(run_dir, calib, bundle_dir, name="digits_0_4", ood_data=unseen, force=True)
    bundle = Bundle.load(bundle_dir)
    held_out = data.load(f"digits:test:{ID_CLASSES}")
    sets = [("held-out 0-4", held_out), ("unseen digits 5-9", unseen)]
    sets += [
        (f"0-4 {kind}", data.Dataset(shifts.apply(held_out.x, kind, seed), held_out.y, kind)) for kind in CORRUPTIONS
    ]
    models = {"float": fingerprint.score, "int8": bundle.score}
    rows, id_scores = [], {}
    for name, dataset in sets:
        row = {"set": name}
        for model, score in models.items():
            scores = score(dataset.x)
            scores.save(os.path.join(out, f"scores_{model}_{name.replace(' ', '_')}.npz"), force=True)
            id_scores.setdefault(model, scores.ood_score)
            summary = scores.summary(dataset.y, fingerprint.label_values_)
            auroc = None if dataset is held_out else metrics.auroc(id_scores[model], scores.ood_score)
            row.update({"n": summary["n"], f"{model}_accuracy": summary["accuracy"]})
            row.update({f"{model}_ood_rate": summary["ood_rate"], f"{model}_auroc": auroc})
        rows.append(row)
    device = on_device(bundle, held_out.x, os.path.join(out, "device"))
    timing = bench_bundle(bundle, "tflm", runs=200, warmup=20)
    save_bench(timing, os.path.join(out, "bench_tflm.json"), force=True)
    board = dataclasses.asdict(get_board(REPORT_BOARD))
    ood_sets = [dataset for _, dataset in sets[1:]]
    page = build_report(bundle, held_out, ood_sets, [timing], board, os.path.join(out, "report"), force=True)
    return {
        "run": run_dir,
        "bundle": bundle_dir,
        "report": page,
        "seed": seed,
        "parity": manifest.parity,
        "tflm_latency_us": timing["latency_us"]["p50"],
        "device": device,
        "rows": rows,
    }


def on_device(bundle, x, data_dir: str) -> dict:
    """Flash the bundle to a device over a pty, run ``x`` on it, and compare with host scoring on
    TFLite Micro: the C firmware on an emulated Cortex-M4 when QEMU and its compiler are installed,
    else a simulated nRF52840 (the agent running TFLite Micro)."""
    import numpy as np

    from edgefp.firmware_host.link import client

    with _device(data_dir) as (board, url), client.open_device(url, timeout=5.0) as device:
        flashed = client.flash(device, bundle.archive_bytes())
        scores, latencies = client.infer_samples(device, x)
    host = bundle.score(x, "tflm")
    same = np.all(scores.layer_errors == host.layer_errors, axis=1) & (scores.pred == host.pred)
    return {
        "board": board,
        "description": get_board(board).description,
        "url": url,
        "upload_efficiency": flashed["bytes"] / flashed["wire_bytes"],
        "samples": len(x),
        "identical_to_host": int(same.sum()),
        "device_latency_us": float(np.median(latencies)),
    }


@contextlib.contextmanager
def _device(data_dir: str):
    from edgefp.firmware_host.device.agent import Agent, serving
    from edgefp.firmware_host.firmware.launch import can_emulate, start

    if can_emulate():
        with start("qemu-m4") as chip:
            yield "qemu-m4", chip.url
    else:
        with serving(Agent(data_dir, REPORT_BOARD)) as url:
            yield REPORT_BOARD, url
