"""RUN -> bundle: one fused int8 TFLite graph (classifier, autoencoders and their reconstruction errors),
the fingerprint recalibrated on the int8 model's own outputs, and a parity report that proves it."""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import warnings

import numpy as np

from edgefp import __version__, data, metrics, ood, shifts
from edgefp.bundle import ARCHIVE_SUFFIX, MODEL, Bundle, check_output, sha256
from edgefp.errors import EdgefpError
from edgefp.fsutil import check_directory_output
from edgefp.isolation import step
from edgefp.manifest import MAX_NAME, FileEntry, Input, Label, Layer, Manifest, Output, Outputs, Preprocessing, Score
from edgefp.runtime import (
    LiteRT,
    TFLiteMicro,
    captured_output,
    litert_interpreter,
    litert_module,
    quantize_input,
    read_tensors,
    tflm_arena_bytes,
)
from edgefp.trainer.fingerprint import MAX_LOGIT, NeuralFingerprint, read_fingerprint_json, sha256_file

MIN_CALIB = 20
# int8 ranges. The classifier's tensors get the ranges of the calibration samples and of 100 noisy copies
# of them (shifts.range_samples), so that faults do not saturate them before the evidence is
# measured; its logits, the range of the calibration samples alone (a fault's large logits are no
# evidence, and the max logit needs the finer steps). Every tensor the evidence computes beyond the
# classifier's gets EVIDENCE_HEADROOM times the range the calibration samples alone give it, around
# its centre: the rounding of the residual and its reconstruction adds its variance to a mean of
# squares, so a wider range costs the square of its width. Each error output and the squared
# residuals (one tensor for every autoencoder) are set from held-out data: [0, SQUARE_HEADROOM x the
# largest of the autoencoders' 99.9 % quantiles of their held-out squared residuals], and for an
# error, [0, ERROR_HEADROOM x the held-out errors' 99.9 % quantile], narrowed (never below the largest
# held-out error) until rounding at the held-out errors' geometric mean, where the evidence starts to
# count, is at most ERROR_RESOLUTION of their std in the logarithm's terms. An error beyond its range
# counts by its second value, ood.COARSE_FACTOR (about 16) times coarser; beyond that range too, an
# error is off the scale the held-out errors set, and a saturated output counts OFF_SCALE_Z (ood).
EVIDENCE_HEADROOM = 1.5
ERROR_HEADROOM = 4.0
ERROR_RESOLUTION = 0.05
SQUARE_HEADROOM = 4.0
TAIL_Z = 3.1  # the held-out errors' 99.9 % quantile under a log-normal fit (holdouts are often small)
PARITY_SAMPLES = 200


def bundle_name(out: str) -> str:
    """A C-identifier-safe name from the output path (``digits-04.efp`` -> ``digits_04``)."""
    stem = os.path.basename(os.path.normpath(out)).removesuffix(".efp")
    name = re.sub(r"[^a-z0-9_]", "_", stem.lower()).strip("_")[:MAX_NAME] or "model"
    return name if not name[0].isdigit() else f"m_{name[: MAX_NAME - 2]}"


def check_convertible(model) -> None:
    """Refuse, naming the layer, a classifier whose layers cannot become int8 microcontroller operators."""
    import keras

    pending = list(model.layers)
    while pending:
        layer = pending.pop(0)
        pending += getattr(layer, "layers", [])  # nested models
        if isinstance(layer, (keras.layers.RNN, keras.layers.Bidirectional)):
            raise EdgefpError(
                f"layer '{layer.name}' ({type(layer).__name__}) cannot be deployed int8: the TensorFlow Lite "
                "converter crashes on recurrent layers and the firmware has no kernels for them; "
                "use Conv1D layers for sequences (dilated ones for a long context)"
            )


def int8_tflite(model, calib: np.ndarray, *, name: str = "model", seed: int = 0) -> bytes:
    """A one-input Keras model as ``convert`` converts the bundle's graph before it sets the evidence ranges
    and strips it (:func:`strip`): batch size 1, the int8 ranges of the preprocessed ``calib`` samples and
    of 100 noisy copies of them. For comparing a model with its bundle's."""
    return _int8_model(_batch_of_one(model, name), shifts.range_samples(calib, seed))


