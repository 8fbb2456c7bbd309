"""RUN -> bundle: one fused int8 TFLite graph (classifier, autoencoders and their reconstruction errors),
the fingerprint recalibrated on the int8 model's own outputs, and a parity report that proves it."""

from __future__ import annotations

import datetime
import os
import re
import warnings

import numpy as np

from edgefp import __version__, data, metrics, ood, shifts
from edgefp.bundle import ARCHIVE_SUFFIX, MODEL, SCHEMA, SCHEMA_VERSION, Bundle, check_output, sha256
from edgefp.errors import EdgefpError
from edgefp.fsutil import check_directory_output
from edgefp.isolation import step
from edgefp.manifest import MAX_NAME
from edgefp.runtime import LiteRT, TFLiteMicro, captured_output, litert_module, tflm_arena_bytes
from edgefp.trainer.fingerprint import NeuralFingerprint, read_fingerprint_json, sha256_file

MIN_CALIB = 20
MAX_REPRESENTATIVE = 500
# Noisy copies of a fifth of the calibration samples join the representative data, so that the int8
# range of each reconstruction error reaches beyond in-distribution errors instead of saturating just
# above them. (Pure noise or gain x3 widen it so far that in-distribution errors get too few levels.)
RANGE_SHIFTS = ("noise",)
RANGE_SHARE = 0.2
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


def quantize(fingerprint: NeuralFingerprint, calib: np.ndarray, seed: int = 0) -> bytes:
    """Full-integer int8 TFLite of the fingerprint's fused graph at batch size 1 (``calib`` preprocessed)."""
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    sample = calib[rng.permutation(len(calib))[:MAX_REPRESENTATIVE]]
    wide = [shifts.apply(sample[: max(1, int(RANGE_SHARE * len(sample)))], kind, seed) for kind in RANGE_SHIFTS]
    representative = np.concatenate([sample, *wide]).astype(np.float32)

    inputs = keras.Input(tuple(fingerprint.model_.inputs[0].shape[1:]), batch_size=1, name="input")
    fused = keras.Model(inputs, fingerprint.monitor_(inputs), name="edgefp_model")
    converter = tf.lite.TFLiteConverter.from_keras_model(fused)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([row[None]] for row in representative)
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


def _io_specs(model_bytes: bytes) -> tuple[dict, tuple[float, int]]:
    """Index, shape and quantisation of the probs and layer-error outputs (from the model's signature,
    which keeps the Keras output order), and the input's (scale, zero point)."""
    interpreter = litert_module().Interpreter(model_content=model_bytes)
    order = [detail["index"] for detail in interpreter.get_output_details()]
    details = {detail["index"]: detail for detail in interpreter.get_output_details()}
    signature = next(iter(interpreter._get_full_signature_list().values()))["outputs"]

    def spec(keras_output: int) -> dict:
        detail = details[signature[f"output_{keras_output}"]]
        scale, zero_point = detail["quantization"]
        return {
            "index": order.index(detail["index"]),
            "shape": [int(n) for n in detail["shape"][1:]],
            "scale": float(scale),
            "zero_point": int(zero_point),
        }

    specs = {"probs": spec(0), "layer_errors": [spec(j) for j in range(1, len(signature))]}
    input_detail = interpreter.get_input_details()[0]
    return specs, input_detail["quantization"]


