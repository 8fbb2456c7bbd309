"""Users' own Keras classifiers, built the way people build them, through fingerprint -> convert ->
the C firmware (results equal to TFLite Micro's on the host); recurrent ones refused at convert."""

import os
import subprocess
import sys

import numpy as np
import pytest

from edgefp import data
from edgefp.bundle import Bundle
from edgefp.errors import EdgefpError
from edgefp.firmware_host.firmware.build import build
from edgefp.firmware_host.firmware.launch import start_native
from edgefp.firmware_host.link import client
from tests.conftest import synthetic

pytestmark = pytest.mark.heavy  # trains users' models and runs them on the native firmware

CLASSES = 3
OPERATORS = {  # what the layers become in the int8 model, beyond the usual convolutions and dense layers
    "image_model": {"DEPTHWISE_CONV_2D", "REDUCE_MAX", "ADD"},
    "sequence_model": {"PAD", "REDUCE_MAX"},
    "vector_model": {"FULLY_CONNECTED"},
}


def image_model(keras, layers):
    """Functional: Rescaling, BatchNormalization, DepthwiseConv2D, SeparableConv2D, a residual Add,
    Dropout, GlobalMaxPooling2D, a softmax Dense."""
    inputs = keras.Input((12, 12, 1))
    h = layers.Rescaling(0.5, offset=0.1)(inputs)
    h = layers.Conv2D(8, 3, padding="same")(h)
    h = layers.ReLU()(layers.BatchNormalization()(h))
    h = layers.DepthwiseConv2D(3, padding="same", activation="relu")(h)
    skip = layers.SeparableConv2D(8, 3, padding="same", activation="relu")(h)
    h = layers.Dropout(0.2)(layers.Add()([h, skip]))
    h = layers.GlobalMaxPooling2D()(layers.MaxPooling2D()(h))
    return keras.Model(inputs, layers.Dense(CLASSES, activation="softmax")(h)), (12, 12, 1)


def sequence_model(keras, layers, x):
    """Sequential: Normalization adapted to the data, dilated Conv1D (causal and same), BatchNormalization,
    Dropout, GlobalMaxPooling1D, a Softmax layer after the logits."""
    normalization = layers.Normalization(axis=-1)
    normalization.adapt(x)
    model = keras.Sequential(
        [
            keras.Input((40, 3)),
            normalization,
            layers.Conv1D(8, 3, dilation_rate=2, padding="causal", activation="relu"),
            layers.BatchNormalization(),
            layers.Dropout(0.1),
            layers.Conv1D(8, 3, dilation_rate=4, padding="same", activation="relu"),
            layers.GlobalMaxPooling1D(),
            layers.Dense(CLASSES),
            layers.Softmax(),
        ]
    )
    return model, (40, 3)


