"""The int8 bundle on the host: float vs int8 parity, and what OOD detection costs on a device.

For each classifier template (images: digits 0-4, near-OOD 5-9, far-OOD Gaussian noise; sequences:
basic_motions with one class unseen, far-OOD noisy signals; vectors: digits 0-4 as 64 values;
narrow_vectors: wine, 13 values, with one class unseen, far-OOD noisy values: its input is watched), a
classifier is trained and fingerprinted, saved as a RUN and converted to a bundle. Then:

1. parity: accuracy on the in-distribution test set and OOD AUROC (ID test vs near-OOD, vs far-OOD),
   float (Keras) against int8 (LiteRT); targets: accuracy within 1 point, AUROC within 0.01;
2. overhead, step by step: the classifier alone, the floor (the least any autoencoder fingerprint
   adds: ``benchmarks.common.floor``), then with each kind of evidence added (max logit, then the
   autoencoders: with the evidence's weights quantised per output channel as the converter does, then
   per tensor: the bundle as `convert` writes it), every model stripped of what no runtime reads
   (names, signatures, metadata) but the `as converted` ones. Every model is converted with the
   bundle's settings and representative data. Per model: LiteRT and TFLite Micro latency per invoke
   (warm-ups excluded, the models alternated between repetitions so that they share the machine's
   noise), flash (model bytes), TFLite Micro's arena, operators, tensors, multiply-accumulates and
   constant bytes; target: the bundle at most 1.2x the classifier alone (stripped alike) on latency,
   flash and arena.

    python -m benchmarks.int8            # the four cases, 5 x 200 timed invokes
    python -m benchmarks.int8 --quick    # digits images only, 3 x 100 timed invokes
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

from benchmarks.common import FLOOR, floor, save, trained, vector_set
from benchmarks.ood_quality import pooled, split
from edgefp import data, metrics, shifts
from edgefp.bundle import Bundle
from edgefp.converter.convert import convert, int8_tflite, quantize, strip
from edgefp.runtime import LiteRT, TFLiteMicro, captured_output, tflm_arena_bytes
from edgefp.trainer.fingerprint import AUTOENCODER, MAX_LOGIT

ACCURACY_TARGET = 0.01  # int8 accuracy within 1 point of float
AUROC_TARGET = 0.01
OVERHEAD_TARGET = 1.2
LATENCY_SAMPLES = 200  # distinct inputs cycled through while timing
RUNTIMES = ("litert", "tflm")
BUNDLE = "+ autoencoders: the bundle"
FLOOR_STEP = "floor: one autoencoder, 4 operators"


# ----------------------------------------------------------------------------------------- data
def digits_case(vectors: bool = False) -> dict:
    def load(spec: str) -> data.Dataset:
        ds = data.load(spec)
        return data.Dataset(ds.x.reshape(len(ds.x), -1), ds.y, ds.name) if vectors else ds

    return {
        "train": load("digits:train:0-4"),
        "id_test": load("digits:test:0-4"),
        "near": load("digits:test:5-9").x,
        "far_kind": "gaussian",
        "seed": 0,
    }


def held_out_case(dataset: data.Dataset, unseen: int, far_kind: str) -> dict:
    """One class of ``dataset`` unseen (near-OOD), split as ood_quality.evaluate splits it (seed 0)."""
    classes = [int(c) for c in np.unique(dataset.y) if c != unseen]
    train_set, id_test, known = split(dataset, classes, 0)
    return {"train": train_set, "id_test": id_test, "near": dataset.x[~known], "far_kind": far_kind, "seed": 0}


CASES = {
    "images": lambda: digits_case(),
    "sequences": lambda: held_out_case(pooled("basic_motions"), 0, "noise"),
    "vectors": lambda: digits_case(vectors=True),
    # wine: 13 values, narrower than the template's hidden layer, so its input is watched too
    "narrow_vectors": lambda: held_out_case(vector_set("wine"), 0, "noise"),
}


# ---------------------------------------------------------------------------------------- models
def graph_parts(model_bytes: bytes) -> dict:
    """Operators, tensors, multiply-accumulates and constant-data bytes (weights, biases, constants) of a
    TFLite flatbuffer; the rest of its bytes are graph structure (shapes, quantisation, operators, names)."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model_bytes, 0))
    graph = model.subgraphs[0]
    used = {tensor.buffer for tensor in graph.tensors}
    constants = sum(len(model.buffers[i].data) for i in used if model.buffers[i].data is not None)
    weighted = {schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D}
    macs = 0
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        kind = max(code.builtinCode, code.deprecatedBuiltinCode)
        weights = int(np.prod(graph.tensors[op.inputs[1]].shape)) if len(op.inputs) > 1 else 0
        if kind == schema.BuiltinOperator.FULLY_CONNECTED:
            macs += weights
        elif kind in weighted:  # one multiply-accumulate per weight and output position
            macs += weights * int(np.prod(graph.tensors[op.outputs[0]].shape[1:-1]))
    return {"ops": len(graph.operators), "tensors": len(graph.tensors), "macs": macs, "constant_bytes": int(constants)}


