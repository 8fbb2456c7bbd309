import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from edgefp import data, metrics, shifts
from edgefp.bundle import Bundle
from edgefp.converter.convert import convert, int8_tflite, strip
from edgefp.errors import EdgefpError
from tests.cli.test_cli import edgefp
from tests.conftest import arrow_head_split


def test_int8_bundle_keeps_accuracy_and_ood_quality(digits_bundle):
    manifest, out = digits_bundle
    parity = manifest.parity
    assert parity["int8_accuracy"] >= 0.95 and parity["int8_accuracy"] >= parity["float_accuracy"] - 0.01
    assert parity["int8_auroc"] >= 0.9 and parity["int8_auroc"] >= parity["float_auroc"] - 0.01
    bundle = Bundle.load(out)
    held_out, unseen = data.load("digits:test:0-4"), data.load("digits:test:5-9")
    id_scores, ood_scores = bundle.score(held_out.x), bundle.score(unseen.x)
    assert np.mean(id_scores.pred == held_out.y) >= 0.95
    assert metrics.auroc(id_scores.ood_score, ood_scores.ood_score) >= 0.92
    assert id_scores.is_ood.mean() <= 0.12


def test_int8_errors_order_unseen_samples_as_float_does(motions_run, motions_bundle):
    """On a small sensor set (8 held-out windows), each int8 error output resolves in-distribution errors
    into many levels and ranks unseen windows as the float errors do (int8 ranges: docs/bundle.md)."""
    from scipy.stats import spearmanr

    fingerprint, _ = motions_run
    bundle = Bundle.load(motions_bundle)
    x = data.load("basic_motions:test").x
    float_errors, int8_errors = fingerprint.score(x).layer_errors, bundle.score(x).layer_errors
    for j, layer in enumerate(bundle.manifest.layers):
        if layer.kind == "autoencoder":
            assert len(np.unique(int8_errors[:, j])) >= 12, layer.name
            correlation = spearmanr(float_errors[:, j], int8_errors[:, j]).statistic
            assert correlation >= 0.93, (layer.name, correlation)


def test_errors_beyond_an_outputs_range_count_by_its_coarse_value(motions_run, motions_bundle):
    """Windows amplified past anything held out: an error beyond its output's first int8 value counts by the
    second, ``coarse_factor`` times coarser (docs/bundle.md): above every error within the range, ordered
    as the float errors are, and the same error as the first value where both hold it."""
    from scipy.stats import spearmanr

    from edgefp import ood
    from edgefp.runtime import LiteRT

    fingerprint, _ = motions_run
    bundle = Bundle.load(motions_bundle)
    x = data.load("basic_motions:test").x
    x = np.concatenate([x * gain for gain in (1, 1.5, 2, 3, 5)])
    float_errors = fingerprint.score(x).layer_errors
    probs_q, values_q = bundle.invoke_all(LiteRT(bundle.model_bytes), bundle.quantize(x))
    int8_errors, evidence = bundle.dequantize(probs_q, values_q)[1], bundle.layer_evidence(values_q)
    outputs = bundle.manifest.outputs.layer_errors
    for j, (layer, spec, columns) in enumerate(zip(bundle.manifest.layers, outputs, bundle.value_columns)):
        if layer.kind != "autoencoder":
            continue
        assert spec.shape == (2,) and spec.coarse_factor == 127 / 8, layer.name
        fine, coarse = values_q[:, columns.start].astype(int), values_q[:, columns.start + 1].astype(int)
        beyond, off_scale = ood.counted(values_q[:, columns])[0] == 1, coarse == 127
        assert beyond.sum() >= 10 and (~beyond).sum() >= 10, layer.name
        top = (127 - spec.zero_point) * spec.scale
        assert int8_errors[beyond, j].min() >= 0.99 * top and evidence[beyond, j].min() >= evidence[~beyond, j].max()
        ordered = beyond & ~off_scale
        assert spearmanr(float_errors[ordered, j], int8_errors[ordered, j]).statistic >= 0.7, layer.name
        step = spec.scale * spec.coarse_factor
        both = fine < 127
        assert np.abs((fine[both] - spec.zero_point) * spec.scale - (coarse[both] - spec.zero_point) * step).max() <= (
            0.6 * step
        )