def convert(run_dir: str, calib: data.Dataset, out: str, *, name=None, ood_data=None, force=False) -> dict:
    """Convert a RUN into a bundle at ``out`` (directory, or ``.efp`` archive); return the parity report."""
    if out.endswith(ARCHIVE_SUFFIX):  # refused now rather than after the conversion
        check_output(out, force=force)
    else:
        check_directory_output(out, "bundle", force=force)
    fingerprint = NeuralFingerprint.load(run_dir)
    check_convertible(fingerprint.model_)
    calib_x = fingerprint.prepare(calib.x, calib.name)
    if len(calib_x) < MIN_CALIB:
        raise EdgefpError(f"{calib.name}: {len(calib_x)} calibration samples; give at least {MIN_CALIB}")
    model_bytes = quantize(fingerprint, calib_x)
    TFLiteMicro(model_bytes)  # refuses, naming the operator, a model a microcontroller could not run
    outputs, (input_scale, input_zero_point) = _io_specs(model_bytes)
    meta = read_fingerprint_json(run_dir)
    manifest = {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "name": name or bundle_name(out),
        "edgefp_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "source": {
            "fingerprint_sha256": sha256_file(os.path.join(run_dir, "fingerprint.json")),
            "classifier_sha256": meta["classifier"]["sha256"],
        },
        "model": MODEL,
        "input": {
            "shape": list(fingerprint.model_.inputs[0].shape[1:]),
            "dtype": "int8",
            "scale": float(input_scale),
            "zero_point": int(input_zero_point),
            "preprocessing": fingerprint.preprocessing_,
        },
        "outputs": outputs,
        "labels": fingerprint.labels_,
        "layers": [{"name": layer.name, "features": layer.features} for layer in fingerprint.layers_],
        "score": {"combine": meta["score"]["combine"], "eps": ood.EPS, "target_fpr": fingerprint.fpr},
        "ops": LiteRT(model_bytes).ops(),
        "tflm_arena_bytes": tflm_arena_bytes(model_bytes),
        "flash_bytes": len(model_bytes),
        "files": {MODEL: {"sha256": sha256(model_bytes), "bytes": len(model_bytes)}},
    }
    bundle = Bundle(manifest, {MODEL: model_bytes})
    recalibrate(bundle, fingerprint.holdout_x_, fingerprint.fpr)
    manifest["parity"] = parity(fingerprint, bundle, calib, ood_data)
    bundle.write(out, force=force)
    return manifest


def recalibrate(bundle: Bundle, holdout_x: np.ndarray, fpr: float) -> None:
    """Fingerprint statistics, score tables and threshold from the int8 model's own errors on held-out data."""
    probs_q, errors_q = bundle.invoke_all(LiteRT(bundle.model_bytes), bundle.quantize(holdout_x))
    _, errors = bundle.dequantize(probs_q, errors_q)
    calibration = ood.calibrate(errors, fpr)
    outputs = bundle.manifest["outputs"]["layer_errors"]
    for j, layer in enumerate(bundle.manifest["layers"]):
        mu, sigma = float(calibration.mu[j]), float(calibration.sigma[j])
        layer.update(
            log_error_mean=mu,
            log_error_std=sigma,
            holdout_error_quantiles=calibration.error_quantiles[j],
            z_table=ood.z_table(outputs[j]["scale"], outputs[j]["zero_point"], mu, sigma),
        )
    units = bundle.score_units(errors_q)
    threshold_units = int(np.quantile(units, 1.0 - fpr, method="higher"))
    scale = ood.SCORE_UNIT * len(bundle.manifest["layers"])
    bundle.manifest["score"].update(
        unit=ood.SCORE_UNIT,
        threshold_units=threshold_units,
        threshold=threshold_units / scale,
        holdout_quantiles=ood.quantiles(units / scale),
        n_holdout=len(holdout_x),
    )


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
        errors_q = bundle.invoke_all(LiteRT(bundle.model_bytes), bundle.quantize(ood_data.x))[1]
        report["ood_errors_saturated"] = float(np.mean(errors_q == 127))
        verdicts.append(np.mean(float_ood.is_ood == int8_ood.is_ood))
        tflm_inputs = np.concatenate([tflm_inputs, ood_data.x[: PARITY_SAMPLES // 2]])
    report["verdict_agreement"] = float(np.mean(verdicts))
    # An error at the top of the int8 range on every layer must still be flagged: saturation never hides OOD.
    top = bundle.decide(
        np.zeros((1, len(bundle.label_values)), np.int8), np.full((1, len(bundle.manifest["layers"])), 127, np.int8)
    )
    report["saturated_score"] = float(top.ood_score[0])
    report["saturated_is_ood"] = bool(top.is_ood[0])
    report.update(runtime_agreement(bundle, tflm_inputs))
    return report


def runtime_agreement(bundle: Bundle, x: np.ndarray) -> dict:
    """How often LiteRT and TFLite Micro give identical int8 outputs, and the largest difference."""
    x_q = bundle.quantize(x)
    litert = bundle.invoke_all(LiteRT(bundle.model_bytes), x_q)
    micro = bundle.invoke_all(TFLiteMicro(bundle.model_bytes, bundle.manifest["tflm_arena_bytes"]), x_q)
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