def tflm_arena_parts(model_bytes: bytes, arena: int) -> dict:
    """TFLite Micro's own account of the arena: planned activations ('head'), persistent allocations
    (tensor and node structs, kernel data: 'tail'); what the smallest arena needs beyond both is only
    used while allocating."""
    from tflite_micro.python.tflite_micro import runtime

    with captured_output() as messages:
        interp = runtime.Interpreter.from_bytes(model_bytes, arena_size=arena)
        interp.print_allocations()
        text = messages()
    found = {}
    for line in text.splitlines():
        words = line.split()
        if "Arena allocation" in line and len(words) >= 5:
            found[words[3]] = int(words[4])
    return {
        "activations": found.get("head"),
        "persistent": found.get("tail"),
        "allocation_only": arena - found["total"] if "total" in found else None,
    }


def classifier_int8(fingerprint, calib_x: np.ndarray) -> bytes:
    """The fingerprinted classifier alone, converted as its bundle is (before :func:`strip`)."""
    return int8_tflite(fingerprint.model_, calib_x, name="classifier")


def steps(fingerprint, calib_x: np.ndarray, bundle_bytes: bytes) -> dict[str, bytes]:
    """The int8 models of the overhead steps, each converted with the bundle's settings and data."""
    import keras

    monitor = fingerprint.monitor_
    kinds = [layer.kind for layer in fingerprint.layers_]

    def evidence(*wanted: str) -> bytes:
        outputs = [monitor.outputs[0]] + [monitor.outputs[1 + j] for j, kind in enumerate(kinds) if kind in wanted]
        return int8_tflite(keras.Model(monitor.inputs, outputs, name="monitor"), calib_x, name="edgefp_model")

    classifier = classifier_int8(fingerprint, calib_x)
    max_logit = {"+ max logit": strip(evidence(MAX_LOGIT))} if MAX_LOGIT in kinds else {}
    return {
        "classifier, as converted": classifier,
        "classifier": strip(classifier),
        FLOOR_STEP: floor(fingerprint, calib_x),
        **max_logit,
        "+ autoencoders, as converted": evidence(MAX_LOGIT, AUTOENCODER),
        "+ autoencoders, weights per channel": quantize(fingerprint, calib_x, per_tensor=False)[0],
        BUNDLE: bundle_bytes,
    }


# ------------------------------------------------------------------------------------- running
class Runner:
    """One int8 model on one runtime; ``invoke_ns`` holds the time spent in the interpreter's invoke() alone."""

    def __init__(self, model_bytes: bytes, runtime: str):
        self.interpreter = LiteRT(model_bytes) if runtime == "litert" else TFLiteMicro(model_bytes)
        self.invoke_ns = 0

    def __call__(self, x: np.ndarray) -> None:
        self.interpreter.set_input(x)
        start = time.perf_counter_ns()
        self.interpreter.run()
        self.invoke_ns += time.perf_counter_ns() - start