def test_manifest_holds_the_contract(digits_bundle):
    manifest, out = digits_bundle
    for key in ("name", "input", "outputs", "labels", "layers", "score", "files", "ops", "tflm_arena_bytes"):
        assert key in manifest.to_json()
    assert manifest.input.dtype == "int8" and manifest.input.preprocessing.type == "standardize"
    assert len(manifest.outputs.layer_errors) == len(manifest.layers)
    assert manifest.flash_bytes == os.path.getsize(os.path.join(out, "model.tflite"))
    assert manifest.tflm_arena_bytes > 0 and "CONV_2D" in manifest.ops
    assert 0 < manifest.score.threshold and len(manifest.layers[0].holdout_quantiles) == 101


def _graph(model_bytes: bytes):
    """An int8 model's flatbuffer object, its graph and the names of its operators in graph order."""
    from tensorflow.lite.python import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model_bytes, 0))
    graph = model.subgraphs[0]
    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    codes = [model.operatorCodes[op.opcodeIndex] for op in graph.operators]
    return model, graph, [names[max(code.builtinCode, code.deprecatedBuiltinCode)] for code in codes]


def test_autoencoders_run_as_one_block_with_weights_per_tensor(digits_bundle):
    manifest, out = digits_bundle
    _, graph, kinds = _graph(Bundle.load(out).model_bytes)
    autoencoders = [layer for layer in manifest.layers if layer.kind == "autoencoder"]
    assert len(autoencoders) == 2
    for kind in ("CONCATENATION", "SUB", "TANH", "SQUARED_DIFFERENCE", "REDUCE_MAX"):
        assert kinds.count(kind) == 1, kind
    square = graph.operators[kinds.index("SQUARED_DIFFERENCE")].outputs[0]
    averages = [op for op, kind in zip(graph.operators, kinds) if kind == "FULLY_CONNECTED" and op.inputs[0] == square]
    assert len(averages) == len(autoencoders)
    softmax = graph.operators[kinds.index("SOFTMAX")].outputs[0]
    evidence = [op for op, kind in zip(graph.operators, kinds) if kind == "FULLY_CONNECTED"][-(3 + len(averages)) :]
    assert evidence[0].inputs[0] == softmax  # the class mean, then encoder, decoder and the averages
    for op in evidence:
        assert len(graph.tensors[op.inputs[1]].quantization.scale) == 1


def _operators(model_bytes: bytes) -> tuple[list[str], int]:
    """The operator names of an int8 model in graph order, and the zero bytes of its FULLY_CONNECTED weights."""
    model, graph, kinds = _graph(model_bytes)
    weights = [graph.tensors[op.inputs[1]] for op, kind in zip(graph.operators, kinds) if kind == "FULLY_CONNECTED"]
    return kinds, sum(int(np.count_nonzero(np.asarray(model.buffers[w.buffer].data) == 0)) for w in weights)


def test_autoencoders_run_apart_where_the_blocks_zeros_outweigh_their_operators(motions_run, tmp_path, monkeypatch):
    """Where one block's zero weights would cost more than the operators of running apart, each
    autoencoder runs on a slice of the residual: the same float evidence, the block diagonal's zeros
    gone, and the int8 bundle computing on every runtime what it does as a block."""
    from edgefp.trainer import fingerprint as module
    from edgefp.trainer.fingerprint import NeuralFingerprint

    block_fp, run_dir = motions_run
    convert(run_dir, data.load("basic_motions:train"), str(tmp_path / "block"))
    block = Bundle.load(str(tmp_path / "block"))
    monkeypatch.setattr(module, "ZERO_BYTES_PER_OPERATOR", 0)
    apart_fp = NeuralFingerprint.load(run_dir)
    x = data.load("basic_motions:test").x
    exact = apart_fp.score(x).layer_errors
    np.testing.assert_allclose(exact, block_fp.score(x).layer_errors, rtol=1e-4, atol=1e-7)
    convert(run_dir, data.load("basic_motions:train"), str(tmp_path / "apart"))
    apart = Bundle.load(str(tmp_path / "apart"))
    block_kinds, block_zeros = _operators(block.model_bytes)
    apart_kinds, apart_zeros = _operators(apart.model_bytes)
    k = len(apart_fp.autoencoder_layers_)
    assert k == 3 and block_kinds.count("STRIDED_SLICE") == 0
    for kind in ("STRIDED_SLICE", "TANH", "SQUARED_DIFFERENCE"):
        assert apart_kinds.count(kind) == k, kind
    assert len(apart_kinds) == len(block_kinds) + 5 * k - 4
    widths = [layer.features for layer in apart_fp.autoencoder_layers_]
    codes = [layer.bottleneck for layer in apart_fp.autoencoder_layers_]
    block_diagonal = 2 * (sum(widths) * sum(codes) - sum(f * c for f, c in zip(widths, codes)))
    assert apart_zeros <= block_zeros - block_diagonal
    scores = {runtime: apart.score(x, runtime) for runtime in ("litert", "tflm", "firmware")}
    np.testing.assert_array_equal(scores["tflm"].layer_errors, scores["firmware"].layer_errors)
    np.testing.assert_array_equal(scores["litert"].pred, scores["tflm"].pred)
    assert np.mean(scores["litert"].pred == block.score(x).pred) >= 0.98
    for j in range(k):  # each int8 error tracks the float one, at its scale
        ratio = scores["litert"].layer_errors[:, j] / exact[:, j]
        correlation = np.corrcoef(np.log(exact[:, j]), np.log(scores["litert"].layer_errors[:, j] + 1e-9))[0, 1]
        assert 0.75 <= np.median(ratio) <= 1.33 and correlation >= 0.7, (j, np.median(ratio), correlation)
    shifted = shifts.apply(x, "noise", seed=0)
    for bundle in (apart, block):
        assert metrics.auroc(bundle.score(x).ood_score, bundle.score(shifted).ood_score) >= 0.9