def _int8_model(model, samples: np.ndarray) -> bytes:
    """Full-integer int8 TFLite of a one-input Keras model at batch size 1, calibrated on ``samples``."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([row[None]] for row in samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with (
        step("converting the model to int8 (TensorFlow Lite converter)"),
        captured_output() as messages,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")  # "Statistics for quantized inputs were expected": the input is int8 by design
        try:
            return bytes(converter.convert())
        except Exception as exc:  # noqa: BLE001 - the converter raises many types
            detail = [line for line in messages().splitlines() if "error" in line.lower()] or [str(exc)]
            raise EdgefpError(f"TensorFlow Lite could not convert the model to int8: {detail[0].strip()}") from None


def _batch_of_one(model, name: str):
    """``model`` called on a batch-size-1 input, as the converter needs it."""
    import keras

    inputs = keras.Input(tuple(model.inputs[0].shape[1:]), batch_size=1, name="input")
    return keras.Model(inputs, model(inputs), name=name)


def strip(model_bytes: bytes) -> bytes:
    """The model without what no runtime reads: tensor and graph names, signatures, description, metadata,
    and the empty buffers of the tensors computed at run time (one each, as converted: they all take
    buffer 0, the empty buffer every model starts with)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    flatbuffer_utils.strip_strings(model)
    model.metadata = model.metadataBuffer = None
    kept, renumbered = [model.buffers[0]], {}
    for tensor in (tensor for graph in model.subgraphs for tensor in graph.tensors):
        if model.buffers[tensor.buffer].data is None or len(model.buffers[tensor.buffer].data) == 0:
            tensor.buffer = 0
            continue
        if tensor.buffer not in renumbered:
            renumbered[tensor.buffer] = len(kept)
            kept.append(model.buffers[tensor.buffer])
        tensor.buffer = renumbered[tensor.buffer]
    model.buffers = kept
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def quantize(
    fingerprint: NeuralFingerprint, calib: np.ndarray, seed: int = 0, per_tensor: bool = True
) -> tuple[bytes, Outputs, tuple]:
    """The fingerprint's fused graph as an int8 TFLite model at batch size 1 (``calib`` preprocessed), with
    the int8 ranges described above, the evidence's FULLY_CONNECTED weights quantised ``per_tensor`` (else
    per output channel, as converted), the features' mean shift corrected (:func:`_correct_feature_offsets`)
    and everything no runtime reads stripped; also the output specs and the input's (scale, zero point)."""
    square_top, tops = _error_tops(fingerprint)
    fused = _batch_of_one(fingerprint.monitor_, "edgefp_model")
    model_bytes = _int8_model(fused, shifts.range_samples(calib, seed))
    sample = shifts.calibration_sample(calib, seed)
    in_distribution = _int8_model(fused, sample)
    outputs, input_quantization = _io_specs(model_bytes)
    model_bytes = _set_evidence_ranges(model_bytes, in_distribution, outputs, per_tensor, square_top, tops)
    model_bytes = _correct_feature_offsets(model_bytes, fingerprint, sample, outputs.probs.index)
    outputs = _io_specs(model_bytes)[0]
    errors = tuple(
        dataclasses.replace(spec, coarse_factor=ood.COARSE_FACTOR if spec.shape == (2,) else None)
        for spec in outputs.layer_errors
    )
    return strip(model_bytes), dataclasses.replace(outputs, layer_errors=errors), input_quantization