def time_models(runners: dict, inputs: np.ndarray, reps: int, warmup: int, timed: int) -> dict:
    """Per model: median over repetitions of the per-repetition median invoke time (us), with the spread
    of the repetition medians. The models alternate order between repetitions."""
    names = list(runners)
    medians = {name: [] for name in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            run = runners[name]
            for i in range(warmup):
                run(inputs[i % len(inputs)])
            times = np.empty(timed)
            for i in range(timed):
                run.invoke_ns = 0
                run(inputs[i % len(inputs)])
                times[i] = run.invoke_ns
            medians[name].append(float(np.median(times)) / 1e3)
    return {
        name: {"median_us": float(np.median(v)), "min_us": float(np.min(v)), "max_us": float(np.max(v))}
        for name, v in medians.items()
    }


def measured(models: dict, inputs: np.ndarray, reps: int, warmup: int, timed: int) -> tuple[dict, dict]:
    """Per model: flash (model bytes), TFLite Micro's smallest arena and its parts, the graph's parts and
    the median invoke time on each runtime (``RUNTIME_us``); and the timings in full (:func:`time_models`)."""
    latency = {
        runtime: time_models({name: Runner(m, runtime) for name, m in models.items()}, inputs, reps, warmup, timed)
        for runtime in RUNTIMES
    }
    rows = {}
    for name, m in models.items():
        arena = tflm_arena_bytes(m)
        rows[name] = {
            "flash": len(m),
            "arena": arena,
            **graph_parts(m),
            **tflm_arena_parts(m, arena),
            **{f"{runtime}_us": latency[runtime][name]["median_us"] for runtime in RUNTIMES},
        }
    return rows, latency


# ------------------------------------------------------------------------------------ evaluation
def evaluate(name: str, case: dict, reps: int, warmup: int, timed: int, workdir: str) -> dict:
    started = time.monotonic()
    train_set, id_test, seed = case["train"], case["id_test"], case["seed"]
    near = case["near"]
    far = shifts.apply(id_test.x, case["far_kind"], seed=seed + 1)
    fingerprint = trained(train_set, seed=seed)
    run_dir, out = os.path.join(workdir, f"{name}_run"), os.path.join(workdir, f"{name}_bundle")
    fingerprint.save(run_dir)
    convert(run_dir, train_set, out, ood_data=data.Dataset(near, None, f"{name}:near"))
    bundle = Bundle.load(out)
    print(f"{name}: trained and converted in {time.monotonic() - started:.0f} s", file=sys.stderr)

    parity = {}
    for label, score in (("float", fingerprint.score), ("int8", bundle.score)):
        scores = {k: score(x) for k, x in (("id", id_test.x), ("near", near), ("far", far))}
        parity[label] = {
            "accuracy": float(np.mean(scores["id"].pred == id_test.y)),
            "auroc_near": metrics.auroc(scores["id"].ood_score, scores["near"].ood_score),
            "auroc_far": metrics.auroc(scores["id"].ood_score, scores["far"].ood_score),
            "id_flagged": float(np.mean(scores["id"].is_ood)),
        }

    models = steps(fingerprint, fingerprint.prepare(train_set.x), bundle.model_bytes)
    inputs = bundle.quantize(np.resize(id_test.x, (LATENCY_SAMPLES, *id_test.x.shape[1:])))
    rows, latency = measured(models, inputs, reps, warmup, timed)
    base = rows["classifier"]
    ratios, floor_ratios = (
        {key: rows[step][key] / base[key] for key in ("flash", "arena", *(f"{r}_us" for r in RUNTIMES))}
        for step in (BUNDLE, FLOOR_STEP)
    )
    p = parity
    targets = {
        "accuracy_within_1pt": p["int8"]["accuracy"] >= p["float"]["accuracy"] - ACCURACY_TARGET,
        "auroc_near_within_0.01": abs(p["int8"]["auroc_near"] - p["float"]["auroc_near"]) <= AUROC_TARGET,
        "auroc_far_within_0.01": abs(p["int8"]["auroc_far"] - p["float"]["auroc_far"]) <= AUROC_TARGET,
        **{f"overhead_{key}_at_most_1.2x": ratio <= OVERHEAD_TARGET for key, ratio in ratios.items()},
    }
    return {
        "far_kind": case["far_kind"],
        "evidence": [{"name": lay.name, "kind": lay.kind, "features": lay.features} for lay in fingerprint.layers_],
        "classifier_params": int(fingerprint.model_.count_params()),
        "fingerprint_params": fingerprint.fingerprint_params(),
        "parity": parity,
        "steps": rows,
        "latency": latency,
        "ratios": ratios,
        "floor_ratios": floor_ratios,
        "targets": targets,
    }


# -------------------------------------------------------------------------------------- report
def mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def table(results: dict, timing: dict) -> str:
    lines = [
        "## Float vs int8 (LiteRT)",
        "",
        "Accuracy on the in-distribution test set; OOD AUROC of the fingerprint score (ID test vs near-OOD,",
        f"vs far-OOD). Targets: accuracy within {ACCURACY_TARGET * 100:.0f} point, AUROC within {AUROC_TARGET}.",
        "",
        "| template | metric | float | int8 | int8 - float | target |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        p = r["parity"]
        rows = (
            ("accuracy", "accuracy", "accuracy_within_1pt"),
            ("AUROC near", "auroc_near", "auroc_near_within_0.01"),
            (f"AUROC far ({r['far_kind']})", "auroc_far", "auroc_far_within_0.01"),
        )
        for label, key, target in rows:
            diff = p["int8"][key] - p["float"][key]
            lines.append(
                f"| {name} | {label} | {p['float'][key]:.3f} | {p['int8'][key]:.3f} | {diff:+.3f} | "
                f"{mark(r['targets'][target])} |"
            )
    lines += [
        "",
        "## OOD overhead, step by step",
        "",
        f"Latency per invoke in us: median over {timing['reps']} repetitions of the median of {timing['timed']} "
        f"timed invokes ({timing['warmup']} warm-ups excluded), the",
        "interpreter's invoke() alone. Flash = model bytes; arena = TFLite Micro's smallest arena (64-bit host).",
        "Ratios are to `classifier` (the classifier alone, stripped as the bundle is). `as converted`: with the",
        "names, signatures and metadata the TensorFlow Lite converter writes. Target for the bundle: at most 1.2x.",
        "",
        "| template | model | ops | tensors | MACs | constant bytes | flash | arena (activations / persistent "
        "/ allocation only) | LiteRT us | TFLM us |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        base = r["steps"]["classifier"]
        for step, row in r["steps"].items():
            rel = {key: f"{row[key]:.1f}".removesuffix(".0") for key in ("flash", "arena", "litert_us", "tflm_us")}
            if step != "classifier":
                rel = {key: f"{text} ({row[key] / base[key]:.2f}x)" for key, text in rel.items()}
            arena = f"{rel['arena']} ({row['activations']} / {row['persistent']} / {row['allocation_only']})"
            lines.append(
                f"| {name} | {step} | {row['ops']} | {row['tensors']} | {row['macs']} | {row['constant_bytes']} | "
                f"{rel['flash']} | {arena} | {rel['litert_us']} | {rel['tflm_us']} |"
            )
    lines += ["", "| template | flash | arena | LiteRT latency | TFLite Micro latency |", "|---|---|---|---|---|"]
    for name, r in results.items():
        cells = [
            f"{r['ratios'][key]:.2f}x {mark(r['targets'][f'overhead_{key}_at_most_1.2x'])}"
            for key in ("flash", "arena", "litert_us", "tflm_us")
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        FLOOR + ", against the classifier alone:",
        "",
        "| template | flash | arena | LiteRT latency | TFLite Micro latency |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        cells = [f"{r['floor_ratios'][key]:.2f}x" for key in ("flash", "arena", "litert_us", "tflm_us")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Notes:", ""]
    for name, r in results.items():
        evidence = ", ".join(f"{e['name']} ({e['kind']}, {e['features']})" for e in r["evidence"])
        lines.append(
            f"- {name}: evidence {evidence}; fingerprint {r['fingerprint_params']} / classifier "
            f"{r['classifier_params']} params."
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits images only, fewer timing repetitions")
    args = parser.parse_args(argv)
    timing = {"reps": 3, "warmup": 10, "timed": 100} if args.quick else {"reps": 5, "warmup": 20, "timed": 200}
    cases = {"images": CASES["images"]} if args.quick else CASES
    results = {}
    with tempfile.TemporaryDirectory(prefix="edgefp-int8-") as workdir:
        for name, make in cases.items():
            results[name] = evaluate(name, make(), workdir=workdir, **timing)
    save("int8" + ("_quick" if args.quick else ""), {"timing": timing, "results": results}, table(results, timing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
