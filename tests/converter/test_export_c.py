import dataclasses
import hashlib
import math
import re
import shutil
import subprocess

import numpy as np
import pytest

from edgefp import ood
from edgefp.bundle import Bundle
from edgefp.converter.export_c import export_c
from edgefp.errors import EdgefpError
from edgefp.fsutil import MARKER
from edgefp.manifest import (
    QUANTILES,
    FileEntry,
    Input,
    Label,
    Layer,
    Manifest,
    ManifestError,
    Output,
    Outputs,
    Preprocessing,
    Score,
)

pytestmark = [pytest.mark.heavy, pytest.mark.filterwarnings("ignore:Statistics for quantized inputs:UserWarning")]

NAME = "tiny_ood"
SHAPE = (4, 4, 2)
MEAN, STD = [0.5, -1.0], [2.0, 0.25]
COARSE = 127 / 6  # the first error output's second value: int8 weights 127 and 6
CXX = ["-std=c++17", "-Wall", "-Wextra", "-Werror"]
C11 = ["-std=c11", "-Wall", "-Wextra", "-Werror"]
ARM = ["-mcpu=cortex-m4", "-mthumb", *CXX]

# Includes both headers and calls every helper; compiles as C11 and as C++17.
USE_SRC = f"""#include <stdint.h>
#include "model_data.h"
#include "{NAME}_ood_config.h"

int use(const float *x, int8_t *q, const int8_t *probs, const int8_t *errors, float *score);
int use(const float *x, int8_t *q, const int8_t *probs, const int8_t *errors, float *score)
{{
    edgefp_{NAME}_quantize(x, q);
    return edgefp_{NAME}_predict(probs) + edgefp_{NAME}_ood(errors, score) + g_{NAME}_model_data[0]
        + (int)g_{NAME}_model_data_size + (int)sizeof(edgefp_{NAME}_label_names[0]);
}}
"""