def _feature_shifts(fingerprint, bundle: Bundle, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per feature, the mean over ``x`` of the int8 bundle's features less the float fingerprint's, and of
    its residual (features less class means) less the float residual."""
    import keras

    from edgefp.converter.convert import residual_inputs
    from edgefp.runtime import litert_interpreter, read_tensors

    interpreter = litert_interpreter(bundle.model_bytes, experimental_preserve_all_tensors=True)
    inputs = residual_inputs(interpreter, bundle.manifest.outputs.probs.index)
    features, means = read_tensors(interpreter, bundle.quantize(x), inputs)
    exact = keras.Model(fingerprint.monitor_.inputs, fingerprint.monitor_.get_layer("fp_residual").input)
    exact_features, exact_means = exact.predict(fingerprint.prepare(x), verbose=0)
    return (features - exact_features).mean(axis=0), (features - means - exact_features + exact_means).mean(axis=0)


def test_int8_residual_is_centred_as_the_float_one(digits_run, digits_bundle, arrow_head_run, arrow_head_bundle):
    """The int8 classifier's rounding shifts the mean of the features its autoencoders read; convert
    measures the shift on the calibration samples and moves the class means by it, so that on other
    in-distribution samples the int8 residual has the float residual's mean (docs/bundle.md)."""
    cases = {
        "images": (digits_run[0], digits_bundle[1], data.load("digits:test:0-4").x),
        "sequences": (arrow_head_run[0], arrow_head_bundle, arrow_head_split()[1]),
    }
    for template, (fingerprint, out, x) in cases.items():
        shifts = _feature_shifts(fingerprint, Bundle.load(out), x)
        features, residual = (float(np.sqrt(np.mean(shift**2))) for shift in shifts)
        assert residual <= 0.5 * features, (template, features, residual)


@pytest.mark.heavy  # trains
@pytest.mark.parametrize("features, classes", [(3, 2), (40, 5)])
def test_a_watched_vector_input_keeps_the_classifiers_input_quantisation(features, classes, tmp_path):
    """A narrow vector input is watched by default. Its standardisation is the identity (the input
    is standardised already), which the converter removes; read directly by the evidence's
    CONCATENATION, the input would take that concatenation's quantisation. The bundle's input must be
    quantised as the classifier's alone, as its manifest says, and int8 classify as float does."""
    from edgefp.runtime import litert_interpreter
    from edgefp.trainer import taps, train
    from tests.conftest import synthetic

    train_set, test_set = synthetic((features,), classes, 40 * classes, 60)
    fingerprint = train(train_set, epochs=24, autoencoder_epochs=3, seed=0, progress=False)
    assert [layer.name for layer in fingerprint.autoencoder_layers_] == [taps.input_name(fingerprint.model_), "dense64"]
    fingerprint.save(str(tmp_path / "run"))
    manifest = convert(str(tmp_path / "run"), train_set, str(tmp_path / "bundle"))
    bundle = Bundle.load(str(tmp_path / "bundle"))
    alone = int8_tflite(fingerprint.model_, fingerprint.prepare(train_set.x))
    scale, zero_point = litert_interpreter(alone).get_input_details()[0]["quantization"]
    assert litert_interpreter(bundle.model_bytes).get_input_details()[0]["quantization"] == pytest.approx(
        (scale, zero_point)
    )
    assert (manifest.input.scale, manifest.input.zero_point) == pytest.approx((scale, zero_point))
    float_pred = fingerprint.score(test_set.x).pred
    assert np.mean(bundle.score(test_set.x).pred == float_pred) >= 0.95
    assert [layer.kind for layer in manifest.layers] == ["autoencoder"] * 2 and "REDUCE_MAX" not in manifest.ops


def test_saturated_errors_are_still_flagged(digits_bundle):
    manifest, _ = digits_bundle
    assert manifest.parity["saturated_is_ood"]
    assert manifest.parity["saturated_score"] > 1.5 * manifest.score.threshold


def test_litert_and_tflite_micro_agree(digits_bundle):
    _, out = digits_bundle
    bundle = Bundle.load(out)
    x = data.load("digits:test").x[:120]
    litert, micro = bundle.score(x, "litert"), bundle.score(x, "tflm")
    np.testing.assert_array_equal(litert.pred, micro.pred)
    assert np.mean(litert.is_ood == micro.is_ood) >= 0.97
    on_scale = (litert.ood_score < 10) & (micro.ood_score < 10)  # a saturated output counts z = 100
    assert on_scale.mean() > 0.8 and np.abs(litert.ood_score - micro.ood_score)[on_scale].max() < 0.5


def test_host_scoring_is_repeatable_on_each_runtime(digits_bundle):
    _, out = digits_bundle
    bundle, x = Bundle.load(out), data.load("digits:test").x[:40]
    for runtime in ("litert", "tflm"):
        first, second = bundle.score(x, runtime), bundle.score(x, runtime)
        np.testing.assert_array_equal(first.layer_errors, second.layer_errors)


def test_archive_form_scores_like_the_directory(digits_bundle, tmp_path):
    _, out = digits_bundle
    archive = str(tmp_path / "digits04.efp")
    Bundle.load(out).write(archive)
    x = data.load("digits:test").x[:20]
    np.testing.assert_array_equal(Bundle.load(archive).score(x).ood_score, Bundle.load(out).score(x).ood_score)


def _copy(out, tmp_path):
    copy = str(tmp_path / "copy")
    shutil.copytree(out, copy)
    return copy


def test_tampered_model_or_manifest_is_refused(digits_bundle, tmp_path):
    _, out = digits_bundle
    copy = _copy(out, tmp_path)
    model = os.path.join(copy, "model.tflite")
    content = bytearray(open(model, "rb").read())
    content[len(content) // 2] ^= 0xFF
    open(model, "wb").write(bytes(content))
    with pytest.raises(EdgefpError, match="model.tflite does not match its SHA-256"):
        Bundle.load(copy)
    result = edgefp("inspect", copy)
    assert result.returncode == 1 and "files verify: NO" in result.stdout

    copy2 = _copy(out, tmp_path / "b")
    manifest_path = os.path.join(copy2, "manifest.json")
    manifest = json.load(open(manifest_path))
    manifest["score"]["threshold"] = 99.0
    json.dump(manifest, open(manifest_path, "w"))
    with pytest.raises(EdgefpError, match="manifest.json does not match its digest"):
        Bundle.load(copy2)


def test_truncated_archive_and_missing_bundle_are_refused(digits_bundle, tmp_path):
    _, out = digits_bundle
    archive = str(tmp_path / "b.efp")
    Bundle.load(out).write(archive)
    content = open(archive, "rb").read()
    open(archive, "wb").write(content[: len(content) // 2])
    with pytest.raises(EdgefpError, match="b.efp"):
        Bundle.load(archive)
    with pytest.raises(EdgefpError, match="no such bundle"):
        Bundle.load(str(tmp_path / "nothing"))


def test_bad_calibration_data_writes_nothing(digits_run, tmp_path, monkeypatch):
    _, run_dir = digits_run
    out = tmp_path / "bundle"
    wrong_shape = data.Dataset(np.zeros((50, 10), np.float32), None, "wrong.npz")
    with pytest.raises(EdgefpError, match=r"wrong.npz: samples have shape \(10,\)"):
        convert(run_dir, wrong_shape, str(out))
    too_few = data.load("digits:test:0-4").subset(np.arange(5), "few.npz")
    with pytest.raises(EdgefpError, match="few.npz: 5 calibration samples; give at least 20"):
        convert(run_dir, too_few, str(out))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_no_half_bundle(digits_bundle, tmp_path, monkeypatch):
    _, out = digits_bundle
    bundle = Bundle.load(out)
    target = tmp_path / "bundle"

    opened = []

    def open_then_interrupt(path, *args, **kwargs):
        opened.append(path)
        if len(opened) > 1:
            raise KeyboardInterrupt
        return open(path, *args, **kwargs)

    monkeypatch.setattr("edgefp.bundle.open", open_then_interrupt, raising=False)
    with pytest.raises(KeyboardInterrupt):
        bundle.write(str(target))
    assert len(opened) == 2 and list(tmp_path.iterdir()) == []


def test_run_missing_files_is_refused(digits_run, tmp_path):
    _, run_dir = digits_run
    copy = _copy(run_dir, tmp_path)
    shutil.rmtree(os.path.join(copy, "autoencoders"))
    with pytest.raises(EdgefpError, match="incomplete"):
        convert(copy, data.load("digits:train:0-4"), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_cli_score_runtimes_and_generated_c_compiles(digits_bundle, tmp_path):
    _, out = digits_bundle
    files = {}
    for runtime in ("litert", "tflm"):
        files[runtime] = tmp_path / f"{runtime}.npz"
        result = edgefp("score", out, "--data", "digits:test:0-4", "--runtime", runtime, "--out", str(files[runtime]))
        assert result.returncode == 0, result.stderr
    with np.load(files["litert"]) as a, np.load(files["tflm"]) as b:
        np.testing.assert_array_equal(a["pred"], b["pred"])
    result = edgefp("export-c", out, "--out", str(tmp_path / "c"), "--json")
    assert result.returncode == 0, result.stderr
    sources = json.loads(result.stdout)["files"]
    assert any(path.endswith("model_data.cc") for path in sources)
    build = subprocess.run(
        ["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-c", "model_data.cc", "-o", "/dev/null"],
        cwd=tmp_path / "c",
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr


def test_edgetpu_falls_back_to_the_cpu_with_a_message(digits_bundle, caplog):
    from edgefp.runtime import open_runtime

    _, out = digits_bundle
    interpreter = open_runtime(Bundle.load(out).model_bytes, "edgetpu")
    assert interpreter.name in ("edgetpu", "litert")
    if interpreter.name == "litert":
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert any("Edge TPU delegate unavailable" in w for w in warnings)


@pytest.mark.heavy
def test_an_operator_tflite_micro_lacks_is_named():
    import tensorflow as tf

    from edgefp.runtime import TFLiteMicro, captured_output

    atan2 = tf.function(lambda x: tf.math.atan2(x, x + 1.0), input_signature=[tf.TensorSpec([1, 8], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([atan2.get_concrete_function()], atan2)
    with captured_output():
        model = converter.convert()
    with pytest.raises(EdgefpError, match="TFLite Micro cannot run the model: .*'ATAN2'"):
        TFLiteMicro(model)


@pytest.mark.heavy  # imports TensorFlow, builds the engine
@pytest.mark.parametrize("name", ["tflm_hello_world_int8", "tflm_micro_speech_quantized"])
def test_strip_leaves_out_only_what_no_runtime_reads(name):
    """Names, signatures, metadata and the empty buffers of computed tensors go; LiteRT, TFLite Micro and
    the firmware's engine give the same output bytes as on the model as it was published."""
    from tensorflow.lite.tools import flatbuffer_utils

    from edgefp.runtime import FirmwareEngine, LiteRT, TFLiteMicro
    from tests.firmware.test_engine import peer

    published = peer(name)
    stripped = strip(published)
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(stripped))
    tensors = model.subgraphs[0].tensors
    assert len(stripped) < len(published) and model.metadata is None and model.signatureDefs is None
    assert all(tensor.name is None for tensor in tensors)
    assert [i for i, buffer in enumerate(model.buffers) if buffer.data is None or not len(buffer.data)] == [0]
    assert {tensor.buffer for tensor in tensors} | {0} == set(range(len(model.buffers)))
    for runtime in (LiteRT, TFLiteMicro, FirmwareEngine):
        before, after = runtime(published), runtime(stripped)
        shape, dtype = before.input_spec
        info = np.iinfo(dtype)
        for sample in np.random.default_rng(0).integers(info.min, info.max, (20, *shape), endpoint=True).astype(dtype):
            for old, new in zip(before.invoke(sample), after.invoke(sample), strict=True):
                np.testing.assert_array_equal(old, new)
