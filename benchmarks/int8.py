"""The int8 bundle on the host: float vs int8 parity, the cost of OOD detection on a device, and the
design choice of one fused graph against a classifier followed by one small model per layer.

For digits (train on 0-4; near-OOD 5-9; far-OOD pure Gaussian noise) and basic_motions (one class
unseen; far-OOD noisy signals), a classifier is trained and fingerprinted, saved as a RUN and
converted to a bundle. Then:

1. parity: accuracy on the in-distribution test set and OOD AUROC (ID test vs near-OOD, vs far-OOD),
   float (Keras) against int8 (LiteRT); targets: accuracy within 1 point, AUROC within 0.01;
2. overhead: the deployed model against the classifier alone (both int8, same converter settings,
   same representative data), on LiteRT and TFLite Micro: latency per invoke (warm-ups excluded,
   the models alternated between repetitions so that they share the machine's noise), flash (model
   bytes) and TFLite Micro arena; target: at most 1.2x each;
3. fused vs separate: the classifier with its reduced taps as extra outputs, then one int8 model per
   layer (standardisation, autoencoder, error) fed the int8 outputs in turn; latency, flash, arena
   (largest arena plus the intermediate tensors held between invokes) and int8 AUROC.

Latency is reported two ways: `invoke`, the interpreter's invoke() alone (what a device spends in
the kernels), and `end to end`, setting the input, invoking and reading every output through
Python (for the separate design also handing each output on, requantised in NumPy where scales
differ). The targets are judged on `invoke`; Python's per-tensor cost inflates the other.

    python -m benchmarks.int8            # digits and basic_motions, 5 x 200 timed invokes
    python -m benchmarks.int8 --quick    # digits only, 3 x 100 timed invokes
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np

from benchmarks.common import save
from benchmarks.ood_quality import experiments
from edgefp import data, metrics, ood, shifts
from edgefp.bundle import Bundle
from edgefp.converter import convert as convert_module
from edgefp.runtime import LiteRT, TFLiteMicro, captured_output, tflm_arena_bytes
from edgefp.trainer import train

ACCURACY_TARGET = 0.01  # int8 accuracy within 1 point of float
AUROC_TARGET = 0.01
OVERHEAD_TARGET = 1.2
LATENCY_SAMPLES = 200  # distinct inputs cycled through while timing
RUNTIMES = ("litert", "tflm")


# ----------------------------------------------------------------------------------------- data
def digits_case() -> dict:
    train_set = data.load("digits:train:0-4")
    id_test = data.load("digits:test:0-4")
    near = data.load("digits:test:5-9")
    return {"train": train_set, "id_test": id_test, "near": near.x, "far_kind": "gaussian", "seed": 0}


def motions_case() -> dict:
    """The first basic_motions entry of ood_quality's experiments, split as ood_quality.evaluate does."""
    name, dataset, classes, _ = next(e for e in experiments(quick=True) if e[0] == "basic_motions")
    seed = 0
    test = data.stratified_split(dataset.y, 0.4, seed=seed)
    known = np.isin(dataset.y, classes)
    return {
        "train": dataset.subset(known & ~test, f"{name}:train"),
        "id_test": dataset.subset(known & test, f"{name}:test"),
        "near": dataset.x[~known],
        "far_kind": "noise",
        "seed": seed,
    }


# ------------------------------------------------------------------------------------ conversion
def representative_data(calib_x: np.ndarray, seed: int = 0) -> np.ndarray:
    """Exactly the representative set ``convert.quantize`` builds from the same calibration data."""
    rng = np.random.default_rng(seed)
    sample = calib_x[rng.permutation(len(calib_x))[: convert_module.MAX_REPRESENTATIVE]]
    share = max(1, int(convert_module.RANGE_SHARE * len(sample)))
    wide = [shifts.apply(sample[:share], kind, seed) for kind in convert_module.RANGE_SHIFTS]
    return np.concatenate([sample, *wide]).astype(np.float32)