@pytest.fixture(scope="module")
def bundle():
    """A tiny full-int8 model with a probs (3,) output and two layer-error outputs (one holding its error at
    two scales, COARSE apart; the other at one), and a manifest for it."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input(SHAPE)
    hidden = tf.keras.layers.Dense(8, activation="relu")(tf.keras.layers.Flatten()(inp))
    probs = tf.keras.layers.Dense(3, activation="softmax")(hidden)
    errors = [tf.keras.layers.Dense(size, activation="relu")(hidden) for size in (2, 1)]
    model = tf.keras.Model(inp, [probs, *errors])
    calib = np.random.default_rng(0).normal(size=(32, *SHAPE)).astype(np.float32)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[None]] for x in calib)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    model_bytes = converter.convert()

    interpreter = Interpreter(model_content=model_bytes)
    in_scale, in_zp = interpreter.get_input_details()[0]["quantization"]
    order = [detail["index"] for detail in interpreter.get_output_details()]
    signature = interpreter._get_full_signature_list()["serving_default"]["outputs"]
    specs = []
    for position in range(3):
        detail = interpreter.get_output_details()[order.index(signature[f"output_{position}"])]
        scale, zero_point = detail["quantization"]
        index = order.index(detail["index"])
        size = int(detail["shape"][-1])
        specs.append(Output(index, (size,), float(scale), int(zero_point), coarse_factor=COARSE if size == 2 else None))
    typical = (0 - specs[1].zero_point) * specs[1].scale
    layers = tuple(
        Layer(
            name,
            "autoencoder",
            "log",
            0.5,
            8,
            mu,
            sigma,
            (0.0,) * QUANTILES,
            tuple(ood.z_table(spec.scale, spec.zero_point, mu, sigma, "log", coarse_factor=spec.coarse_factor)),
        )
        for name, spec, mu, sigma in zip(
            ("dense", "dense_1"), specs[1:], (math.log(typical), math.log(typical) - 1.0), (0.5, 0.8)
        )
    )
    threshold_units = int(0.8 * 2 * ood.SCORE_UNIT)
    manifest = Manifest(
        name=NAME,
        model="model.tflite",
        files={"model.tflite": FileEntry(hashlib.sha256(model_bytes).hexdigest(), len(model_bytes))},
        flash_bytes=len(model_bytes),
        tflm_arena_bytes=2000,
        ops=(),
        input=Input(SHAPE, "int8", float(in_scale), int(in_zp), Preprocessing("standardize", tuple(MEAN), tuple(STD))),
        outputs=Outputs(probs=specs[0], layer_errors=tuple(specs[1:])),
        labels=(Label(0, "zero", 0), Label(3, 'a "quoted" \\ name??=\n', 1), Label(7, "café", 2)),
        layers=layers,
        score=Score(ood.COMBINE, ood.EPS, 0.05, ood.SCORE_UNIT, threshold_units, 0.8, (0.0,) * QUANTILES),
    )
    assert Manifest.from_json(manifest.to_json()) == manifest  # a manifest a bundle could hold
    return manifest, model_bytes


@pytest.fixture(scope="module")
def exported(bundle, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "firmware"
    paths = export_c(*bundle, str(out))
    (out / "use.c").write_text(USE_SRC)
    (out / "use.cc").write_text(USE_SRC)
    return out, paths


def compile_ok(compiler, flags, source, cwd):
    result = subprocess.run(
        [compiler, *flags, "-c", source, "-o", source + ".o"], cwd=cwd, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_writes_the_three_files_and_nothing_else(exported):
    out, paths = exported
    names = ["model_data.h", "model_data.cc", f"{NAME}_ood_config.h"]
    assert paths == [str(out / name) for name in names]
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, MARKER, "use.c", "use.cc"])


def test_model_array_holds_exactly_the_model(exported, bundle):
    out, _ = exported
    source = (out / "model_data.cc").read_text()
    body = re.search(rf"alignas\(16\) const unsigned char g_{NAME}_model_data\[\] = \{{(.*?)\}};", source, re.S)
    assert bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", body.group(1))) == bundle[1]
    assert f"const unsigned int g_{NAME}_model_data_size = {len(bundle[1])};" in source
    assert f"extern const unsigned char g_{NAME}_model_data[];" in (out / "model_data.h").read_text()


def test_compiles_warning_free_as_cxx17_and_c11(exported):
    out, _ = exported
    compile_ok("g++", CXX, "model_data.cc", out)
    compile_ok("g++", CXX, "use.cc", out)
    compile_ok("gcc", C11, "use.c", out)


@pytest.mark.skipif(shutil.which("arm-none-eabi-g++") is None, reason="arm-none-eabi-g++ not installed")
def test_compiles_warning_free_for_cortex_m4(exported):
    out, _ = exported
    compile_ok("arm-none-eabi-g++", ARM, "model_data.cc", out)
    compile_ok("arm-none-eabi-g++", ARM, "use.cc", out)


def test_inline_helpers_match_the_bundle_arithmetic(exported, bundle):
    manifest, model_bytes = bundle
    out, _ = exported
    rng = np.random.default_rng(1)
    edges = [[-128, -128, -128], [127, 127, 127], [0, 0, 0], [127, -100, 5], [126, 127, 127], [127, 90, 127]]
    errors = np.concatenate([edges, rng.integers(-128, 128, (20, 3))]).astype(np.int8)
    errors[-10:, 0] = 127  # the first error beyond its first value's range: its second value counts
    probs = np.array([5, -3, 90], np.int8)
    x = (rng.normal(size=(3, *SHAPE)) * STD + MEAN).astype(np.float32).reshape(3, -1)
    x[0, :2] = [1e6, -1e6]  # clamped

    def c_array(values):
        return (
            "{" + ", ".join(repr(float(v)) if values.dtype.kind == "f" else str(int(v)) for v in values.ravel()) + "}"
        )

    program = f"""#include <cstdio>