def vector_model(keras, layers):
    """Sequential MLP: Dense, BatchNormalization, Dropout, Dense with softmax."""
    model = keras.Sequential(
        [
            keras.Input((20,)),
            layers.Dense(16, activation="relu"),
            layers.BatchNormalization(),
            layers.Dropout(0.3),
            layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    return model, (20,)


@pytest.fixture(scope="module")
def device(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("fw") / "flash.bin")
    with start_native(build("native"), path) as native, client.open_device(native.url) as opened:
        yield opened


def _saved(model, shape, tmp_path, seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    train_set, test_set = synthetic(shape, CLASSES, 240, 60, seed=seed)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(train_set.x, train_set.y, epochs=30, batch_size=32, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    return path, train_set, test_set


@pytest.mark.parametrize("build", [image_model, sequence_model, vector_model])
def test_a_users_model_runs_bit_exact_on_the_firmware(build, device, tmp_path):
    import keras
    from keras import layers

    from edgefp.converter.convert import convert
    from edgefp.trainer import fingerprint_model

    keras.utils.set_random_seed(0)  # the initial weights too, whatever ran before in this process
    if build is sequence_model:
        model, shape = build(keras, layers, synthetic((40, 3), CLASSES, 240, 1)[0].x)
    else:
        model, shape = build(keras, layers)
    path, train_set, test_set = _saved(model, shape, tmp_path)
    fingerprint = fingerprint_model(path, data.Dataset(train_set.x, None, "train"), epochs=3, progress=False)
    fingerprint.save(str(tmp_path / "run"))
    manifest = convert(str(tmp_path / "run"), train_set, str(tmp_path / "bundle.efp"))
    bundle = Bundle.load(str(tmp_path / "bundle.efp"))
    assert OPERATORS[build.__name__] <= set(manifest.ops)
    # a model that learned (chance is 1/3; training on 240 samples varies with what ran before in the process)
    assert manifest.parity["int8_accuracy"] >= 0.6 and manifest.parity["runtime_pred_agreement"] >= 0.95
    expected = bundle.score(test_set.x, "tflm")
    assert np.mean(expected.pred == test_set.y) >= 0.6
    client.flash(device, bundle.archive_bytes())
    on_device, _ = client.infer_samples(device, test_set.x)
    for key in ("pred", "probs", "ood_score", "is_ood", "layer_errors"):
        np.testing.assert_array_equal(getattr(on_device, key), getattr(expected, key), err_msg=key)


def test_the_models_hold_every_layer_the_docs_list():
    import keras
    from keras import layers

    models = [image_model(keras, layers)[0], vector_model(keras, layers)[0]]
    models.append(sequence_model(keras, layers, np.zeros((4, 40, 3), np.float32))[0])
    kinds = {type(layer).__name__ for model in models for layer in model.layers}
    listed = {"BatchNormalization", "Dropout", "DepthwiseConv2D", "SeparableConv2D", "Add", "GlobalMaxPooling2D"}
    listed |= {"GlobalMaxPooling1D", "Conv1D", "Rescaling", "Normalization", "Softmax"}
    assert listed <= kinds


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "SimpleRNN"])
def test_recurrent_layers_are_refused_at_convert_naming_the_layer(kind):
    import keras

    from edgefp.converter.convert import check_convertible

    recurrent = getattr(keras.layers, kind)(4, name="memory")
    inner = keras.Sequential([keras.Input((10, 2)), keras.layers.Bidirectional(recurrent)])
    model = keras.Sequential([keras.Input((10, 2)), inner, keras.layers.Dense(2, activation="softmax")])
    with pytest.raises(EdgefpError, match=r"layer 'bidirectional\w*' \(Bidirectional\) cannot be deployed int8"):
        check_convertible(model)
    memory = getattr(keras.layers, kind)(4, name="memory")
    plain = keras.Sequential([keras.Input((10, 2)), memory, keras.layers.Dense(2)])
    with pytest.raises(EdgefpError, match=f"layer 'memory' \\({kind}\\) cannot be deployed int8: .* use Conv1D"):
        check_convertible(plain)


def test_an_lstm_classifier_is_fingerprinted_then_refused_by_edgefp_convert(tmp_path):
    import keras

    train_set, _ = synthetic((40, 3), CLASSES, 120, 1)
    np.savez(tmp_path / "train.npz", x=train_set.x, y=train_set.y)
    model = keras.Sequential([keras.Input((40, 3)), keras.layers.LSTM(8), keras.layers.Dense(CLASSES, "softmax")])
    model.save(tmp_path / "lstm.keras")
    commands = [
        ["fingerprint", "--model", "lstm.keras", "--data", "train.npz", "--out", "run", "--epochs", "2"],
        ["convert", "run", "--calib", "train.npz", "--out", "bundle.efp"],
    ]
    results = [
        subprocess.run([sys.executable, "-m", "edgefp", *args], cwd=tmp_path, capture_output=True, text=True)
        for args in commands
    ]
    assert results[0].returncode == 0, results[0].stderr[-500:]
    assert "  lstm: autoencoder" in results[0].stdout  # the recurrent layer's output is what it fingerprints
    assert results[1].returncode == 2 and not os.path.exists(tmp_path / "bundle.efp")
    errors = [line for line in results[1].stderr.splitlines() if line.startswith("edgefp:")]
    assert len(errors) == 1 and errors[0].startswith("edgefp: error: layer 'lstm' (LSTM) cannot be deployed int8")


def test_a_model_that_overflows_on_the_data_is_refused_before_its_autoencoders_train(monkeypatch):
    import keras

    from edgefp.trainer import NeuralFingerprint

    def never(*args):
        raise AssertionError("the autoencoders started training")

    monkeypatch.setattr(NeuralFingerprint, "_train_autoencoders", never)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, "relu", name="hidden"), keras.layers.Dense(2)])
    weights, bias = model.layers[0].get_weights()
    model.layers[0].set_weights([np.full_like(weights, 1e30), bias])
    x = np.random.default_rng(0).uniform(1e14, 1e15, (60, 4)).astype(np.float32)  # within what data may hold
    with pytest.raises(EdgefpError, match="layer 'hidden' of the classifier overflows to inf or NaN on this data"):
        NeuralFingerprint(progress=False).fit(model, x)