def _error_tops(fingerprint: NeuralFingerprint) -> tuple[float, list[float | None]]:
    """The upper ends of the int8 ranges of the squared residuals (one tensor for every autoencoder) and
    of each evidence output (``None`` for evidence that is no mean of squares), as described above."""
    x = fingerprint.prepare(fingerprint.holdout_x_)
    values = fingerprint._evidence(x)
    squares = fingerprint.squares_.predict(x, verbose=0, batch_size=256)
    bounds = np.cumsum([0] + [layer.features for layer in fingerprint.autoencoder_layers_])
    square_top = SQUARE_HEADROOM * max(
        float(np.quantile(squares[:, start:end], 0.999)) for start, end in zip(bounds[:-1], bounds[1:])
    )
    square_top += 1e-9
    tops = []
    for j, layer in enumerate(fingerprint.layers_):
        if layer.kind == MAX_LOGIT:
            tops.append(None)
            continue
        logs = np.log(values[:, j] + ood.EPS)
        largest, spread = float(values[:, j].max()), max(float(logs.std()), 1e-3)
        tail = ERROR_HEADROOM * max(largest, float(np.exp(logs.mean() + TAIL_Z * spread)))
        # a uniform rounding error of step/2 has std step/sqrt(12): in log terms, step/(sqrt(12) x value)
        resolved = 255 * ERROR_RESOLUTION * np.sqrt(12.0) * spread * float(np.exp(logs.mean()))
        tops.append(min(max(min(tail, resolved), largest) + 1e-9, square_top))
    return square_top, tops


