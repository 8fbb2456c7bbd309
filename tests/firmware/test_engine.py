"""The firmware's C inference engine, built for the host, against the TFLite Micro interpreter:
every output byte must match, on the bundle templates, on single-operator models and on the peer
models published for microcontrollers (tests/data/models), with the portable kernels and with the
kernels for cores with the DSP extension (their instructions emulated in C); clean under ASan and
UBSan; refusals name what they refuse."""

import os
import shutil
import subprocess
import warnings

import numpy as np
import pytest

from edgefp.firmware_host.firmware import engine as efp
from edgefp.firmware_host.firmware.contract import Status
from edgefp.firmware_host.firmware.engine import Engine, EngineError
from edgefp.runtime import captured_output
from tests.conftest import edit_tflite

pytestmark = [
    pytest.mark.heavy,
    pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to build the engine"),
]

TESTS = os.path.dirname(os.path.dirname(__file__))
MODELS = os.path.join(TESTS, "data", "models")
PEERS = sorted(name[: -len(".tflite")] for name in os.listdir(MODELS) if name.endswith(".tflite"))


def peer(name: str) -> bytes:
    with open(os.path.join(MODELS, f"{name}.tflite"), "rb") as handle:
        return handle.read()


@pytest.fixture(params=[False, True], ids=["portable", "dsp"])
def dsp(request):
    return request.param


def tflm_run(model: bytes, inputs: list[np.ndarray]) -> np.ndarray:
    """Every output of every sample, as raw bytes concatenated in the model's output order."""
    from tflite_micro.python.tflite_micro import runtime

    with captured_output():
        interpreter = runtime.Interpreter.from_bytes(model)
        n_out = 0
        while True:
            try:
                interpreter.get_output_details(n_out)
            except IndexError:
                break
            n_out += 1
        rows = []
        for i in range(len(inputs[0])):
            for k, x in enumerate(inputs):
                interpreter.set_input(x[i][None], k)
            interpreter.invoke()
            rows.append(np.concatenate([interpreter.get_output(j).reshape(-1).view(np.uint8) for j in range(n_out)]))
    return np.array(rows)


def engine_run(engine: Engine, inputs: list[np.ndarray]) -> np.ndarray:
    rows = []
    for i in range(len(inputs[0])):
        outputs = engine.invoke([x[i] for x in inputs])
        rows.append(np.concatenate([out.reshape(-1).view(np.uint8) for out in outputs]))
    return np.array(rows)


def assert_bit_exact(model: bytes, inputs, dsp: bool = False) -> Engine:
    inputs = inputs if isinstance(inputs, list) else [inputs]
    engine = Engine(model, dsp=dsp)
    expected, got = tflm_run(model, inputs), engine_run(engine, inputs)
    bad = np.nonzero((got != expected).any(axis=1))[0]
    first = np.nonzero(got[bad[0]] != expected[bad[0]])[0][:8] if len(bad) else None
    assert not len(bad), f"{len(bad)}/{len(got)} samples differ, first at output bytes {first}"
    return engine


def random_int8(shape, n=300, seed=0):
    return np.random.default_rng(seed).integers(-128, 128, size=(n, *shape), dtype=np.int8)


def structured_int8(shape) -> np.ndarray:
    """Constant planes at the extremes and around zero, ramps and an alternating pattern."""
    count = int(np.prod(shape))
    ramp = (np.arange(count) % 256 - 128).astype(np.int8)
    rows = [np.full(count, v, np.int8) for v in (-128, -1, 0, 1, 127)]
    rows += [ramp, ramp[::-1].copy(), np.where(np.arange(count) % 2, 127, -128).astype(np.int8)]
    return np.stack(rows).reshape(-1, *shape)


# ---- the bundle templates ----


@pytest.fixture(scope="module")
def seq_bundle(motions_bundle):
    from edgefp import data
    from edgefp.bundle import Bundle

    return Bundle.load(motions_bundle), data.load("basic_motions:test")


