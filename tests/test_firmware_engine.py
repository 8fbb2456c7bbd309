"""The firmware's C inference engine, built for the host, against the TFLite Micro interpreter:
every output byte must match, on the three bundle templates and on single-operator models."""

import ctypes
import os
import shutil
import subprocess
import warnings

import numpy as np
import pytest

from edgefp.runtime import captured_output
from tests.conftest import edit_tflite

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is needed to build the engine")

HERE = os.path.dirname(__file__)
SRC = os.path.join(HERE, "..", "edgefp", "firmware_host", "c", "src")
OK, INVALID_MODEL, UNSUPPORTED, ARENA_TOO_SMALL = 0, 1, 2, 3


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("engine") / "libengine.so")
    sources = [os.path.join(SRC, f) for f in ("engine.c", "ops.c")] + [os.path.join(HERE, "c", "engine_shim.c")]
    flags = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-O2", "-fPIC", "-shared", "-I", SRC]
    subprocess.run(["gcc", *flags, *sources, "-o", out], check=True, capture_output=True, text=True)
    lib = ctypes.CDLL(out)
    for name in ("shim_engine_size", "shim_arena_used", "shim_arena_needed"):
        getattr(lib, name).restype = ctypes.c_size_t
    lib.shim_error.restype = ctypes.c_char_p
    lib.efp_engine_init.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t]
    size, ptr = ctypes.c_size_t, ctypes.c_void_p
    lib.shim_run.argtypes = [ptr, ptr, size, size, ptr, size]
    return lib


class Engine:
    def __init__(self, lib, model: bytes, arena_bytes: int = 256 * 1024, arena_offset: int = 0):
        self.lib, self.model = lib, ctypes.create_string_buffer(model, len(model))
        self.state = ctypes.create_string_buffer(lib.shim_engine_size())
        self.arena = ctypes.create_string_buffer(arena_bytes + arena_offset)
        arena = ctypes.addressof(self.arena) + arena_offset
        self.status = lib.efp_engine_init(self.state, self.model, len(model), arena, arena_bytes)
        self.error = lib.shim_error(self.state).decode()
        self.used, self.needed = lib.shim_arena_used(self.state), lib.shim_arena_needed(self.state)

    def run(self, x: np.ndarray, out_bytes: int) -> np.ndarray:
        x = np.ascontiguousarray(x)
        out = np.zeros((len(x), out_bytes), np.uint8)
        status = self.lib.shim_run(self.state, x.ctypes.data, x[0].nbytes, len(x), out.ctypes.data, out_bytes)
        assert status == OK, f"{status}: {self.lib.shim_error(self.state).decode()}"
        return out


def tflm_run(model: bytes, x: np.ndarray) -> np.ndarray:
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
        for sample in x:
            interpreter.set_input(sample[None], 0)
            interpreter.invoke()
            rows.append(np.concatenate([interpreter.get_output(i).reshape(-1).view(np.uint8) for i in range(n_out)]))
    return np.array(rows)


def assert_bit_exact(lib, model: bytes, x: np.ndarray) -> Engine:
    engine = Engine(lib, model)
    assert engine.status == OK, engine.error
    expected = tflm_run(model, x)
    got = engine.run(x, expected.shape[1])
    bad = np.nonzero((got != expected).any(axis=1))[0]
    first = np.nonzero(got[bad[0]] != expected[bad[0]])[0][:8] if len(bad) else None
    assert not len(bad), f"{len(bad)}/{len(x)} samples differ, first at output bytes {first}"
    return engine


def random_int8(shape, n=300, seed=0):
    return np.random.default_rng(seed).integers(-128, 128, size=(n, *shape), dtype=np.int8)


# ---- the three templates ----


def _bundle(dataset, tmp_path_factory, name):
    from edgefp.bundle import Bundle
    from edgefp.converter.convert import convert
    from edgefp.trainer import train

    root = tmp_path_factory.mktemp(name)
    train(dataset, epochs=1, seed=0, progress=False).save(str(root / "run"))
    convert(str(root / "run"), dataset, str(root / "bundle"))
    return Bundle.load(str(root / "bundle"))


@pytest.fixture(scope="module")
def seq_bundle(tmp_path_factory):
    from edgefp import data

    return _bundle(data.load("basic_motions:train"), tmp_path_factory, "seq"), data.load("basic_motions:test")


@pytest.fixture(scope="module")
def vec_bundle(tmp_path_factory):
    from edgefp import data

    flat = lambda d: data.Dataset(x=d.x.reshape(len(d.x), -1), y=d.y, name="vec")  # noqa: E731
    return _bundle(flat(data.load("digits:train:0-4")), tmp_path_factory, "vec"), flat(data.load("digits:test"))


def _check_bundle(lib, bundle, real):
    x = bundle.quantize(real.x)
    x = np.concatenate([x, random_int8(x.shape[1:])])
    engine = assert_bit_exact(lib, bundle.model_bytes, x)
    assert 0 < engine.used <= bundle.manifest["tflm_arena_bytes"]


def test_image_bundle_is_bit_exact(lib, digits_bundle):
    from edgefp import data
    from edgefp.bundle import Bundle

    _check_bundle(lib, Bundle.load(digits_bundle[1]), data.load("digits:test"))


def test_sequence_bundle_is_bit_exact(lib, seq_bundle):
    _check_bundle(lib, *seq_bundle)


def test_vector_bundle_is_bit_exact(lib, vec_bundle):
    _check_bundle(lib, *vec_bundle)