def _set_evidence_ranges(
    model_bytes: bytes, in_distribution: bytes, outputs: Outputs, per_tensor: bool, square_top: float, tops: list
) -> bytes:
    """Set the int8 ranges of the tensors the evidence computes from ``in_distribution`` (the same graph
    calibrated on in-distribution samples alone) with headroom, and those of the squared residuals and
    the error outputs to ``square_top`` and ``tops`` (:func:`_error_tops`; the kernels requantise to
    whatever scales the tensors carry; pass-through operators keep their input's quantisation)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    ops = schema.BuiltinOperator
    pass_through = {ops.RESHAPE, ops.SQUEEZE, ops.EXPAND_DIMS, ops.STRIDED_SLICE}
    pass_through |= {ops.MAX_POOL_2D, ops.AVERAGE_POOL_2D, ops.REDUCE_MAX}
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    graph = model.subgraphs[0]
    reference = flatbuffer_utils.convert_bytearray_to_object(bytearray(in_distribution)).subgraphs[0].tensors
    if [list(t.shape) for t in reference] != [list(t.shape) for t in graph.tensors]:
        raise EdgefpError("TensorFlow Lite converted the model into two different graphs; convert it again")
    producer = {out: op for op in graph.operators for out in op.outputs}
    classifier, stack = set(), [graph.outputs[outputs.probs.index]]
    while stack:  # every tensor the class probabilities depend on
        tensor = stack.pop()
        if tensor not in classifier:
            classifier.add(tensor)
            stack += [t for t in producer[tensor].inputs if t >= 0] if tensor in producer else []
    scales = [
        None if t.quantization is None or t.quantization.scale is None else t.quantization.scale[0]
        for t in graph.tensors
    ]
    kinds = [
        max(model.operatorCodes[op.opcodeIndex].builtinCode, model.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)
        for op in graph.operators
    ]
    top = producer[graph.outputs[outputs.probs.index]]
    if kinds[graph.operators.index(top)] == ops.SOFTMAX:  # the logits: the max logit's precision, from the samples
        graph.tensors[top.inputs[0]].quantization = reference[top.inputs[0]].quantization
    for op, kind in zip(graph.operators, kinds):
        out = op.outputs[0]
        if out in classifier or kind == ops.TANH:
            continue
        if kind in pass_through:
            graph.tensors[out].quantization = graph.tensors[op.inputs[0]].quantization
            continue
        low, high = _range(reference[out].quantization)
        centre, half = (low + high) / 2, EVIDENCE_HEADROOM * (high - low) / 2
        _set_range(graph.tensors[out], centre - half, centre + half)
    for op, kind in zip(graph.operators, kinds):  # concatenated tensors share one quantisation, as they share bytes
        if kind == ops.CONCATENATION and op.outputs[0] not in classifier:
            joined = [_range(graph.tensors[t].quantization) for t in (*op.inputs, op.outputs[0])]
            low, high = min(r[0] for r in joined), max(r[1] for r in joined)
            for tensor in (*op.inputs, op.outputs[0]):
                _set_range(graph.tensors[tensor], low, high)
                while tensor in producer and kinds[graph.operators.index(producer[tensor])] in pass_through:
                    if producer[tensor].inputs[0] in classifier:
                        break
                    tensor = producer[tensor].inputs[0]
                    _set_range(graph.tensors[tensor], low, high)
    for spec, top in zip(outputs.layer_errors, tops):
        if top is not None:
            value = graph.outputs[spec.index]
            _set_range(graph.tensors[producer[value].inputs[0]], 0.0, square_top)
            _set_range(graph.tensors[value], 0.0, top)
    for op, kind in zip(graph.operators, kinds):
        if per_tensor and kind == ops.FULLY_CONNECTED and op.outputs[0] not in classifier:
            _per_tensor_weights(model, graph, op, scales[op.inputs[0]])
    weighted = {ops.FULLY_CONNECTED, ops.CONV_2D, ops.DEPTHWISE_CONV_2D}
    for op, kind in zip(graph.operators, kinds):  # int32 biases are in units of input scale x weight scale
        if kind in weighted and len(op.inputs) > 2 and op.inputs[2] >= 0:
            old = scales[op.inputs[0]]
            _rescale_bias(model, graph.tensors[op.inputs[2]], old / graph.tensors[op.inputs[0]].quantization.scale[0])
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def residual_inputs(interpreter, probs_output: int) -> tuple[int, int]:
    """The tensors of a bundle's int8 graph (in a LiteRT ``interpreter``) that its autoencoders' residual
    is computed from: the pooled, standardised features and the class means, the FULLY_CONNECTED on the
    probabilities (the ``probs_output``-th output) that the features' SUB subtracts. A classifier may
    hold SUBs and FULLY_CONNECTEDs of its own."""
    ops = interpreter._get_ops_details()
    probs = interpreter.get_output_details()[probs_output]["index"]
    (means,) = [op["outputs"][0] for op in ops if op["op_name"] == "FULLY_CONNECTED" and op["inputs"][0] == probs]
    (features,) = [op["inputs"][0] for op in ops if op["op_name"] == "SUB" and op["inputs"][1] == means]
    return int(features), int(means)


def _correct_feature_offsets(
    model_bytes: bytes, fingerprint: NeuralFingerprint, samples: np.ndarray, probs_output: int
) -> bytes:
    """Bias correction of the features the autoencoders read: the int8 classifier's rounding moves the
    in-distribution mean of each pooled, standardised feature away from the float fingerprint's, a shift
    the autoencoders would read as evidence on every sample. The mean shift on the in-distribution
    ``samples`` (preprocessed) is added to the class-mean layer's weights: every class's mean moves by it
    (the probabilities sum to 1), and the int8 residual is centred as the float one is (docs/bundle.md)."""
    import keras
    from tensorflow.lite.tools import flatbuffer_utils

    interpreter = litert_interpreter(model_bytes, experimental_preserve_all_tensors=True)
    features, class_mean = residual_inputs(interpreter, probs_output)
    quantized = quantize_input(samples, *interpreter.get_input_details()[0]["quantization"])
    with step("measuring the int8 features' mean shift (LiteRT)"):
        (measured,) = read_tensors(interpreter, quantized, [features])
    layer = fingerprint.monitor_.get_layer("fp_residual")
    exact = keras.Model(fingerprint.monitor_.inputs, layer.input[0]).predict(samples, verbose=0, batch_size=256)
    shift = np.mean(measured - exact, axis=0)

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    graph = model.subgraphs[0]
    (op,) = [op for op in graph.operators if op.outputs[0] == class_mean]
    weights = graph.tensors[op.inputs[1]]
    old = np.asarray(weights.quantization.scale, np.float64)
    buffer = model.buffers[weights.buffer]
    values = np.frombuffer(bytes(buffer.data), np.int8).reshape(len(shift), -1) * old.reshape(-1, 1) + shift[:, None]
    top = np.abs(values).max(axis=1) if len(old) > 1 else np.abs(values).max().reshape(1)
    new = np.maximum(top, 1e-12) / 127
    buffer.data = np.clip(np.round(values / new.reshape(-1, 1)), -127, 127).astype(np.int8).reshape(-1).view(np.uint8)
    weights.quantization.scale = new.astype(np.float32)
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        _rescale_bias(model, graph.tensors[op.inputs[2]], old / new)
    low, high = _range(graph.tensors[class_mean].quantization)
    _set_range(graph.tensors[class_mean], low + min(shift.min(), 0.0), high + max(shift.max(), 0.0))
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _per_tensor_weights(model, graph, op, input_scale: float) -> None:
    """Quantise a FULLY_CONNECTED's weights (and bias) per tensor rather than per output channel: one scale
    and zero point per tensor instead of one per channel, in the model and in the runtimes' memory.
    Each row keeps its values to within half a step of the largest row's scale."""
    weights = graph.tensors[op.inputs[1]]
    old = np.asarray(weights.quantization.scale, np.float64)
    if len(old) == 1:
        return
    scale = float(old.max())
    buffer = model.buffers[weights.buffer]
    values = np.frombuffer(bytes(buffer.data), np.int8).reshape(len(old), -1).astype(np.float64)
    buffer.data = (
        np.clip(np.round(values * (old / scale)[:, None]), -127, 127).astype(np.int8).reshape(-1).view(np.uint8)
    )
    _set_scale(weights, scale)
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        _rescale_bias(model, graph.tensors[op.inputs[2]], old / scale)
        _set_scale(graph.tensors[op.inputs[2]], input_scale * scale)