def int8_tflite(model, representative: list[np.ndarray]) -> bytes:
    """Full-integer int8 TFLite with ``quantize``'s converter settings; ``representative`` holds one
    array (N, ...) per model input, in the order of the model's inputs (fed by input name)."""
    import tensorflow as tf

    names = [tensor.name.split(":")[0] for tensor in model.inputs]
    n = len(representative[0])
    if len(names) == 1:  # as quantize feeds it
        samples = lambda: ([representative[0][i : i + 1]] for i in range(n))  # noqa: E731
    else:
        samples = lambda: ({k: a[i : i + 1] for k, a in zip(names, representative)} for i in range(n))  # noqa: E731
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = samples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with captured_output(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bytes(converter.convert())


def classifier_only(fingerprint):
    import keras

    inp = keras.Input(tuple(fingerprint.model_.inputs[0].shape[1:]), batch_size=1, name="input")
    return keras.Model(inp, fingerprint.model_(inp), name="classifier_only")


def fused_keras(fingerprint):
    """The graph ``quantize`` converts (to check that these settings reproduce the bundle's model)."""
    import keras

    inp = keras.Input(tuple(fingerprint.model_.inputs[0].shape[1:]), batch_size=1, name="input")
    return keras.Model(inp, fingerprint.monitor_(inp), name="edgefp_model")


def separate_keras(fingerprint):
    """The classifier with outputs (probs, reduced tap 1..L), and per layer a model (tap, probs) -> error,
    the same arithmetic as ``NeuralFingerprint._build_monitor``."""
    import keras

    layers = fingerprint.layers_
    reduced, _, _, probs = fingerprint._reduced_taps([lay.name for lay in layers], [lay.pool for lay in layers])
    tapped = keras.Model(fingerprint.model_.inputs, [probs, *reduced])
    inp = keras.Input(tuple(fingerprint.model_.inputs[0].shape[1:]), batch_size=1, name="input")
    head = keras.Model(inp, tapped(inp), name="classifier_taps")
    n_classes = int(probs.shape[-1])
    tails = []
    for index, (layer, ae) in enumerate(zip(layers, fingerprint.autoencoders_)):
        # names sort in input order, whatever order the converter's signature lists them in
        t = keras.Input((layer.features,), batch_size=1, name=f"a{index}_tap")
        p = keras.Input((n_classes,), batch_size=1, name=f"b{index}_probs")
        z = (t - np.asarray(layer.mean, np.float32)) * (1.0 / np.asarray(layer.std, np.float32))
        error = keras.ops.mean(keras.ops.square(ae([z, p]) - z), axis=-1, keepdims=True)
        tails.append(keras.Model([t, p], error, name=f"layer{index}"))
    return tapped, head, tails


def graph_parts(model_bytes: bytes) -> dict:
    """Operators, tensors and constant-data bytes (weights, biases, constants) of a TFLite flatbuffer;
    the rest of its bytes are graph structure: tensor names, shapes, quantisation tables, operators."""
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
    return {
        "ops": len(graph.operators),
        "tensors": len(graph.tensors),
        "macs": macs,
        "constant_bytes": int(constants),
    }


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


# ------------------------------------------------------------------------------------- running
class Runner:
    """One int8 model on one runtime, with its tensors in Keras order (inputs and outputs) and their
    quantisation. ``invoke_ns`` holds the time spent in the interpreter's invoke() alone."""

    def __init__(self, model_bytes: bytes, runtime: str, arena: int | None = None):
        probe = LiteRT(model_bytes)._interpreter  # the wrappers set one input; this model may have two
        ins, outs = probe.get_input_details(), probe.get_output_details()
        signature = next(iter(probe._get_full_signature_list().values()))
        in_names = sorted(signature["inputs"])  # our input names sort in Keras order
        in_order = [d["index"] for d in ins]
        self.in_pos = [in_order.index(signature["inputs"][name]) for name in in_names]
        out_order = [d["index"] for d in outs]
        n_out = len(signature["outputs"])
        keys = [f"output_{i}" for i in range(n_out)] if n_out > 1 else list(signature["outputs"])
        self.out_pos = [out_order.index(signature["outputs"][key]) for key in keys]
        self.in_q = [ins[i]["quantization"] for i in self.in_pos]
        self.out_q = [outs[i]["quantization"] for i in self.out_pos]
        self.runtime = runtime
        if runtime == "litert":
            self._interp = probe
            self._in_index = [ins[i]["index"] for i in self.in_pos]
            self._out_index = [outs[i]["index"] for i in self.out_pos]
        else:
            self._interp = TFLiteMicro(model_bytes, arena)._interpreter
        self.invoke_ns = 0

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        """Run one sample (no batch axis), one int8 array per input; return every output (no batch axis)."""
        interp = self._interp
        if self.runtime == "litert":
            for index, x in zip(self._in_index, inputs):
                interp.set_tensor(index, x[None])
            start = time.perf_counter_ns()
            interp.invoke()
            self.invoke_ns += time.perf_counter_ns() - start
            return [interp.get_tensor(index)[0] for index in self._out_index]
        for pos, x in zip(self.in_pos, inputs):
            interp.set_input(x[None], pos)
        start = time.perf_counter_ns()
        interp.invoke()
        self.invoke_ns += time.perf_counter_ns() - start
        return [interp.get_output(pos)[0] for pos in self.out_pos]


def quantize(x: np.ndarray, q) -> np.ndarray:
    scale, zero_point = q
    return np.clip(np.round(x / np.float32(scale)) + zero_point, -128, 127).astype(np.int8)


def dequantize(q_values: np.ndarray, q) -> np.ndarray:
    scale, zero_point = q
    return (np.asarray(q_values, np.float32) - zero_point) * np.float32(scale)


def requantizer(source, target):
    """int8 values in ``source`` quantisation -> ``target`` quantisation (identity when they match)."""
    if tuple(source) == tuple(target):
        return None
    ratio = np.float32(source[0] / target[0])
    return lambda v: np.clip(np.round((v.astype(np.float32) - source[1]) * ratio) + target[1], -128, 127).astype(
        np.int8
    )


class Separate:
    """The classifier-with-taps model, then one model per layer, invoked in turn on int8 tensors."""

    def __init__(self, head: bytes, tails: list[bytes], runtime: str, arenas=None):
        arenas = arenas or [None] * (1 + len(tails))
        self.head = Runner(head, runtime, arenas[0])
        self.tails = [Runner(tail, runtime, arena) for tail, arena in zip(tails, arenas[1:])]
        self.handoff = [
            (requantizer(self.head.out_q[1 + j], tail.in_q[0]), requantizer(self.head.out_q[0], tail.in_q[1]))
            for j, tail in enumerate(self.tails)
        ]

    @property
    def invoke_ns(self) -> int:
        return self.head.invoke_ns + sum(tail.invoke_ns for tail in self.tails)

    @invoke_ns.setter
    def invoke_ns(self, value: int) -> None:
        for runner in (self.head, *self.tails):
            runner.invoke_ns = value

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        probs, *taps = self.head(x)
        errors = []
        for tail, tap, (to_tap, to_probs) in zip(self.tails, taps, self.handoff):
            errors.append(tail(to_tap(tap) if to_tap else tap, to_probs(probs) if to_probs else probs)[0])
        return [probs, *errors]

    def errors_q(self) -> list:
        """Output quantisation of (probs, error 1..L)."""
        return [self.head.out_q[0], *[tail.out_q[0] for tail in self.tails]]

    def requantised(self) -> dict:
        return {
            "taps": sum(to_tap is not None for to_tap, _ in self.handoff),
            "probs": sum(to_probs is not None for _, to_probs in self.handoff),
            "layers": len(self.handoff),
        }


def time_variants(variants: dict, inputs: dict, reps: int, warmup: int, timed: int) -> dict:
    """Per variant: median over repetitions of the per-rep median invoke and end-to-end time (us),
    with the spread of the repetition medians. The variants alternate order between repetitions."""
    names = list(variants)
    samples = {name: {"invoke": [], "end_to_end": []} for name in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            run, xs = variants[name], inputs[name]
            for i in range(warmup):
                run(xs[i % len(xs)])
            invoke, total = np.empty(timed), np.empty(timed)
            for i in range(timed):
                run.invoke_ns = 0
                start = time.perf_counter_ns()
                run(xs[i % len(xs)])
                total[i] = time.perf_counter_ns() - start
                invoke[i] = run.invoke_ns
            samples[name]["invoke"].append(float(np.median(invoke)) / 1e3)
            samples[name]["end_to_end"].append(float(np.median(total)) / 1e3)
    return {
        name: {
            kind: {"median_us": float(np.median(v)), "min_us": float(np.min(v)), "max_us": float(np.max(v)), "reps": v}
            for kind, v in samples[name].items()
        }
        for name in names
    }


# ------------------------------------------------------------------------------------ evaluation
def evaluate(name: str, case: dict, reps: int, warmup: int, timed: int, workdir: str) -> dict:
    started = time.monotonic()
    train_set, id_test, seed = case["train"], case["id_test"], case["seed"]
    near = case["near"]
    far = shifts.apply(id_test.x, case["far_kind"], seed=seed + 1)
    fingerprint = train(train_set, seed=seed, progress=False)
    run_dir, out = os.path.join(workdir, f"{name}_run"), os.path.join(workdir, f"{name}_bundle")
    fingerprint.save(run_dir)
    manifest = convert_module.convert(run_dir, train_set, out, ood_data=data.Dataset(near, None, f"{name}:near"))
    bundle = Bundle.load(out)
    fused_bytes = bundle.model_bytes
    seconds = {"train_convert": time.monotonic() - started}
    print(f"{name}: trained and converted in {seconds['train_convert']:.0f} s", file=sys.stderr)

    # 1. parity, float (Keras) vs int8 (LiteRT)
    float_scores = {k: fingerprint.score(x) for k, x in (("id", id_test.x), ("near", near), ("far", far))}
    int8_scores = {k: bundle.score(x) for k, x in (("id", id_test.x), ("near", near), ("far", far))}
    parity = {}
    for label, scores in (("float", float_scores), ("int8", int8_scores)):
        parity[label] = {
            "accuracy": float(np.mean(scores["id"].pred == id_test.y)),
            "auroc_near": metrics.auroc(scores["id"].ood_score, scores["near"].ood_score),
            "auroc_far": metrics.auroc(scores["id"].ood_score, scores["far"].ood_score),
            "id_flagged": float(np.mean(scores["id"].is_ood)),
        }

    # 2./3. the other int8 models, with the converter settings and representative data of the bundle
    started = time.monotonic()
    representative = representative_data(fingerprint.prepare(train_set.x))
    classifier_bytes = int8_tflite(classifier_only(fingerprint), [representative])
    reproduces = int8_tflite(fused_keras(fingerprint), [representative]) == fused_bytes
    tapped, head, tails = separate_keras(fingerprint)
    probs_r, *taps_r = tapped.predict(representative, verbose=0, batch_size=256)
    head_bytes = int8_tflite(head, [representative])
    tail_bytes = [int8_tflite(tail, [tap, probs_r]) for tail, tap in zip(tails, taps_r)]
    seconds["convert_variants"] = time.monotonic() - started

    # separate design: int8 outputs, recalibrated on held-out data as convert.recalibrate does
    separate = Separate(head_bytes, tail_bytes, "litert")
    separate_q = separate.errors_q()

    def separate_scores(x: np.ndarray, mu=None, sigma=None):
        xq = quantize(fingerprint.prepare(x), separate.head.in_q[0])
        rows = [separate(sample) for sample in xq]
        probs = np.stack([r[0] for r in rows])
        errors = np.stack(
            [np.concatenate([dequantize(r[1 + j], separate_q[1 + j]) for j in range(len(tail_bytes))]) for r in rows]
        )
        return probs, errors

    _, holdout_errors = separate_scores(fingerprint.holdout_x_)
    mu, sigma = ood.log_error_stats(holdout_errors)
    threshold = ood.threshold_at_fpr(ood.ood_score(holdout_errors, mu, sigma), fingerprint.fpr)
    sep = {}
    for k, x in (("id", id_test.x), ("near", near), ("far", far)):
        probs, errors = separate_scores(x)
        sep[k] = (fingerprint.label_values_[np.argmax(probs, axis=1)], ood.ood_score(errors, mu, sigma))
    parity["int8_separate"] = {
        "accuracy": float(np.mean(sep["id"][0] == id_test.y)),
        "auroc_near": metrics.auroc(sep["id"][1], sep["near"][1]),
        "auroc_far": metrics.auroc(sep["id"][1], sep["far"][1]),
        "id_flagged": float(np.mean(sep["id"][1] > threshold)),
    }
    classifier_litert = Runner(classifier_bytes, "litert")
    xq_cls = quantize(fingerprint.prepare(id_test.x), classifier_litert.in_q[0])
    parity["int8_classifier_only"] = {
        "accuracy": float(
            np.mean(fingerprint.label_values_[[np.argmax(classifier_litert(s)[0]) for s in xq_cls]] == id_test.y)
        )
    }

    # sizes
    arenas = {
        "classifier": tflm_arena_bytes(classifier_bytes),
        "fused": int(manifest["tflm_arena_bytes"]),
        "separate_models": [tflm_arena_bytes(b) for b in [head_bytes, *tail_bytes]],
    }
    n_classes = len(fingerprint.labels_)
    held = n_classes + sum(layer.features for layer in fingerprint.layers_) + len(fingerprint.layers_)
    arenas["separate_intermediate"] = held
    arenas["separate"] = max(arenas["separate_models"]) + held
    arenas["separate_sum_of_arenas"] = sum(arenas["separate_models"]) + held
    flash = {
        "classifier": len(classifier_bytes),
        "fused": len(fused_bytes),
        "separate_models": [len(b) for b in [head_bytes, *tail_bytes]],
    }
    flash["separate"] = sum(flash["separate_models"])
    parts = {
        "classifier": {**graph_parts(classifier_bytes), **tflm_arena_parts(classifier_bytes, arenas["classifier"])},
        "fused": {**graph_parts(fused_bytes), **tflm_arena_parts(fused_bytes, arenas["fused"])},
        "separate_models": [
            {**graph_parts(b), **tflm_arena_parts(b, a)}
            for b, a in zip([head_bytes, *tail_bytes], arenas["separate_models"])
        ],
    }
    parts["separate"] = {
        key: sum(p[key] for p in parts["separate_models"])
        for key in ("ops", "tensors", "macs", "constant_bytes", "activations", "persistent")
    }

    # latency, all variants of one runtime in the same loop
    started = time.monotonic()
    x_lat = fingerprint.prepare(id_test.x)[:LATENCY_SAMPLES]
    latency = {}
    for runtime in RUNTIMES:
        tflm = runtime == "tflm"
        variants = {
            "classifier": Runner(classifier_bytes, runtime, arenas["classifier"] if tflm else None),
            "fused": Runner(fused_bytes, runtime, arenas["fused"] if tflm else None),
            "separate": Separate(head_bytes, tail_bytes, runtime, arenas["separate_models"] if tflm else None),
        }
        in_q = {
            "classifier": variants["classifier"].in_q[0],
            "fused": variants["fused"].in_q[0],
            "separate": variants["separate"].head.in_q[0],
        }
        inputs = {k: quantize(x_lat, q) for k, q in in_q.items()}
        latency[runtime] = time_variants(variants, inputs, reps, warmup, timed)
    seconds["latency"] = time.monotonic() - started

    ratios = {}
    for design in ("fused", "separate"):
        ratios[design] = {
            f"latency_{runtime}": latency[runtime][design]["invoke"]["median_us"]
            / latency[runtime]["classifier"]["invoke"]["median_us"]
            for runtime in RUNTIMES
        }
        ratios[design].update(
            {
                f"latency_{runtime}_end_to_end": latency[runtime][design]["end_to_end"]["median_us"]
                / latency[runtime]["classifier"]["end_to_end"]["median_us"]
                for runtime in RUNTIMES
            }
        )
        ratios[design]["flash"] = flash[design] / flash["classifier"]
        ratios[design]["arena"] = arenas[design] / arenas["classifier"]

    targets = {
        "accuracy_within_1pt": abs(parity["int8"]["accuracy"] - parity["float"]["accuracy"]) <= ACCURACY_TARGET,
        "auroc_near_within_0.01": abs(parity["int8"]["auroc_near"] - parity["float"]["auroc_near"]) <= AUROC_TARGET,
        "auroc_far_within_0.01": abs(parity["int8"]["auroc_far"] - parity["float"]["auroc_far"]) <= AUROC_TARGET,
        **{
            f"overhead_{key}_at_most_1.2x": bool(value <= OVERHEAD_TARGET)
            for key, value in ratios["fused"].items()
            if "end_to_end" not in key
        },
    }
    targets = {k: bool(v) for k, v in targets.items()}
    for key, ok in targets.items():
        print(f"{name}: {key}: {'PASS' if ok else 'MISS'}", file=sys.stderr)
    return {
        "n": {"train": len(train_set), "id_test": len(id_test), "near": len(near), "far": len(far)},
        "far_kind": case["far_kind"],
        "layers": [
            {"name": layer.name, "features": layer.features, "bottleneck": layer.bottleneck}
            for layer in fingerprint.layers_
        ],
        "classifier_params": int(fingerprint.model_.count_params()),
        "autoencoder_params": fingerprint.autoencoder_params(),
        "parity": parity,
        "convert_parity": manifest["parity"],
        "converter_settings_reproduce_bundle": bool(reproduces),
        "ops": {"classifier": LiteRT(classifier_bytes).ops(), "fused": manifest["ops"]},
        "flash_bytes": flash,
        "parts": parts,
        "arena_bytes": arenas,
        "latency": latency,
        "ratios": ratios,
        "separate_requantised": separate.requantised(),
        "targets": targets,
        "seconds": seconds,
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
        "| data set | metric | float | int8 | int8 - float | target |",
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
        "## OOD overhead: deployed (fused) model vs the classifier alone, both int8",
        "",
        f"Latency per invoke in us: median over {timing['reps']} repetitions of the median of {timing['timed']} "
        f"timed invokes ({timing['warmup']} warm-ups excluded), [min-max of the repetition medians]; `invoke` is",
        "the interpreter's invoke() alone, `e2e` adds setting the input and reading every output from Python.",
        f"Flash = model bytes; arena = TFLite Micro's smallest arena. Target: at most {OVERHEAD_TARGET}x.",
        "",
        "| data set | quantity | classifier | fused | fused / classifier | target |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lat, ratios, targets = r["latency"], r["ratios"]["fused"], r["targets"]
        for runtime in RUNTIMES:
            for kind, short in (("invoke", ""), ("end_to_end", "_end_to_end")):
                c, f = lat[runtime]["classifier"][kind], lat[runtime]["fused"][kind]
                target = mark(targets[f"overhead_latency_{runtime}_at_most_1.2x"]) if kind == "invoke" else "-"
                lines.append(
                    f"| {name} | {runtime} latency, {'invoke' if kind == 'invoke' else 'e2e'} (us) | "
                    f"{c['median_us']:.1f} [{c['min_us']:.1f}-{c['max_us']:.1f}] | "
                    f"{f['median_us']:.1f} [{f['min_us']:.1f}-{f['max_us']:.1f}] | "
                    f"{ratios[f'latency_{runtime}{short}']:.2f}x | {target} |"
                )
        for label, key in (("flash (bytes)", "flash"), ("TFLM arena (bytes)", "arena")):
            source = r["flash_bytes"] if key == "flash" else r["arena_bytes"]
            lines.append(
                f"| {name} | {label} | {source['classifier']} | {source['fused']} | {ratios[key]:.2f}x | "
                f"{mark(targets[f'overhead_{key}_at_most_1.2x'])} |"
            )
    lines += [
        "",
        "Where the overhead lives: operators and tensors in the graph; flash split into constant data",
        "(weights, biases, standardisation constants) and graph structure (names, shapes, quantisation",
        "tables, operators); TFLite Micro's arena split into planned activations, persistent bookkeeping",
        "(tensor and node structs, kernel data) and what is only needed while allocating.",
        "",
        "| data set | model | ops | tensors | MACs (conv, dense) | constant bytes | structure bytes "
        "| activations | persistent | allocation only |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = ("ops", "tensors", "macs", "constant_bytes", "structure_bytes", "activations", "persistent")
    for name, r in results.items():
        rows = {}
        for model in ("classifier", "fused", "separate"):
            rows[model] = {**r["parts"][model]}
            rows[model]["structure_bytes"] = r["flash_bytes"][model] - rows[model]["constant_bytes"]
            rows[model].setdefault("allocation_only", None)
        rows["fused / classifier"] = {
            key: rows["fused"][key] / rows["classifier"][key] if rows["classifier"][key] else None
            for key in (*keys, "allocation_only")
        }
        for model, row in rows.items():
            label = "separate (sum)" if model == "separate" else model
            cells = [
                "-" if row[key] is None else f"{row[key]:.2f}x" if "/" in model else str(row[key])
                for key in (*keys, "allocation_only")
            ]
            lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Fused vs separate models (int8)",
        "",
        "Separate: the classifier with its reduced taps as extra outputs, then one model per layer",
        "(standardisation, autoencoder, error) fed the int8 tap and probabilities (requantised in NumPy",
        "where the scales differ; that is included in e2e). Its arena is the largest of its models' arenas",
        "plus the intermediate bytes held between invokes (probs, taps, errors); its AUROC is from its",
        "own int8 outputs, recalibrated on the held-out data as the bundle is. Ratios are to the classifier.",
        "Its latency was measured with every interpreter kept alive, i.e. with all its arenas at once (Notes);",
        "the smaller max-plus-intermediates arena needs one shared arena re-allocated for each model on each",
        "sample, a cost the latency does not include.",
        "",
        "| data set | design | models | LiteRT invoke (us) | LiteRT e2e (us) | TFLM invoke (us) | TFLM e2e (us) "
        "| flash (bytes) | arena (bytes) | accuracy | AUROC near | AUROC far |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        for design in ("classifier", "fused", "separate"):
            lat = r["latency"]
            models = {"classifier": 1, "fused": 1, "separate": len(r["flash_bytes"]["separate_models"])}[design]
            cells = []
            for runtime in RUNTIMES:
                for kind in ("invoke", "end_to_end"):
                    value = lat[runtime][design][kind]["median_us"]
                    ratio = value / lat[runtime]["classifier"][kind]["median_us"]
                    cells.append(f"{value:.1f} ({ratio:.2f}x)" if design != "classifier" else f"{value:.1f}")
            flash, arena = r["flash_bytes"][design], r["arena_bytes"][design]
            if design == "classifier":
                p = r["parity"]["int8_classifier_only"]
                quality = [f"{p['accuracy']:.3f}", "-", "-"]
                cells += [str(flash), str(arena)]
            else:
                p = r["parity"]["int8" if design == "fused" else "int8_separate"]
                quality = [f"{p['accuracy']:.3f}", f"{p['auroc_near']:.3f}", f"{p['auroc_far']:.3f}"]
                cells += [
                    f"{flash} ({flash / r['flash_bytes']['classifier']:.2f}x)",
                    f"{arena} ({arena / r['arena_bytes']['classifier']:.2f}x)",
                ]
            lines.append(f"| {name} | {design} | {models} | " + " | ".join(cells + quality) + " |")
    lines += ["", "Notes:", ""]
    for name, r in results.items():
        req, arena = r["separate_requantised"], r["arena_bytes"]
        layers = ", ".join(f"{lay['name']} ({lay['features']})" for lay in r["layers"])
        lines.append(
            f"- {name}: layers {layers}; "
            f"autoencoders {r['autoencoder_params']} / classifier {r['classifier_params']} params; "
            f"separate arenas {arena['separate_models']} + {arena['separate_intermediate']} intermediate bytes "
            f"(all arenas at once: {arena['separate_sum_of_arenas']}); "
            f"requantised hand-offs: {req['taps']}/{req['layers']} taps, {req['probs']}/{req['layers']} probs; "
            f"benchmark's converter settings reproduce the bundle's model byte for byte: "
            f"{r['converter_settings_reproduce_bundle']}."
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="digits only, fewer timing repetitions")
    args = parser.parse_args(argv)
    timing = {"reps": 3, "warmup": 10, "timed": 100} if args.quick else {"reps": 5, "warmup": 20, "timed": 200}
    cases = {"digits": digits_case}
    if not args.quick:
        cases["basic_motions"] = motions_case
    results = {}
    with tempfile.TemporaryDirectory(prefix="edgefp-int8-") as workdir:
        for name, make in cases.items():
            results[name] = evaluate(name, make(), workdir=workdir, **timing)
    save("int8" + ("_quick" if args.quick else ""), {"timing": timing, "results": results}, table(results, timing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
