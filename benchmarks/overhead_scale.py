"""The deployed bundle's overhead against the classifier's size: from which size it is at most 1.2x.

For each classifier template (images: digits 0-4 at 8 x 8, and upsampled to 32 x 32; sequences:
basic_motions with one class unseen; vectors: digits 0-4 as 64 values), the template's architecture
(edgefp.trainer.models) is built with its filters and units multiplied by each width, trained briefly
on standardised samples and brought to the kit as a user brings a classifier of their own:
``NeuralFingerprint().fit(model, x)``, saved as a RUN and converted by ``edgefp.converter.convert``.
Per size: the classifier's parameters and multiply-accumulates, accuracy float / int8, and the bundle
against the classifier alone (both int8, stripped alike, as benchmarks/int8.py measures them): flash,
TFLite Micro arena, LiteRT and TFLite Micro latency per invoke (the models alternated); the same for
the floor (``benchmarks.common.floor``: the least any autoencoder fingerprint adds); per template, the
smallest width from which each ratio, the bundle's and the floor's, is at most 1.2x at every larger
width measured.

    python -m benchmarks.overhead_scale          # widths 1, 2, 4, 8 (32 x 32 images: 1, 2, 4), 5 x 100 invokes
    python -m benchmarks.overhead_scale --quick  # vectors at widths 1 and 4, 3 x 50 invokes
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import FLOOR, floor, save
from benchmarks.int8 import CASES, LATENCY_SAMPLES, OVERHEAD_TARGET, classifier_int8, digits_case, measured
from edgefp import data
from edgefp.bundle import Bundle
from edgefp.converter.convert import convert, strip
from edgefp.trainer import NeuralFingerprint
from edgefp.trainer.models import auto_epochs, train_classifier

WIDTHS = (1, 2, 4, 8)
TRAIN_STEPS = 200  # optimizer steps for the classifier: brief, the figures depend on the graph
AUTOENCODER_EPOCHS = 15
MEASURES = ("flash", "arena", "litert_us", "tflm_us")
LABELS = {"flash": "flash", "arena": "TFLM arena", "litert_us": "LiteRT latency", "tflm_us": "TFLM latency"}


def upsampled(case: dict, side: int) -> dict:
    """An image case with its images resized (bilinear) to ``side`` x ``side``."""
    import tensorflow as tf

    def resize(x: np.ndarray) -> np.ndarray:
        return tf.image.resize(x, (side, side)).numpy().astype(np.float32)

    train_set, id_test = case["train"], case["id_test"]
    return {
        "train": data.Dataset(resize(train_set.x), train_set.y, f"{train_set.name} at {side}x{side}"),
        "id_test": data.Dataset(resize(id_test.x), id_test.y, f"{id_test.name} at {side}x{side}"),
    }


TEMPLATES = {  # name: the case, its widths (32 x 32 images at width 8: 1.7 M parameters, 5 minutes more)
    "images 8x8": (lambda: digits_case(), WIDTHS),
    "images 32x32": (lambda: upsampled(digits_case(), 32), WIDTHS[:-1]),
    "sequences": (CASES["sequences"], WIDTHS),
    "vectors": (lambda: digits_case(vectors=True), WIDTHS),
}


def users_data(case: dict) -> tuple[data.Dataset, data.Dataset]:
    """The case's training and test sets as a user's pipeline hands them to their model: standardised per
    channel on the training set, the known classes numbered from 0."""
    train_set, id_test = case["train"], case["id_test"]
    standardize, values = data.standardizer(train_set.x), np.unique(train_set.y)
    return tuple(
        data.Dataset(data.apply_preprocessing(part.x, standardize), np.searchsorted(values, part.y), part.name)
        for part in (train_set, id_test)
    )


READERS = ("depthwise", "fully_connected", "other")


def constants_by_reader(model_bytes: bytes) -> dict:
    """A TFLite flatbuffer's constant bytes by the operator that reads them: depthwise convolutions' kernels
    and biases, fully connected weights and biases (and of them, the weights' zero bytes), the rest."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model_bytes, 0))
    graph, ops = model.subgraphs[0], schema.BuiltinOperator
    found, counted = {**dict.fromkeys(READERS, 0), "zero_weights": 0}, set()
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        kind = max(code.builtinCode, code.deprecatedBuiltinCode)
        reader = {ops.DEPTHWISE_CONV_2D: "depthwise", ops.FULLY_CONNECTED: "fully_connected"}.get(kind, "other")
        for position, tensor in enumerate(op.inputs):
            buffer = graph.tensors[tensor].buffer if tensor >= 0 else 0
            values = model.buffers[buffer].data
            if buffer in counted or values is None:
                continue
            counted.add(buffer)
            found[reader] += len(values)
            if reader == "fully_connected" and position == 1:
                found["zero_weights"] += int(np.count_nonzero(np.asarray(values) == 0))
    return found


def evaluate(template: str, train_set, id_test, width: int, timing: dict, workdir: str) -> dict:
    started = time.monotonic()
    n_classes = len(np.unique(train_set.y))
    epochs = auto_epochs(len(train_set.x), steps=TRAIN_STEPS)
    model = train_classifier(train_set.x, train_set.y, n_classes, epochs=epochs, seed=0, width=width)
    fingerprint = NeuralFingerprint(epochs=AUTOENCODER_EPOCHS).fit(model, train_set.x)
    stem = os.path.join(workdir, f"{template.replace(' ', '_')}_{width}")
    fingerprint.save(stem + "_run")
    convert(stem + "_run", train_set, stem + "_bundle")
    bundle = Bundle.load(stem + "_bundle")
    trained_s = time.monotonic() - started
    accuracy = {
        kind: float(np.mean(score(id_test.x).pred == id_test.y))
        for kind, score in (("float", fingerprint.score), ("int8", bundle.score))
    }
    calib_x = fingerprint.prepare(train_set.x)
    models = {
        "classifier": strip(classifier_int8(fingerprint, calib_x)),
        "floor": floor(fingerprint, calib_x),
        "bundle": bundle.model_bytes,
    }
    inputs = bundle.quantize(np.resize(id_test.x, (LATENCY_SAMPLES, *id_test.x.shape[1:])))
    rows, latency = measured(models, inputs, **timing)
    for name, m in models.items():
        rows[name].update(constants_by_reader(m))
    ratios, floor_ratios = (
        {key: rows[m][key] / rows["classifier"][key] for key in MEASURES} for m in ("bundle", "floor")
    )
    print(
        f"{template} x{width}: {model.count_params()} params, trained and converted in {trained_s:.0f} s, "
        + ", ".join(f"{LABELS[key]} {ratio:.2f}x" for key, ratio in ratios.items()),
        file=sys.stderr,
    )
    return {
        "width": width,
        "classifier_params": int(model.count_params()),
        "fingerprint_params": fingerprint.fingerprint_params(),
        "evidence": [{"name": lay.name, "kind": lay.kind, "features": lay.features} for lay in fingerprint.layers_],
        "accuracy": accuracy,
        "models": rows,
        "latency": latency,
        "ratios": ratios,
        "floor_ratios": floor_ratios,
        "seconds": time.monotonic() - started,
    }


def met_from(sizes: list[dict], ratios: str = "ratios") -> dict:
    """Per measure, the smallest width from which the ratio (``ratios``: the bundle's, or the floor's) is at
    most the target at every larger width measured (None: missed at the largest)."""
    found = {}
    for key in MEASURES:
        found[key] = None
        for size in reversed(sizes):
            if size[ratios][key] > OVERHEAD_TARGET:
                break
            found[key] = size["width"]
    return found


# -------------------------------------------------------------------------------------- report
def table(results: dict, timing: dict) -> str:
    lines = [
        "## Bundle / classifier alone, by the classifier's size",
        "",
        "The template's architecture with its filters and units times `width`, fingerprinted as a user's own",
        "classifier and converted by `edgefp.converter.convert`. Both models int8 and stripped alike. Flash = model",
        "bytes; arena = TFLite Micro's smallest arena (64-bit host); latency per invoke in us, median over",
        f"{timing['reps']} repetitions of the median of {timing['timed']} timed invokes ({timing['warmup']} "
        "warm-ups excluded), the models alternated.",
        f"Target: at most {OVERHEAD_TARGET}x. Accuracy on the in-distribution test set.",
        "",
        "| template | width | classifier params | classifier MACs | fingerprint params | ops | tensors | "
        "accuracy float / int8 | flash B | arena B | LiteRT us | TFLM us |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for template, r in results.items():
        for size in r["sizes"]:
            base, bundle = size["models"]["classifier"], size["models"]["bundle"]
            cells = [
                f"{base[key]:,.1f}".removesuffix(".0")
                + " -> "
                + f"{bundle[key]:,.1f}".removesuffix(".0")
                + f" (**{size['ratios'][key]:.2f}x**)"
                for key in MEASURES
            ]
            lines.append(
                f"| {template} | {size['width']} | {size['classifier_params']:,} | {base['macs']:,} | "
                f"{size['fingerprint_params']:,} | {base['ops']} -> {bundle['ops']} | "
                f"{base['tensors']} -> {bundle['tensors']} | "
                f"{size['accuracy']['float']:.3f} / {size['accuracy']['int8']:.3f} | " + " | ".join(cells) + " |"
            )
    lines += [
        "",
        f"Smallest width from which the ratio is at most {OVERHEAD_TARGET}x at every larger width measured",
        "(classifier parameters in brackets; `missed`: above it at the largest width), the bundle's and the",
        "floor's (below):",
        "",
        "| template | " + " | ".join(LABELS[key] for key in MEASURES) + " |",
        "|---|" + "---|" * len(MEASURES),
    ]
    for template, r in results.items():
        params = {size["width"]: size["classifier_params"] for size in r["sizes"]}
        for label, met in (("", r["met_from"]), (", the floor", r["floor_met_from"])):
            cells = ["missed" if width is None else f"{width} ({params[width]:,})" for width in met.values()]
            lines.append(f"| {template}{label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        FLOOR + ", against the classifier alone:",
        "",
        "| template | width | " + " | ".join(LABELS[key] for key in MEASURES) + " |",
        "|---|---|" + "---|" * len(MEASURES),
    ]
    for template, r in results.items():
        for size in r["sizes"]:
            cells = [f"{size['floor_ratios'][key]:.2f}x" for key in MEASURES]
            lines.append(f"| {template} | {size['width']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "What the bundle adds to the classifier alone (bundle - classifier), in bytes. Flash: constants read by",
        "the depthwise convolutions that pool the watched layers (kernels and biases), by fully connected",
        "operators (weights and biases; in brackets the weights' zero bytes: the block diagonal's and the",
        "per-autoencoder averages' zeros), by other operators, and the rest of the flatbuffer (structure:",
        "tensors, operators, quantisation parameters). Arena: planned activations, TFLite Micro's persistent",
        "allocations, and what only allocation needs.",
        "",
        "| template | width | flash: pooling / fully connected (zeros) / other / structure | "
        "arena: activations / persistent / allocation only |",
        "|---|---|---|---|",
    ]
    for template, r in results.items():
        for size in r["sizes"]:
            base, bundle = size["models"]["classifier"], size["models"]["bundle"]
            added = {key: bundle[key] - base[key] for key in ("flash", "constant_bytes", *READERS, "zero_weights")}
            flash = (
                f"{added['depthwise']:,} / {added['fully_connected']:,} ({added['zero_weights']:,}) / "
                f"{added['other']:,} / {added['flash'] - added['constant_bytes']:,}"
            )
            arena = [
                f"{bundle[key] - base[key]:,}" if None not in (bundle[key], base[key]) else "?"
                for key in ("activations", "persistent", "allocation_only")
            ]
            lines.append(f"| {template} | {size['width']} | {flash} | " + " / ".join(arena) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="vectors at widths 1 and 4, fewer timed invokes")
    args = parser.parse_args(argv)
    timing = {"reps": 3, "warmup": 5, "timed": 50} if args.quick else {"reps": 5, "warmup": 10, "timed": 100}
    templates = {"vectors": (TEMPLATES["vectors"][0], (1, 4))} if args.quick else TEMPLATES
    started, results = time.monotonic(), {}
    with tempfile.TemporaryDirectory(prefix="edgefp-overhead-") as workdir:
        for template, (make, widths) in templates.items():
            train_set, id_test = users_data(make())
            sizes = [evaluate(template, train_set, id_test, width, timing, workdir) for width in widths]
            results[template] = {
                "sizes": sizes,
                "met_from": met_from(sizes),
                "floor_met_from": met_from(sizes, "floor_ratios"),
            }
    seconds = time.monotonic() - started
    print(f"measured in {seconds:.0f} s", file=sys.stderr)
    name = "overhead_scale" + ("_quick" if args.quick else "")
    save(name, {"timing": timing, "seconds": seconds, "results": results}, table(results, timing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