def _set_scale(tensor, scale: float) -> None:
    """Symmetric per-tensor quantisation (zero point 0) of a constant tensor."""
    from tensorflow.lite.python import schema_py_generated as schema

    quantization = schema.QuantizationParametersT()
    quantization.scale = np.array([scale], dtype=np.float32)
    quantization.zeroPoint = np.array([0], dtype=np.int64)
    tensor.quantization = quantization


def _rescale_bias(model, bias, ratio) -> None:
    """Multiply an int32 bias tensor's values by ``ratio`` (one, or one per channel) and divide its scales
    by it (the value it stands for is unchanged; its units follow a changed input or weight scale)."""
    if np.all(ratio == 1.0):
        return
    buffer = model.buffers[bias.buffer]
    values = np.frombuffer(bytes(buffer.data), dtype="<i4").astype(np.float64) * ratio
    buffer.data = np.clip(np.round(values), -(2**31), 2**31 - 1).astype("<i4").view(np.uint8)
    bias.quantization.scale = (np.asarray(bias.quantization.scale, np.float64) / ratio).astype(np.float32)


def _range(quantization) -> tuple[float, float]:
    scale, zero_point = float(quantization.scale[0]), int(quantization.zeroPoint[0])
    return (-128 - zero_point) * scale, (127 - zero_point) * scale


def _set_range(tensor, low: float, high: float) -> None:
    """Quantise ``tensor`` per tensor over [low, high] (which must hold 0: int8 represents it exactly)."""
    from tensorflow.lite.python import schema_py_generated as schema

    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-12) / 255.0
    quantization = schema.QuantizationParametersT()
    quantization.scale = np.array([scale], dtype=np.float32)
    quantization.zeroPoint = np.array([int(np.clip(round(-128 - low / scale), -128, 127))], dtype=np.int64)
    tensor.quantization = quantization


def _io_specs(model_bytes: bytes) -> tuple[Outputs, tuple[float, int]]:
    """Index, shape and quantisation of the probs and evidence outputs, and the input's (scale, zero point).
    The outputs are found through the model's signature (which keeps the Keras output order) when it
    has one, else in the order the model lists them."""
    interpreter = litert_module().Interpreter(model_content=model_bytes)
    details = interpreter.get_output_details()
    order = [detail["index"] for detail in details]
    signatures = interpreter._get_full_signature_list()
    if signatures:
        named = next(iter(signatures.values()))["outputs"]
        keras_order = [named[f"output_{k}"] for k in range(len(named))]
    else:
        keras_order = order
    by_index = {detail["index"]: detail for detail in details}

    def spec(tensor: int) -> Output:
        detail = by_index[tensor]
        scale, zero_point = detail["quantization"]
        return Output(order.index(tensor), tuple(int(n) for n in detail["shape"][1:]), float(scale), int(zero_point))

    specs = Outputs(probs=spec(keras_order[0]), layer_errors=tuple(spec(t) for t in keras_order[1:]))
    input_detail = interpreter.get_input_details()[0]
    return specs, input_detail["quantization"]