@pytest.fixture(scope="module")
def vec_bundle(tmp_path_factory):
    """The vector template, trained one epoch: the engine's point is the graph's operators, not its quality."""
    from edgefp import data
    from edgefp.bundle import Bundle
    from edgefp.converter.convert import convert
    from edgefp.trainer import train

    flat = lambda d: data.Dataset(x=d.x.reshape(len(d.x), -1), y=d.y, name="vec")  # noqa: E731
    dataset, root = flat(data.load("digits:train:0-4")), tmp_path_factory.mktemp("vec")
    train(dataset, epochs=1, autoencoder_epochs=1, seed=0, progress=False).save(str(root / "run"))
    convert(str(root / "run"), dataset, str(root / "bundle"))
    return Bundle.load(str(root / "bundle")), flat(data.load("digits:test"))


def _check_bundle(bundle, real, dsp):
    x = bundle.quantize(real.x)
    x = np.concatenate([x, random_int8(x.shape[1:], n=100)])
    engine = assert_bit_exact(bundle.model_bytes, x, dsp)
    assert 0 < engine.arena_used <= bundle.manifest.tflm_arena_bytes


def test_image_bundle_is_bit_exact(digits_bundle, dsp):
    from edgefp import data
    from edgefp.bundle import Bundle

    _check_bundle(Bundle.load(digits_bundle[1]), data.load("digits:test"), dsp)


def test_bundle_scores_on_the_firmware_runtime_equal_tflite_micros(digits_bundle):
    """score --runtime firmware: the fingerprinted bundle's score file, field by field."""
    from edgefp import data
    from edgefp.bundle import Bundle

    bundle, x = Bundle.load(digits_bundle[1]), data.load("digits:test").x[:150]
    engine, tflm = bundle.score(x, "firmware"), bundle.score(x, "tflm")
    for field in ("pred", "probs", "ood_score", "is_ood", "layer_errors"):
        np.testing.assert_array_equal(getattr(engine, field), getattr(tflm, field), err_msg=field)


def test_sequence_bundle_is_bit_exact(seq_bundle, dsp):
    _check_bundle(*seq_bundle, dsp)


def test_vector_bundle_is_bit_exact(vec_bundle, dsp):
    _check_bundle(*vec_bundle, dsp)


# ---- the peer models ----


def tflm_arena(model: bytes) -> int:
    """TFLite Micro's arena for the model, as its recording allocator totals it."""
    import re

    from tflite_micro.python.tflite_micro import runtime

    with captured_output() as log:
        runtime.Interpreter.from_bytes(model, arena_size=4 << 20).print_allocations()
        return int(re.search(r"allocation total (\d+)", log()).group(1))