#include "model_data.h"
#include "{NAME}_ood_config.h"
static const int8_t errors[][3] = {c_array(errors)};
static const float x[][{x.shape[1]}] = {c_array(x)};
static const int8_t probs[] = {c_array(probs)};
int main()
{{
    for (const int8_t *e : errors) {{
        float score;
        const int ood = edgefp_{NAME}_ood(e, &score);
        std::printf("score %.9g %d\\n", score, ood);
    }}
    for (const float *sample : x) {{
        int8_t q[EDGEFP_{NAME.upper()}_INPUT_ELEMENTS];
        edgefp_{NAME}_quantize(sample, q);
        for (int8_t v : q) std::printf("%d ", v);
        std::printf("\\n");
    }}
    std::printf("pred %d size %u\\n", edgefp_{NAME}_predict(probs), g_{NAME}_model_data_size);
}}
"""
    (out / "main.cc").write_text(program)
    build = subprocess.run(
        ["g++", *CXX, "main.cc", "model_data.cc", "-o", "main"], cwd=out, capture_output=True, text=True
    )
    assert build.returncode == 0, build.stderr
    lines = subprocess.run(["./main"], cwd=out, capture_output=True, text=True, check=True).stdout.splitlines()

    expected = Bundle(manifest, {}).decide(np.zeros((len(errors), 3), np.int8), errors)
    got = np.array([line.split()[1:] for line in lines[: len(errors)]], np.float64)
    np.testing.assert_allclose(got[:, 0], expected.ood_score, rtol=1e-6)
    np.testing.assert_array_equal(got[:, 1], expected.is_ood)
    assert 0 < expected.is_ood.sum() < len(errors)

    inp = manifest.input
    standardized = (x.reshape(3, *SHAPE).astype(np.float64) - MEAN) / STD / inp.scale
    rounded = np.sign(standardized) * np.floor(np.abs(standardized) + 0.5)  # half away from zero, like roundf
    expected_q = np.clip(rounded + inp.zero_point, -128, 127).reshape(3, -1)
    got_q = np.array([line.split() for line in lines[len(errors) : len(errors) + 3]], np.int64)
    assert np.abs(got_q - expected_q).max() <= 1 and np.mean(got_q == expected_q) > 0.95  # ties may round apart
    assert lines[-1] == f"pred 2 size {len(model_bytes)}"


def test_header_spells_floats_as_float32_literals(exported, bundle):
    out, _ = exported
    header = (out / f"{NAME}_ood_config.h").read_text()
    assert f"#define EDGEFP_{NAME.upper()}_TARGET_FPR 0.0500000007f" in header
    assert f"#define EDGEFP_{NAME.upper()}_TFLM_ARENA_BYTES 2000" in header
    assert f"#define EDGEFP_{NAME.upper()}_RECOMMENDED_ARENA_BYTES 2512" in header  # 2500 rounded up to 16
    assert r'"a \"quoted\" \\ name\?\?=\012", "caf\303\251"' in header


@pytest.mark.parametrize("name", ["Tiny", "tiny-model", "", None, "a*/b", "x" * 65])
def test_names_that_are_no_c_identifier_never_reach_the_export(bundle, name):
    manifest, _ = bundle
    with pytest.raises(ManifestError, match="name must be a string matching"):
        Manifest.from_json({**manifest.to_json(), "name": name})


def test_a_scale_beyond_float32_leaves_no_files(bundle, tmp_path):
    manifest, model_bytes = bundle
    outputs = dataclasses.replace(manifest.outputs, probs=dataclasses.replace(manifest.outputs.probs, scale=1e300))
    broken = Manifest.from_json(dataclasses.replace(manifest, outputs=outputs).to_json())  # within the manifest's rules
    with pytest.raises(EdgefpError, match="not a finite float32"):
        export_c(broken, model_bytes, str(tmp_path))
    assert list(tmp_path.iterdir()) == []