def convert(
    run_dir: str, calib: data.Dataset, out: str, *, name=None, ood_data=None, force=False, signing_key=None
) -> Manifest:
    """Convert a RUN into a bundle at ``out`` (directory, or ``.efp`` archive), signed with ``signing_key``
    when given (edgefp.signing); return its manifest (the parity report in ``parity``)."""
    if out.endswith(ARCHIVE_SUFFIX):  # refused now rather than after the conversion
        check_output(out, force=force)
    else:
        check_directory_output(out, "bundle", force=force)
    fingerprint = NeuralFingerprint.load(run_dir)
    check_convertible(fingerprint.model_)
    calib_x = fingerprint.prepare(calib.x, calib.name)
    if len(calib_x) < MIN_CALIB:
        raise EdgefpError(f"{calib.name}: {len(calib_x)} calibration samples; give at least {MIN_CALIB}")
    model_bytes, outputs, (input_scale, input_zero_point) = quantize(fingerprint, calib_x)
    TFLiteMicro(model_bytes)  # refuses, naming the operator, a model a microcontroller could not run
    meta = read_fingerprint_json(run_dir)
    pre = fingerprint.preprocessing_
    standardize = pre["type"] == "standardize"
    manifest = Manifest(
        name=name or bundle_name(out),
        edgefp_version=__version__,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        source={
            "fingerprint_sha256": sha256_file(os.path.join(run_dir, "fingerprint.json")),
            "classifier_sha256": meta["classifier"]["sha256"],
        },
        model=MODEL,
        input=Input(
            shape=tuple(int(n) for n in fingerprint.model_.inputs[0].shape[1:]),
            dtype="int8",
            scale=float(input_scale),
            zero_point=int(input_zero_point),
            preprocessing=Preprocessing("standardize", tuple(pre["mean"]), tuple(pre["std"]))
            if standardize
            else Preprocessing(),
        ),
        outputs=outputs,
        labels=tuple(Label(label["value"], label["name"], label.get("index")) for label in fingerprint.labels_),
        layers=tuple(
            Layer(layer.name, layer.kind, layer.transform, layer.weight, layer.features)
            for layer in fingerprint.layers_
        ),
        score=Score(combine=ood.COMBINE, eps=ood.EPS, target_fpr=fingerprint.fpr),
        ops=tuple(LiteRT(model_bytes).ops()),
        tflm_arena_bytes=tflm_arena_bytes(model_bytes),
        flash_bytes=len(model_bytes),
        files={MODEL: FileEntry(sha256(model_bytes), len(model_bytes))},
    )
    bundle = Bundle(manifest, {MODEL: model_bytes})
    if signing_key is not None:
        from edgefp.signing import next_version

        bundle.sign(signing_key, next_version())
    recalibrate(bundle, fingerprint.holdout_x_, fingerprint.fpr)
    bundle.manifest = dataclasses.replace(bundle.manifest, parity=parity(fingerprint, bundle, calib, ood_data))
    bundle.write(out, force=force)
    return bundle.manifest


def recalibrate(bundle: Bundle, holdout_x: np.ndarray, fpr: float) -> None:
    """Evidence statistics, score tables and threshold from the int8 model's own outputs on held-out data."""
    probs_q, values_q = bundle.invoke_all(LiteRT(bundle.model_bytes), bundle.quantize(holdout_x))
    _, values = bundle.dequantize(probs_q, values_q)
    layers = bundle.manifest.layers
    values = ood.resolved(values, [output.scale for output in bundle.manifest.outputs.layer_errors], bundle.transforms)
    calibration = ood.calibrate(values, fpr, bundle.transforms, [layer.weight for layer in layers])
    calibrated = []
    for j, (layer, output) in enumerate(zip(layers, bundle.manifest.outputs.layer_errors)):
        z_mean, z_std = float(calibration.z_mean[j]), float(calibration.z_std[j])
        scale_by, coarse = layer.weight * len(layers), output.coarse_factor
        table = ood.z_table(output.scale, output.zero_point, z_mean, z_std, layer.transform, scale_by, coarse)
        calibrated.append(
            dataclasses.replace(
                layer,
                z_mean=z_mean,
                z_std=z_std,
                holdout_quantiles=tuple(calibration.value_quantiles[j]),
                z_table=tuple(table),
            )
        )
    bundle.manifest = dataclasses.replace(bundle.manifest, layers=tuple(calibrated))
    units = bundle.score_units(values_q)
    threshold_units = int(np.quantile(units, 1.0 - fpr, method="higher"))
    scale = ood.SCORE_UNIT * len(layers)
    score = dataclasses.replace(
        bundle.manifest.score,
        unit=ood.SCORE_UNIT,
        threshold_units=threshold_units,
        threshold=threshold_units / scale,
        holdout_quantiles=tuple(ood.quantiles(units / scale)),
        n_holdout=len(holdout_x),
    )
    bundle.manifest = dataclasses.replace(bundle.manifest, score=score)


