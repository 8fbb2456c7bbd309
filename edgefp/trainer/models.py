"""TinyML-sized Keras classifiers chosen from the input's shape, and their training."""

from __future__ import annotations

import math

import numpy as np

from edgefp.errors import EdgefpError

TARGET_STEPS = 1500  # optimizer steps the automatic epoch count aims for
BATCH_SIZE = 32


def seed_everything(seed: int) -> None:
    """Make Keras/TensorFlow training repeatable for a given seed."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def auto_epochs(n_samples: int, batch_size: int = BATCH_SIZE, steps: int = TARGET_STEPS) -> int:
    """Enough epochs for about ``steps`` optimizer steps, between 20 and 300."""
    return int(min(300, max(20, math.ceil(steps / math.ceil(n_samples / batch_size)))))


def build_classifier(input_shape: tuple[int, ...], n_classes: int, width: int = 1):
    """A small CNN for images (H, W, C), a 1-D CNN for sequences (T, C), an MLP for vectors (D,), with
    ``width`` times the filters and units of every hidden layer.

    The last two layers are always ``logits`` (Dense) and ``probs`` (Softmax), so the logits can be
    fingerprinted as a layer of their own.
    """
    import keras
    from keras import layers

    inputs = keras.Input(shape=input_shape, name="input")
    h = inputs
    if len(input_shape) == 3:
        filters, size = 8 * width, min(input_shape[:2])
        while size > 4:
            h = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{filters}")(h)
            h = layers.MaxPooling2D(2, name=f"pool{filters}")(h)
            filters, size = filters * 2, size // 2
        h = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{filters}")(h)
        h = (
            layers.GlobalAveragePooling2D(name="gap")(h)
            if size * size * filters > 512
            else layers.Flatten(name="flatten")(h)
        )
    elif len(input_shape) == 2:
        filters, length = 16 * width, input_shape[0]
        while length > 16 and filters <= 32 * width:
            h = layers.Conv1D(filters, 5, padding="same", activation="relu", name=f"conv{filters}")(h)
            h = layers.MaxPooling1D(2, name=f"pool{filters}")(h)
            filters, length = filters * 2, length // 2
        h = layers.Conv1D(filters, 3, padding="same", activation="relu", name=f"conv{filters}")(h)
        h = layers.GlobalAveragePooling1D(name="gap")(h)
    elif len(input_shape) == 1:
        h = layers.Dense(64 * width, activation="relu", name=f"dense{64 * width}")(h)
    else:
        raise EdgefpError(f"samples of shape {input_shape} are not images, sequences or vectors")
    h = layers.Dense(32 * width, activation="relu", name=f"dense{32 * width}")(h)
    logits = layers.Dense(n_classes, name="logits")(h)
    probs = layers.Softmax(name="probs")(logits)
    return keras.Model(inputs, probs, name="classifier")


def train_classifier(
    x: np.ndarray, y: np.ndarray, n_classes: int, *, epochs: int | None, seed: int, progress=None, width: int = 1
):
    """Build (:func:`build_classifier`) and train a classifier on preprocessed ``x`` and class indices ``y``;
    return the model. ``progress(task, done, total)`` is told each epoch (:mod:`edgefp.progress`)."""
    import keras

    from edgefp.progress import Steps

    seed_everything(seed)
    model = build_classifier(x.shape[1:], n_classes, width)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    epochs = epochs or auto_epochs(len(x))
    steps = Steps(progress, "training classifier", epochs)
    callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: steps.update(1))
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=epochs, shuffle=True, verbose=0, callbacks=[callback])
    return model