@pytest.mark.parametrize("name", PEERS)
def test_peer_models_are_bit_exact_in_less_arena_than_tflite_micro(name, dsp):
    model = peer(name)
    engine = Engine(model, dsp=dsp)
    shape = engine.inputs[0].shape[1:]
    n = max(8, min(120, 200_000 // int(np.prod(shape))))  # fewer samples of the large inputs
    x = np.concatenate([structured_int8(shape), random_int8(shape, n=n, seed=len(name))])
    assert_bit_exact(model, x, dsp)
    assert engine.arena_needed <= tflm_arena(model)


# ---- single-operator models for what the bundles and peers do not exercise ----


def _convert(fn, shapes, *, float_io=False, per_tensor_fc=False, dynamic_batch=False):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    shapes = shapes if isinstance(shapes[0], tuple) else [shapes]
    specs = [tf.TensorSpec([None if dynamic_batch else 1, *shape], tf.float32) for shape in shapes]
    f = tf.function(fn, input_signature=specs)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    samples = [[2 * rng.normal(size=(1, *shape)).astype(np.float32) for shape in shapes] for _ in range(50)]
    converter.representative_dataset = lambda: iter(samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if not float_io:
        converter.inference_input_type = converter.inference_output_type = tf.int8
    converter._experimental_disable_per_channel_quantization_for_dense_layers = per_tensor_fc
    with captured_output(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Statistics for quantized inputs were expected" (float input)
        return bytes(converter.convert()), shapes


def _edited(converted, edit):
    return edit_tflite(converted[0], edit), converted[1]


@pytest.fixture(scope="module")
def op_models():
    import tensorflow as tf

    rng = np.random.default_rng(1)
    k = lambda *s: tf.constant(0.3 * rng.normal(size=s).astype(np.float32))  # noqa: E731
    w1, b1, w2, b2, dw, db, fc, fb = k(3, 3, 3, 8), k(8), k(3, 3, 8, 6), k(6), k(3, 3, 6, 2), k(12), k(12, 5), k(5)
    scale = k(1, 1, 1, 12)

    def image(x):  # float in and out: QUANTIZE first, DEQUANTIZE last
        y = tf.nn.relu6(tf.nn.conv2d(x, w1, 2, "VALID") + b1)
        y = tf.nn.conv2d(y, w2, 1, "SAME", dilations=2) + b2
        y = tf.nn.relu(tf.nn.depthwise_conv2d(y, dw, [1, 1, 1, 1], "SAME") + db)  # depth multiplier 2
        pooled = tf.nn.avg_pool2d(y, 3, 2, "SAME") + tf.nn.max_pool2d(y, 2, 2, "VALID") * scale
        g = tf.reduce_mean(pooled, [1, 2])
        return tf.nn.softmax(tf.matmul(g, fc) + fb), tf.tanh(g)

    w3, b3, dw2, db2, c1, c2 = k(2, 2, 4, 5), k(5), k(3, 3, 5, 1), k(5), k(1, 1, 5), k(1, 4, 1, 1)

    def mixed(x):
        y = tf.nn.conv2d(x, w3, 2, "SAME") + b3
        d = tf.clip_by_value(tf.nn.depthwise_conv2d(y, dw2, [1, 2, 2, 1], "VALID") + db2, -1, 1)
        sq = tf.reduce_mean(tf.math.squared_difference(y, c2), -1, keepdims=True)
        return d, tf.nn.relu(y - c1), sq, tf.reshape(tf.nn.avg_pool2d(y, 2, 1, "VALID"), [1, -1])

    fcw, fcb = k(20, 7), k(7)

    def dense(x):  # per-tensor FULLY_CONNECTED keeping a time axis, MEAN over it, row-wise SOFTMAX
        h = tf.matmul(x, fcw)
        return tf.reduce_mean(h, 1), tf.nn.softmax(h), tf.nn.relu(tf.matmul(x[:, 0], fcw) + fcb)

    w4, w5 = k(1, 1, 2, 6), k(3, 1, 1, 4)

    def activations(x):
        y = tf.nn.conv2d(x, w4, 1, "SAME")
        return (
            tf.keras.activations.hard_swish(y),
            tf.nn.leaky_relu(x, 0.2),
            tf.nn.leaky_relu(y, -0.3),
            tf.nn.relu(x),
            tf.nn.relu6(y),
            tf.sigmoid(y),
            tf.tanh(x),
        )

    def movement(x):
        y = tf.nn.conv2d(x, w5, 1, "VALID")
        return (
            tf.image.resize(x, [9, 5], "nearest"),
            tf.compat.v1.image.resize_nearest_neighbor(y, [7, 9], align_corners=True),
            tf.transpose(x, [0, 2, 3, 1]),
            tf.pad(x, [[0, 0], [1, 2], [0, 1], [0, 0]]),
            tf.pad(y, [[0, 0], [2, 0], [1, 1], [0, 0]], constant_values=1.5),
            x[:, 1:5:2, ::-1, 1],
            tf.concat([x, tf.nn.relu(x)], -1),
            tf.stack([x[:, 0], x[:, 2], x[:, 3]], 2),
            tf.reduce_max(y, [1, 2]),
        )

    def reshaped(x):  # a batch axis of unknown size: SHAPE, STRIDED_SLICE and PACK compute the shape
        return tf.reshape(x, [tf.shape(x)[0], -1]) * 2.0

    def flat_shapes(m, sg, schema):  # the converter leaves the reshaped tensors [1, 1], shape signature [-1, -1]
        for t in sg.tensors:
            if list(t.shape) == [1, 1]:
                t.shape, t.shapeSignature = np.array([1, 60], np.int32), None

    def two_inputs(x, y):
        return tf.concat([x * y, tf.nn.relu(x - y)], -1), tf.reduce_mean(x + y, 1)

    r0, r1, r2, r3, r4, r5, rf = (
        k(3, 3, 3, 8),
        k(3, 3, 8, 8),
        k(3, 3, 8, 8),
        k(3, 3, 8, 16),
        k(3, 3, 16, 16),
        k(1, 1, 8, 16),
        k(16, 10),
    )

    def residual(x):  # MLPerf Tiny's image classifier in small: residual blocks, a strided 1x1 shortcut
        y = tf.nn.relu(tf.nn.conv2d(x, r0, 1, "SAME"))
        y = tf.nn.relu(y + tf.nn.conv2d(tf.nn.relu(tf.nn.conv2d(y, r1, 1, "SAME")), r2, 1, "SAME"))
        z = tf.nn.conv2d(tf.nn.relu(tf.nn.conv2d(y, r3, 2, "SAME")), r4, 1, "SAME")
        y = tf.nn.relu(tf.nn.conv2d(y, r5, 2, "SAME") + z)
        return tf.nn.softmax(tf.matmul(tf.reduce_mean(y, [1, 2]), rf))

    def pad_and_max(x):  # zero padding (causal convolutions, ZeroPadding layers), global and 1-D max pooling
        padded = tf.pad(x, [[0, 0], [2, 1], [0, 3], [1, 0]])
        return padded, tf.reduce_max(padded, [1, 2]), tf.reduce_max(x, 2)

    return {
        "image": _convert(image, (9, 9, 3), float_io=True),
        "mixed": _convert(mixed, (8, 8, 4)),
        "dense": _convert(dense, (4, 20), per_tensor_fc=True),
        "activations": _convert(activations, (6, 5, 2)),
        "movement": _convert(movement, (6, 4, 2)),
        "pad_and_max": _convert(pad_and_max, (8, 8, 4)),
        "reshaped": _edited(_convert(reshaped, (5, 4, 3), dynamic_batch=True), flat_shapes),
        "two_inputs": _convert(two_inputs, [(4, 6), (4, 6)]),
        "residual": _convert(residual, (16, 16, 3)),
    }


def test_float_io_conv_depthwise_pool_broadcast_models_are_bit_exact(op_models, dsp):
    model, shapes = op_models["image"]
    x = (2 * np.random.default_rng(0).normal(size=(200, *shapes[0]))).astype(np.float32)
    assert_bit_exact(model, x, dsp)


@pytest.mark.parametrize(
    "name", ["mixed", "dense", "activations", "movement", "pad_and_max", "reshaped", "two_inputs", "residual"]
)
def test_int8_operator_models_are_bit_exact_in_less_arena_than_tflite_micro(op_models, name, dsp):
    model, shapes = op_models[name]
    inputs = [np.concatenate([structured_int8(s), random_int8(s, seed=i)]) for i, s in enumerate(shapes)]
    engine = assert_bit_exact(model, inputs, dsp)
    assert [t.shape[1:] for t in engine.inputs] == shapes
    assert engine.arena_needed <= tflm_arena(model)


def test_per_tensor_fully_connected_multiplier_is_computed_in_double(op_models):
    """TFLite Micro takes input scale x filter scale in double (a float product differs in the last
    bits of the multiplier, and outputs by one LSB): scales where the two products differ."""

    def odd_scales(m, sg, schema):
        for i, op in enumerate(o for o in sg.operators if m.operatorCodes[o.opcodeIndex].builtinCode == 9):
            sg.tensors[op.inputs[0]].quantization.scale = np.array([0.0173 + 1e-4 * i], np.float32)
            sg.tensors[op.inputs[1]].quantization.scale = np.array([0.0211 - 3e-5 * i], np.float32)

    model = edit_tflite(op_models["dense"][0], odd_scales)
    assert_bit_exact(model, random_int8((4, 20), n=2000))


def test_pad_and_reduce_max_are_the_operators_they_claim(op_models):
    from edgefp.runtime import LiteRT

    assert {"PAD", "REDUCE_MAX"} <= set(LiteRT(op_models["pad_and_max"][0]).ops())


# ---- models edited at the flatbuffer level ----


def _ops(m, sg, codes):
    return [op for op in sg.operators if m.operatorCodes[op.opcodeIndex].builtinCode in codes]


def _requantize_first_output(m, sg, schema):
    """Append an int8 -> int8 QUANTIZE (new scale and zero point) after output 0."""
    src = sg.tensors[sg.outputs[0]]
    t, q, code, op = schema.TensorT(), schema.QuantizationParametersT(), schema.OperatorCodeT(), schema.OperatorT()
    t.shape, t.type, t.name = np.array(src.shape), src.type, b"requantized"
    q.scale = np.array([src.quantization.scale[0] * 1.7], np.float32)
    q.zeroPoint = np.array([int(src.quantization.zeroPoint[0]) + 5])
    t.quantization = q
    m.buffers.append(schema.BufferT())
    t.buffer = len(m.buffers) - 1
    sg.tensors.append(t)
    code.builtinCode = code.deprecatedBuiltinCode = 114
    code.version = 1
    m.operatorCodes.append(code)
    op.opcodeIndex = len(m.operatorCodes) - 1
    op.inputs, op.outputs = np.array([sg.outputs[0]]), np.array([len(sg.tensors) - 1])
    sg.operators.append(op)
    sg.outputs = np.array([len(sg.tensors) - 1, *sg.outputs[1:]])


def _per_tensor_filters(m, sg, schema):
    for op in _ops(m, sg, (3, 4)):
        q = sg.tensors[op.inputs[1]].quantization
        q.scale, q.zeroPoint = q.scale[:1], q.zeroPoint[:1]


def _mean_keeps_quantization(m, sg, schema):
    for op in _ops(m, sg, (40,)):
        sg.tensors[op.outputs[0]].quantization = sg.tensors[op.inputs[0]].quantization


def _equal_input_scales(m, sg, schema):
    """Both inputs of each element-wise operator quantised alike: TFLite's input multipliers are 1/2,
    a right shift of 0 (the engine rescales those another way)."""
    for op in _ops(m, sg, (0, 18, 41, 99)):
        sg.tensors[op.inputs[1]].quantization = sg.tensors[op.inputs[0]].quantization


@pytest.mark.parametrize("edit", [_requantize_first_output, _per_tensor_filters, _mean_keeps_quantization])
def test_edited_models_are_bit_exact(op_models, edit, dsp):
    model, shapes = op_models["mixed"]
    assert_bit_exact(edit_tflite(model, edit), random_int8(shapes[0], n=200), dsp)


@pytest.mark.parametrize("name", ["mixed", "two_inputs"])
def test_element_wise_operators_with_equal_input_scales_are_bit_exact(op_models, name, dsp):
    model, shapes = _edited(op_models[name], _equal_input_scales)
    inputs = [np.concatenate([structured_int8(s), random_int8(s, seed=i)]) for i, s in enumerate(shapes)]
    assert_bit_exact(model, inputs, dsp)


# ---- refusals ----


def _swap_depthwise(code):
    def swap(m, sg, schema):
        for c in m.operatorCodes:
            if c.builtinCode == 4:  # DEPTHWISE_CONV_2D
                c.builtinCode, c.deprecatedBuiltinCode = code, min(code, 127)

    return swap


@pytest.mark.parametrize(
    "code,name",
    [(36, "GATHER"), (44, "UNIDIRECTIONAL_SEQUENCE_LSTM"), (150, "GELU"), (209, "STABLEHLO_CASE"), (210, "#210")],
)
def test_unsupported_operator_is_named(op_models, code, name):
    with pytest.raises(EngineError, match=f"^unsupported operator {name}$") as refused:
        Engine(edit_tflite(op_models["mixed"][0], _swap_depthwise(code)))
    assert refused.value.status == Status.UNSUPPORTED


def test_every_builtin_operator_has_its_name():
    from tensorflow.lite.python import schema_py_generated as schema

    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    with open(efp.SOURCE / "op_names.c") as handle:
        literal = handle.read().split("op_names[] =")[1].split(";")[0]
    table = "".join(line.split('"')[1] for line in literal.splitlines()[1:])
    assert table.split("\\0") == [names[code] for code in range(len(names))]


def test_custom_operator_is_named_by_its_code(op_models):
    def custom(m, sg, schema):
        for c in m.operatorCodes:
            if c.builtinCode == 4:
                c.builtinCode, c.deprecatedBuiltinCode, c.customCode = 32, 32, b"TFLite_Detection_PostProcess"

    with pytest.raises(EngineError, match=r"^unsupported operator CUSTOM \(TFLite_Detection_PostProcess\)$"):
        Engine(edit_tflite(op_models["mixed"][0], custom))


def test_unsupported_types_and_options_are_named(op_models):
    def int16_io(m, sg, schema):
        sg.tensors[sg.inputs[0]].type = 7  # INT16

    def relu_n1(m, sg, schema):
        for op in _ops(m, sg, (3,)):
            op.builtinOptions.fusedActivationFunction = 5  # SIGN_BIT

    with pytest.raises(EngineError, match="unsupported tensor type INT16"):
        Engine(edit_tflite(op_models["mixed"][0], int16_io))
    with pytest.raises(EngineError, match="^CONV_2D: unsupported fused activation$"):
        Engine(edit_tflite(op_models["mixed"][0], relu_n1))


def test_corrupt_models_are_refused_without_crashing(op_models):
    model = op_models["mixed"][0]
    for broken in (model[: len(model) // 2], b"\0" * 64):
        with pytest.raises(EngineError) as refused:
            Engine(broken)
        assert refused.value.status == Status.INVALID_MODEL
    for broken in _damaged(model, 400):
        try:
            engine = Engine(broken)
        except EngineError as refused:
            assert refused.status in (Status.INVALID_MODEL, Status.UNSUPPORTED), refused
            continue
        engine.invoke([np.zeros(t.shape, t.dtype) for t in engine.inputs])


def _damaged(model: bytes, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        broken = bytearray(model[: rng.integers(8, len(model))] if i % 4 == 0 else model)
        for _ in range(rng.integers(1, 6)):
            broken[rng.integers(8, len(broken))] = rng.integers(256)
        yield bytes(broken)


# ---- the arena ----


def test_too_small_arena_reports_exactly_what_is_needed(op_models):
    model, shapes = op_models["mixed"]
    needed = efp.arena_needed(model, dsp=False)
    big = Engine(model, 256 * 1024)
    assert big.arena_needed == needed and big.arena_used == needed
    for size in (needed // 2, needed - 1, 0):
        with pytest.raises(EngineError, match=f"arena too small: model needs {needed} bytes") as refused:
            Engine(model, size)
        assert refused.value.status == Status.ARENA_TOO_SMALL
    exact = Engine(model, needed)
    x = random_int8(shapes[0], n=50)
    np.testing.assert_array_equal(engine_run(exact, [x]), engine_run(big, [x]))
    assert Engine(model, needed + 8, arena_offset=1).arena_used == needed + 7  # unaligned arena: padding counted


def test_inspect_reports_both_arenas(digits_bundle):
    import json
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "edgefp", "inspect", digits_bundle[1], "--json"], capture_output=True, text=True
    )
    report = json.loads(result.stdout)
    assert 0 < report["engine_arena_bytes"] <= report["tflm_arena_bytes"]


def test_elementwise_operators_run_in_place_when_their_input_dies():
    import tensorflow as tf

    model, shapes = _convert(lambda x: tf.sigmoid(tf.nn.leaky_relu(tf.transpose(x, [0, 2, 1]), 0.1)), (64, 32))
    # transposed input (2 KB) -> LEAKY_RELU -> LOGISTIC: one buffer besides the input, not two
    assert efp.arena_needed(model) < 2 * 2048 + 1024
    assert_bit_exact(model, random_int8(shapes[0], n=20))


# ---- sanitizers ----


@pytest.fixture(scope="module")
def sanitized(tmp_path_factory):
    """The engine run command built with ASan and UBSan (every finding fatal), portable and DSP kernels."""
    out = tmp_path_factory.mktemp("asan")
    flags = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-g", "-O1", "-fsanitize=address,undefined"]
    flags += ["-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-I", str(efp.SOURCE)]
    built = {}
    for dsp in (0, 1):
        built[dsp] = str(out / f"engine_run_{dsp}")
        sources = [*map(str, efp.sources()), os.path.join(TESTS, "c", "engine_run.c")]
        subprocess.run(["gcc", *flags, f"-DEFP_DSP={dsp}", *sources, "-o", built[dsp]], check=True)
    return built


def _run_sanitized(command: str, model: bytes, samples: bytes, tmp_path) -> tuple[str, bytes]:
    (tmp_path / "model.tflite").write_bytes(model)
    (tmp_path / "samples.bin").write_bytes(samples)
    result = subprocess.run(
        [command, str(tmp_path / "model.tflite"), str(tmp_path / "samples.bin"), str(tmp_path / "out.bin")],
        capture_output=True,
        text=True,
        env={**os.environ, "ASAN_OPTIONS": "detect_leaks=1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = tmp_path / "out.bin"
    return result.stdout, out.read_bytes() if out.exists() else b""


@pytest.mark.parametrize("name", PEERS)
def test_peer_models_are_clean_under_sanitizers(sanitized, name, tmp_path):
    _check_sanitized(sanitized, peer(name), tmp_path)


def test_operator_models_are_clean_under_sanitizers(sanitized, op_models, tmp_path):
    for name in ("mixed", "dense", "activations", "movement", "reshaped", "two_inputs", "residual"):
        _check_sanitized(sanitized, op_models[name][0], tmp_path)


def _check_sanitized(sanitized, model: bytes, tmp_path):
    engine = Engine(model)
    inputs = [np.concatenate([structured_int8(t.shape[1:])[:3], random_int8(t.shape[1:], n=2)]) for t in engine.inputs]
    samples = b"".join(b"".join(x[i].tobytes() for x in inputs) for i in range(len(inputs[0])))
    expected = tflm_run(model, inputs).tobytes()
    for dsp, command in sanitized.items():
        status, out = _run_sanitized(command, model, samples, tmp_path)
        assert status.startswith("status 0 ") and out == expected, f"dsp={dsp}: {status}"


def test_damaged_models_are_clean_under_sanitizers(sanitized, op_models, tmp_path):
    for i, model in enumerate(_damaged(op_models["movement"][0], 60, seed=1)):
        status, _ = _run_sanitized(sanitized[i % 2], model, bytes(48), tmp_path)
        assert status.split()[1] in ("0", "1", "2")


# ---- the emulated Cortex-M4 ----


@pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("arm-none-eabi-gcc", "qemu-system-arm", "make")),
    reason="needs arm-none-eabi-gcc and qemu-system-arm",
)
def test_operator_models_are_bit_exact_on_the_emulated_cortex_m4(op_models, tmp_path):
    """The kernels for the DSP extension as the chip runs them, their assembly included: output stages
    over the whole int8 range and a narrower one (RELU6, a clip to [-1, 1]), per channel and per
    tensor, with and without a bias, strided, dilated and depthwise convolutions with channels in fours
    and not, fully connected, element-wise operators (inputs of equal scales too), float edges."""
    from edgefp.bundle import Bundle
    from edgefp.firmware_host.firmware.launch import start
    from edgefp.firmware_host.link import client
    from edgefp.wrap import wrap

    with start("qemu-m4") as chip, client.open_device(chip.url, timeout=30.0) as device:
        models = {name: op_models[name] for name in ("image", "mixed", "dense", "activations", "residual")}
        models["equal_scales"] = _edited(op_models["mixed"], _equal_input_scales)
        for name, (model, shapes) in models.items():
            (tmp_path / f"{name}.tflite").write_bytes(model)
            manifest = wrap(str(tmp_path / f"{name}.tflite"), str(tmp_path / f"{name}.efp"))
            client.flash(device, Bundle.load(str(tmp_path / f"{name}.efp")).archive_bytes())
            if manifest.input.dtype == "float32":
                x = np.random.default_rng(2).normal(scale=2.0, size=(20, *shapes[0])).astype(np.float32)
            else:
                x = np.concatenate([structured_int8(shapes[0])[:4], random_int8(shapes[0], n=16)])
            got = []
            for sample in x:
                outputs, _ = client.infer_outputs(device, sample, manifest.outputs.raw)
                got.append(np.concatenate([out.reshape(-1).view(np.uint8) for out in outputs]))
            np.testing.assert_array_equal(np.array(got), tflm_run(model, [x]), err_msg=name)