def parity(fingerprint, bundle: Bundle, calib: data.Dataset, ood_data) -> dict:
    """Float vs int8 and LiteRT vs TFLite Micro on the same inputs."""
    holdout = fingerprint.holdout_x_
    report = {"n_holdout": len(holdout)}
    float_holdout, int8_holdout = fingerprint.score(holdout), bundle.score(holdout)
    int8_accuracy = bundle.score(calib.x).summary(calib.y, bundle.label_values)["accuracy"]
    if int8_accuracy is not None:
        report["float_accuracy"] = fingerprint.score(calib.x).summary(calib.y, bundle.label_values)["accuracy"]
        report["int8_accuracy"] = int8_accuracy
    verdicts = [np.mean(float_holdout.is_ood == int8_holdout.is_ood)]
    report["float_id_flagged"] = float(np.mean(float_holdout.is_ood))
    report["int8_id_flagged"] = float(np.mean(int8_holdout.is_ood))
    tflm_inputs = holdout[:PARITY_SAMPLES]
    if ood_data is not None:
        float_ood, int8_ood = fingerprint.score(ood_data.x), bundle.score(ood_data.x)
        report["float_auroc"] = metrics.auroc(float_holdout.ood_score, float_ood.ood_score)
        report["int8_auroc"] = metrics.auroc(int8_holdout.ood_score, int8_ood.ood_score)
        report["float_ood_flagged"] = float(np.mean(float_ood.is_ood))
        report["int8_ood_flagged"] = float(np.mean(int8_ood.is_ood))
        values_q = bundle.invoke_all(LiteRT(bundle.model_bytes), bundle.quantize(ood_data.x))[1]
        top = values_q == bundle.most_unusual_q()  # an output is off its scale when all its values are
        report["ood_values_saturated"] = float(np.mean([top[:, c].all(axis=1) for c in bundle.value_columns]))
        verdicts.append(np.mean(float_ood.is_ood == int8_ood.is_ood))
        tflm_inputs = np.concatenate([tflm_inputs, ood_data.x[: PARITY_SAMPLES // 2]])
    report["verdict_agreement"] = float(np.mean(verdicts))
    # Evidence saturated at its least usual end on every output must still be flagged: saturation never hides OOD.
    top = bundle.decide(np.zeros((1, len(bundle.label_values)), np.int8), bundle.most_unusual_q()[None])
    report["saturated_score"] = float(top.ood_score[0])
    report["saturated_is_ood"] = bool(top.is_ood[0])
    report.update(runtime_agreement(bundle, tflm_inputs))
    return report


def runtime_agreement(bundle: Bundle, x: np.ndarray) -> dict:
    """How often LiteRT and TFLite Micro give identical int8 outputs, and the largest difference."""
    x_q = bundle.quantize(x)
    litert = bundle.invoke_all(LiteRT(bundle.model_bytes), x_q)
    micro = bundle.invoke_all(TFLiteMicro(bundle.model_bytes, bundle.manifest.tflm_arena_bytes), x_q)
    same = np.ones(len(x_q), dtype=bool)
    largest = 0
    for a, b in zip(litert, micro):
        diff = np.abs(a.astype(np.int16) - b.astype(np.int16)).reshape(len(x_q), -1).max(axis=1)
        same &= diff == 0
        largest = max(largest, int(diff.max()))
    return {
        "runtime_samples": len(x_q),
        "runtime_identical": float(np.mean(same)),
        "runtime_max_diff_lsb": largest,
        "runtime_pred_agreement": float(np.mean(np.argmax(litert[0], 1) == np.argmax(micro[0], 1))),
    }