# ---- single-operator models for what the bundles do not exercise ----


def _convert(fn, shape, *, float_io=False, per_tensor_fc=False):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    f = tf.function(fn, input_signature=[tf.TensorSpec([1, *shape], tf.float32)])
    converter = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    samples = [2 * rng.normal(size=(1, *shape)).astype(np.float32) for _ in range(50)]
    converter.representative_dataset = lambda: ([s] for s in samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if not float_io:
        converter.inference_input_type = converter.inference_output_type = tf.int8
    converter._experimental_disable_per_channel_quantization_for_dense_layers = per_tensor_fc
    with captured_output(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Statistics for quantized inputs were expected" (float input)
        return bytes(converter.convert())


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

    fcw = k(20, 7)

    def dense(x):  # per-tensor FULLY_CONNECTED keeping a time axis, MEAN over it, row-wise SOFTMAX
        h = tf.matmul(x, fcw)
        return tf.reduce_mean(h, 1), tf.nn.softmax(h)

    def pad_and_max(x):  # zero padding (causal convolutions, ZeroPadding layers), global and 1-D max pooling
        padded = tf.pad(x, [[0, 0], [2, 1], [0, 3], [1, 0]])
        return padded, tf.reduce_max(padded, [1, 2]), tf.reduce_max(x, 2)

    return {
        "image": (_convert(image, (9, 9, 3), float_io=True), (9, 9, 3)),
        "mixed": (_convert(mixed, (8, 8, 4)), (8, 8, 4)),
        "dense": (_convert(dense, (4, 20), per_tensor_fc=True), (4, 20)),
        "pad_and_max": (_convert(pad_and_max, (8, 8, 4)), (8, 8, 4)),
    }


def test_float_io_conv_depthwise_pool_broadcast_models_are_bit_exact(lib, op_models):
    model, shape = op_models["image"]
    x = (2 * np.random.default_rng(0).normal(size=(200, *shape))).astype(np.float32)
    assert_bit_exact(lib, model, x)


@pytest.mark.parametrize("name", ["mixed", "dense", "pad_and_max"])
def test_int8_single_operator_models_are_bit_exact(lib, op_models, name):
    model, shape = op_models[name]
    assert_bit_exact(lib, model, random_int8(shape))


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


@pytest.mark.parametrize("edit", [_requantize_first_output, _per_tensor_filters, _mean_keeps_quantization])
def test_edited_models_are_bit_exact(lib, op_models, edit):
    model, shape = op_models["mixed"]
    assert_bit_exact(lib, edit_tflite(model, edit), random_int8(shape, n=200))


# ---- refusals and the arena ----


@pytest.mark.parametrize("code,name", [(36, "GATHER"), (2, "CONCATENATION"), (150, "#150")])
def test_unsupported_operator_is_named(lib, op_models, code, name):
    def swap(m, sg, schema):
        for c in m.operatorCodes:
            if c.builtinCode == 4:  # DEPTHWISE_CONV_2D
                c.builtinCode, c.deprecatedBuiltinCode = code, min(code, 127)

    engine = Engine(lib, edit_tflite(op_models["mixed"][0], swap))
    assert engine.status == UNSUPPORTED and engine.error == f"unsupported operator {name}"


def test_corrupt_models_are_refused_without_crashing(lib, op_models):
    model = op_models["mixed"][0]
    assert Engine(lib, model[: len(model) // 2]).status == INVALID_MODEL
    assert Engine(lib, b"\0" * 64).status == INVALID_MODEL
    rng = np.random.default_rng(0)
    for i in range(400):
        broken = bytearray(model[: rng.integers(8, len(model))] if i % 4 == 0 else model)
        for _ in range(rng.integers(1, 6)):
            broken[rng.integers(8, len(broken))] = rng.integers(256)
        engine = Engine(lib, bytes(broken))
        assert engine.status in (OK, INVALID_MODEL, UNSUPPORTED), engine.error
        if engine.status == OK:
            assert lib.efp_engine_invoke(engine.state) == OK


def test_too_small_arena_reports_exactly_what_is_needed(lib, op_models):
    model, shape = op_models["mixed"]
    big = Engine(lib, model)
    needed = big.needed
    assert big.status == OK and big.used == needed
    small = Engine(lib, model, arena_bytes=needed // 2)
    assert small.status == ARENA_TOO_SMALL and small.needed == needed and str(needed) in small.error
    assert Engine(lib, model, arena_bytes=needed - 1).status == ARENA_TOO_SMALL
    exact = Engine(lib, model, arena_bytes=needed)
    assert exact.status == OK and exact.used == needed
    x = random_int8(shape, n=50)
    out_bytes = tflm_run(model, x[:1]).shape[1]
    np.testing.assert_array_equal(exact.run(x, out_bytes), big.run(x, out_bytes))
    assert Engine(lib, model, arena_bytes=0).needed == needed
    assert Engine(lib, model, arena_bytes=needed + 8, arena_offset=1).status == OK  # unaligned arena


def test_init_again_on_the_same_arena_switches_models(lib, op_models):
    mixed, dense = op_models["mixed"], op_models["dense"]
    engine = Engine(lib, mixed[0])
    for model, shape in (dense, mixed):
        engine.model = ctypes.create_string_buffer(model, len(model))
        assert lib.efp_engine_init(engine.state, engine.model, len(model), engine.arena, len(engine.arena)) == OK
        x = random_int8(shape, n=20)
        expected = tflm_run(model, x)
        np.testing.assert_array_equal(engine.run(x, expected.shape[1]), expected)
