"""NeuralFP fingerprints: the evidence a small classifier offers about its inputs, and its distribution.

Two kinds of evidence, one value per sample each: an autoencoder's reconstruction error for each
watched layer, and the classifier's largest logit, but where a vector classifier's input is watched
(docs/fingerprint.md).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass

import numpy as np

from edgefp import __version__, data, ood, shifts
from edgefp.errors import EdgefpError, option
from edgefp.fsutil import atomic_directory, read_json, sha256_file
from edgefp.progress import Steps
from edgefp.trainer import taps
from edgefp.trainer.models import BATCH_SIZE, seed_everything

SCHEMA = "edgefp.fingerprint"
SCHEMA_VERSION = 3
HOLDOUT_FILE = "holdout.npz"
AE_TARGET_STEPS = 1500  # optimizer steps for the autoencoders, whatever the data size
AE_MIN_ROWS = 640  # small fit sets are tiled to this many rows so an epoch is not a step or two
AE_TRAINING_NOISE = 0.1  # denoising: Gaussian noise (in standardised units) on the inputs while training
QUANT_FLOOR = 3.0  # standardisation no finer than this many int8 steps: rounding noise <= 0.1 std, as in training
ZERO_BYTES_PER_OPERATOR = 1536  # int8 zero weights worth an operator (and its tensors) more: docs/bundle.md
MIN_HOLDOUT = 5
MAX_STORED_HOLDOUT = 2000  # held-out samples kept in the RUN, to recalibrate after quantisation
AUTOENCODER, MAX_LOGIT = "autoencoder", "max_logit"


@dataclass
class Evidence:
    """One piece of evidence, one value per sample, and its distribution on data the model knows.

    ``kind`` is ``autoencoder`` (the reconstruction error of a layer's reduced activations; ``shape``,
    ``pool``, ``bottleneck`` and the per-channel standardisation ``mean``/``std`` describe it) or
    ``max_logit``. ``transform`` (``log`` or ``negate``) makes its values "larger = less usual" before
    the z-score ``(t(v) - z_mean) / z_std``; ``weight`` is its share of the score."""

    name: str
    kind: str
    transform: str
    features: int
    weight: float = 1.0
    params: int = 0
    file: str | None = None
    shape: list[int] | None = None
    pool: list[int] | None = None
    bottleneck: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    z_mean: float = 0.0
    z_std: float = 1.0
    holdout_quantiles: list[float] | None = None
    fit_quantiles: list[float] | None = None


def bottlenecks(features: list[int], n_classes: int, budget_params: float) -> list[int]:
    """The widest bottleneck each layer affords, between 1 and half its width, with the budget
    split between layers in proportion to their widths."""
    total = sum(features)
    widths = []
    for d in features:
        share = budget_params * d / total
        k = int((share - d - n_classes * d) // (2 * d + 1))
        widths.append(int(min(max(k, 1), math.ceil(d / 2))))
    return widths


def _autoencoder(features: int, bottleneck: int, n_classes: int, name: str):
    """Keras model (z, probs) -> the reconstruction residual ``W_d tanh(W_e r + b_e) + b_d - r`` of
    ``r = z - W_p probs``: the standardised features less the probability-weighted class mean, so the
    autoencoder models what varies within the predicted class (a label-free counterpart of
    class-conditional Mahalanobis). A subtraction rather than a concatenation, whose int8 form would
    force the features and the probabilities onto one quantisation scale."""
    import keras

    inputs = keras.Input((features,), name=f"{name}_in")
    probs = keras.Input((n_classes,), name=f"{name}_probs")
    class_mean = keras.layers.Dense(features, use_bias=False, name=f"{name}_class_mean")
    encode = keras.layers.Dense(bottleneck, activation="tanh", name=f"{name}_encode")
    decode = keras.layers.Dense(features, name=f"{name}_decode")
    residual = inputs - class_mean(probs)
    return keras.Model([inputs, probs], decode(encode(residual)) - residual, name=name)


def _reconstruction_error(ae, z, probs, clean=None):
    """Symbolic residual of autoencoder ``ae`` on standardised features ``z`` (when denoising, reconstructed
    from the noisy ``z`` and compared with the ``clean`` ones)."""
    class_mean = ae.get_layer(f"{ae.name}_class_mean")(probs)
    decoded = ae.get_layer(f"{ae.name}_decode")(ae.get_layer(f"{ae.name}_encode")(z - class_mean))
    return decoded - ((z if clean is None else clean) - class_mean)


def _extent(tensor):
    """Symbolic per-sample (largest, smallest) value of a tensor, (N, 2)."""
    import keras

    flat = keras.ops.reshape(tensor, (-1, math.prod(tensor.shape[1:])))
    return keras.ops.stack([keras.ops.max(flat, axis=1), keras.ops.min(flat, axis=1)], axis=1)


def _joint_weights(autoencoders) -> dict:
    """The autoencoders' weights as one block: class means side by side, encoders and decoders on a block
    diagonal; ``columns`` holds each autoencoder's feature columns."""
    parts = [
        [ae.get_layer(f"{ae.name}_{part}").get_weights() for part in ("class_mean", "encode", "decode")]
        for ae in autoencoders
    ]
    features = [class_mean[0].shape[1] for class_mean, _, _ in parts]
    codes = [encode[0].shape[1] for _, encode, _ in parts]
    encode = np.zeros((sum(features), sum(codes)), np.float32)
    decode = np.zeros((sum(codes), sum(features)), np.float32)
    columns, row, code = [], 0, 0
    for (_, (w_e, _), (w_d, _)), f, c in zip(parts, features, codes):
        encode[row : row + f, code : code + c] = w_e
        decode[code : code + c, row : row + f] = w_d
        columns.append(np.arange(row, row + f))
        row, code = row + f, code + c
    return {
        "class_mean": np.concatenate([class_mean[0] for class_mean, _, _ in parts], axis=1),
        "encode": encode,
        "encode_bias": np.concatenate([e[1] for _, e, _ in parts]),
        "decode": decode,
        "decode_bias": np.concatenate([d[1] for _, _, d in parts]),
        "columns": columns,
    }


def runs_apart(features: list[int], codes: list[int]) -> bool:
    """Whether the autoencoders (``features`` and bottleneck ``codes`` each) run apart in the deployed graph
    rather than as one block: when the zero weights that one block holds (its block diagonal's, and
    those of each error's average over every autoencoder's columns) come to ZERO_BYTES_PER_OPERATOR for
    each of the 5 k - 4 operators that k autoencoders apart add (a STRIDED_SLICE of the residual, and an
    encoder, TANH, decoder, squared difference and average each, where the block has one of each
    but the averages)."""
    k = len(features)
    width, code = sum(features), sum(codes)
    zeros = 2 * (width * code - sum(f * c for f, c in zip(features, codes))) + 2 * (k - 1) * width
    return k > 1 and zeros >= ZERO_BYTES_PER_OPERATOR * (5 * k - 4)


def _squared_difference(name: str):
    """A layer computing ``(a - b)^2`` of a pair as one TensorFlow Lite operator (SQUARED_DIFFERENCE)."""
    import keras
    import tensorflow as tf

    return keras.layers.Lambda(lambda pair: tf.math.squared_difference(*pair), name=name)


def _int8_step(extent: np.ndarray) -> float:
    """The int8 step of a tensor whose per-sample extremes on a bundle's range samples
    (:func:`edgefp.shifts.range_samples`) are ``extent`` (N, 2): its range, with 0, over 255."""
    return float(max(extent[:, 0].max(), 0.0) - min(extent[:, 1].min(), 0.0)) / 255.0


def _channel_stats(features: np.ndarray, channels: int, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of reduced features (N, positions x channels). A std is floored at a tenth
    of the average (dead units do not blow errors up) and at QUANT_FLOOR int8 steps of the averaged
    activation (``step``), so that rounding stays within the denoising noise the autoencoder learns with."""
    shaped = features.reshape(-1, channels)
    std = shaped.std(axis=0)
    return shaped.mean(axis=0), np.maximum(std, max(0.1 * std.mean(), QUANT_FLOOR * step) + 1e-6)


def check_sample_counts(n_fit: int, n_holdout: int, holdout: float) -> None:
    """Refuse a data set too small to fit autoencoders on and to calibrate a threshold with."""
    if n_holdout < MIN_HOLDOUT or n_fit < MIN_HOLDOUT:
        raise EdgefpError(
            f"too few samples to fingerprint ({n_fit} to fit, {n_holdout} held out); "
            f"give at least {2 * MIN_HOLDOUT / holdout:.0f} samples, with several of each class"
        )


def _file_stem(index: int, layer: str) -> str:
    return f"{index:02d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', layer)}"


class NeuralFingerprint:
    """Fingerprint a Keras classifier and score inputs for out-of-distribution.

    >>> fp = NeuralFingerprint(fpr=0.05).fit(model, x_train)
    >>> scores = fp.score(x_new)          # pred, probs, ood_score, is_ood, layer_errors
    >>> fp.ood_score(x_new)               # higher = more out-of-distribution
    >>> fp.predict(x_new)                 # +1 inlier, -1 outlier, as scikit-learn's outlier detectors
    >>> fp.save("run/"); fp = NeuralFingerprint.load("run/")

    Parameters: ``layers`` watched by autoencoders (default: every layer with a kernel below the
    penultimate one), target false-positive rate ``fpr`` on held-out in-distribution data, the
    ``holdout`` share used to calibrate when no held-out set is given, ``max_features`` per layer after
    average pooling, ``budget`` for the autoencoders' parameters as a share of the classifier's,
    ``epochs`` for the autoencoders (default: automatic), ``seed``, and a ``progress(task, done, total)``
    callback told each epoch (:mod:`edgefp.progress`).
    """

    def __init__(
        self, layers=None, fpr=0.05, holdout=0.2, max_features=32, budget=0.19, epochs=None, seed=0, progress=None
    ):
        self.layers = layers
        self.fpr = fpr
        self.holdout = holdout
        self.max_features = max_features
        self.budget = budget
        self.epochs = epochs
        self.seed = seed
        self.progress = progress

    # ----------------------------------------------------------------------------------- fitting
    def fit(self, model, x, x_holdout=None, *, preprocessing=None, labels=None):
        """Fingerprint ``model`` on raw in-distribution samples ``x`` (labels are not needed).

        ``x_holdout`` calibrates the evidence statistics and the threshold; without it a share
        ``holdout`` of ``x`` is set aside for that and nothing is fit on it.
        """
        started = time.monotonic()
        if not 0.0 < self.fpr < 1.0:
            raise EdgefpError(f"{option('fpr')} must be between 0 and 1, got {self.fpr}")
        taps.check_classifier(model)
        self.model_ = model
        self.preprocessing_ = preprocessing or {"type": "none"}
        n_classes = int(model.outputs[0].shape[-1])
        self.labels_ = labels or [{"index": i, "value": i, "name": str(i)} for i in range(n_classes)]
        if len(self.labels_) != n_classes:
            raise EdgefpError(f"{len(self.labels_)} label names given for a classifier with {n_classes} outputs")
        x = self._shaped(x, "training data")
        if x_holdout is None:
            pred = model.predict(self.prepare(x), verbose=0, batch_size=256).argmax(axis=1)
            held = data.stratified_split(pred, self.holdout, self.seed)
            x, x_holdout = x[~held], x[held]
        else:
            x_holdout = self._shaped(x_holdout, "held-out data")
        self.holdout_x_ = x_holdout[:MAX_STORED_HOLDOUT]
        x, x_holdout = self.prepare(x), self.prepare(x_holdout)
        check_sample_counts(len(x), len(x_holdout), self.holdout)
        seed_everything(self.seed)
        names = list(self.layers or taps.default_layers(model))
        if not names:
            raise EdgefpError(
                f"the classifier has no hidden layer with weights to fingerprint; name some with {option('layers')}"
            )
        if len(set(names)) != len(names):
            raise EdgefpError(f"{option('layers')} names a layer twice: {names}")
        import keras

        reduced, shapes, pools, probs = self._reduced_taps(names)
        *features, fit_probs = keras.Model(model.inputs, [*reduced, probs]).predict(x, verbose=0, batch_size=256)
        ranges = keras.Model(model.inputs, [_extent(taps.tap(model, name)) for name in names])
        extents = ranges.predict(shifts.range_samples(x, self.seed), verbose=0, batch_size=256)
        extents = extents if isinstance(extents, list) else [extents]
        for name, feats in zip(names, features):
            if not np.isfinite(feats).all():
                raise EdgefpError(f"layer '{name}' of the classifier overflows to inf or NaN on this data; rescale it")
        widths = bottlenecks([f.shape[1] for f in features], n_classes, self.budget * model.count_params())
        self.layers_, self.autoencoders_ = [], []
        for index, (name, shape, pool, feats, extent, width) in enumerate(
            zip(names, shapes, pools, features, extents, widths)
        ):
            mean, std = _channel_stats(feats, shape[-1], _int8_step(extent) / math.sqrt(math.prod(pool)))
            ae = _autoencoder(feats.shape[1], width, n_classes, f"ae{index}")
            self.layers_.append(
                Evidence(
                    name=name,
                    kind=AUTOENCODER,
                    transform="log",
                    features=feats.shape[1],
                    params=int(ae.count_params()),
                    file=f"autoencoders/{_file_stem(index, name)}.keras",
                    shape=list(shape),
                    pool=list(pool),
                    bottleneck=width,
                    mean=mean.tolist(),
                    std=std.tolist(),
                )
            )
            self.autoencoders_.append(ae)
        self._train_autoencoders([self._standardized(f, lay) for f, lay in zip(features, self.layers_)], fit_probs)
        if not (len(model.inputs[0].shape) == 2 and taps.input_name(model) in names):  # docs/fingerprint.md
            self.layers_.append(Evidence(name=taps.LOGITS, kind=MAX_LOGIT, transform="negate", features=n_classes))
        for layer in self.layers_:  # each kind of evidence weighs the same, shared by its members
            members = sum(other.kind == layer.kind for other in self.layers_)
            layer.weight = 1.0 / (members * len({other.kind for other in self.layers_}))
        self._build_monitor()
        fit_values = self._evidence(x)
        weights = np.asarray([layer.weight for layer in self.layers_])
        calibration = ood.calibrate(self._evidence(x_holdout), self.fpr, self.transforms_, weights)
        for j, layer in enumerate(self.layers_):
            layer.z_mean, layer.z_std = float(calibration.z_mean[j]), float(calibration.z_std[j])
            layer.holdout_quantiles = calibration.value_quantiles[j]
            layer.fit_quantiles = ood.quantiles(fit_values[:, j])
        self.threshold_ = calibration.threshold
        self.holdout_score_quantiles_ = calibration.score_quantiles
        self.n_fit_, self.n_holdout_ = len(x), len(x_holdout)
        self.fit_seconds_ = time.monotonic() - started
        return self

    def _shaped(self, x, what: str) -> np.ndarray:
        """Raw samples as float32 of the classifier's input shape, or a clear error."""
        return data.fit_input_shape(np.asarray(x, dtype=np.float32), tuple(self.model_.inputs[0].shape[1:]), what)

    def prepare(self, x, what: str = "data") -> np.ndarray:
        """Raw samples -> the classifier's input (shape checked, preprocessing applied)."""
        return data.apply_preprocessing(self._shaped(x, what), self.preprocessing_)

    def _reduced_taps(self, names, pools=None, scaling=None):
        """Symbolic reduced, flattened taps of the classifier, their shapes and pools, and its probabilities.

        Feature maps (sequences, images) are averaged over windows by a depthwise convolution (SAME
        padding, stride = window), which in int8 keeps the precision the average gains instead of
        rounding it back to the map's scale; ``scaling`` (per tap: a weight and a bias per channel)
        folds a standardisation into it. A vector is multiplied by its weight alone: its bias is the
        caller's to add (the monitor's class mean carries it, one operator less). A vector input is
        made a sequence of one position: read by a multiply, the int8 converter would give the model's
        input the quantisation of the evidence's concatenation. Without ``pools`` the windows are
        chosen from the tap shapes and ``max_features``.
        """
        import keras

        model = self.model_
        logits, probs = taps.logits_and_probs(model)
        outputs, shapes, used_pools = [], [], []
        for index, name in enumerate(names):
            t = logits if name == taps.LOGITS else taps.tap(model, name)
            if t is model.inputs[0] and len(t.shape) == 2:  # one position: pooled by an operator of its own
                t = keras.layers.Reshape((1, t.shape[1]), name=f"fp_input_{index}")(t)
            shape = tuple(t.shape[1:])
            pool = taps.pool_sizes(shape, self.max_features) if pools is None else tuple(pools[index])
            channels = shape[-1]
            weight, bias = (np.ones(channels), np.zeros(channels)) if scaling is None else scaling[index]
            if len(shape) in (2, 3):
                kind = keras.layers.DepthwiseConv1D if len(shape) == 2 else keras.layers.DepthwiseConv2D
                conv = kind(pool if len(shape) == 3 else pool[0], strides=pool, padding="same", name=f"fp_pool_{index}")
                t = keras.layers.Flatten(name=f"fp_flat_{index}")(conv(t))
                kernel = np.ones((*pool, channels, 1)) / math.prod(pool) * np.reshape(weight, (channels, 1))
                conv.set_weights([kernel.astype(np.float32), np.asarray(bias, np.float32)])
            elif len(shape) == 1 and scaling is not None:
                t = t * np.asarray(weight, np.float32)
            elif len(shape) != 1:
                raise EdgefpError(f"layer '{name}' has outputs of shape {shape}; only vectors, sequences and images")
            outputs.append(t)
            shapes.append(shape)
            used_pools.append(tuple(pool))
        return outputs, shapes, used_pools, probs

    @staticmethod
    def _standardized(features: np.ndarray, layer: Evidence) -> np.ndarray:
        """Reduced features (N, positions x channels) standardised per channel, as the monitor computes them."""
        channels = len(layer.mean)
        shaped = features.reshape(len(features), -1, channels)
        return ((shaped - np.float32(layer.mean)) / np.float32(layer.std)).reshape(len(features), -1)

    def _train_autoencoders(self, standardized: list[np.ndarray], probs: np.ndarray) -> None:
        """Train every layer's autoencoder at once on standardised features, denoising, for about
        AE_TARGET_STEPS steps."""
        import keras

        layers = self.autoencoder_layers_
        repeat = math.ceil(AE_MIN_ROWS / len(probs))
        standardized = [np.tile(z, (repeat, 1)) for z in standardized]
        probs = np.tile(probs, (repeat, 1))
        inputs = [keras.Input((layer.features,)) for layer in layers]
        class_input = keras.Input((probs.shape[1],))
        noisy = [keras.layers.GaussianNoise(AE_TRAINING_NOISE, seed=self.seed)(i) for i in inputs]
        residuals = [
            _reconstruction_error(ae, z, class_input, clean) for ae, z, clean in zip(self.autoencoders_, noisy, inputs)
        ]
        joint = keras.Model(inputs + [class_input], residuals)
        joint.compile(optimizer=keras.optimizers.Adam(3e-3), loss=["mse"] * len(inputs))
        epochs = self.epochs or math.ceil(AE_TARGET_STEPS / math.ceil(len(probs) / BATCH_SIZE))
        steps = Steps(self.progress, "training autoencoders", epochs)
        callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: steps.update(1))
        joint.fit(
            standardized + [probs],
            [np.zeros_like(z) for z in standardized],
            batch_size=BATCH_SIZE,
            epochs=epochs,
            shuffle=True,
            verbose=0,
            callbacks=[callback],
        )
        self.epochs_ = epochs

    def _build_monitor(self) -> None:
        """One Keras graph: input -> (probabilities, evidence 1, ..., evidence L), each evidence an output of
        its own so that int8 conversion gives each its own scale (an error twice: itself, and scaled by
        ood.COARSE_WEIGHT / 127 for int8's coarse second value); ``squares_``, the squared residuals of
        every autoencoder, side by side (the converter sets their int8 range from held-out data); and
        ``residual_errors_``, the autoencoders' errors from the pooled, standardised features and the
        class means (what the monitor subtracts; the benchmark feeds it an int8 model's own).

        The reduced taps go side by side into one class-mean layer and one subtraction. The autoencoders
        then run as one block (one encoder and one decoder whose weights are the autoencoders' own on a
        block diagonal, one squared difference, and per autoencoder a layer that averages its squared
        residuals: a handful of operators whatever the number of layers, and on a microcontroller every
        operator and tensor costs memory of its own, whatever its size), or apart, each on a slice of
        the residual, where the block's zero weights would cost more (:func:`runs_apart`).
        """
        import keras

        ae_layers = self.autoencoder_layers_
        scaling = [(1.0 / np.asarray(lay.std), -np.asarray(lay.mean) / np.asarray(lay.std)) for lay in ae_layers]
        offsets = [np.zeros(lay.features) if lay.pool else bias for lay, (_, bias) in zip(ae_layers, scaling)]
        names, pools = [lay.name for lay in ae_layers], [lay.pool for lay in ae_layers]
        reduced, _, _, probs = self._reduced_taps(names, pools, scaling)
        logits, _ = taps.logits_and_probs(self.model_)
        features = reduced[0] if len(reduced) == 1 else keras.layers.Concatenate(name="fp_features")(reduced)
        joint = _joint_weights(self.autoencoders_)
        class_means = joint["class_mean"]
        class_offset = -np.concatenate(offsets).astype(np.float32)
        class_mean = keras.layers.Dense(class_means.shape[1], use_bias=bool(np.any(class_offset)), name="fp_class_mean")
        subtract = keras.layers.Subtract(name="fp_residual")
        residual = subtract([features, class_mean(probs)])
        class_mean.set_weights([class_means, class_offset][: 1 + class_mean.use_bias])
        autoencoders = self._autoencoder_layers(joint)
        squares, values = autoencoders(residual)
        if any(layer.kind == MAX_LOGIT for layer in self.layers_):
            values.append(keras.ops.max(logits, axis=-1, keepdims=True))
        self.monitor_ = keras.Model(self.model_.inputs, [probs, *values], name="monitor")
        joined = squares[0] if len(squares) == 1 else keras.layers.Concatenate(name="fp_squares")(squares)
        self.squares_ = keras.Model(self.model_.inputs, joined, name="squares")
        feature_input, mean_input = keras.Input((class_means.shape[1],)), keras.Input((class_means.shape[1],))
        _, errors = autoencoders(subtract([feature_input, mean_input]))
        self.residual_errors_ = keras.Model([feature_input, mean_input], errors, name="residual_errors")

    def _autoencoder_layers(self, joint: dict):
        """A function of the symbolic residual (every autoencoder's columns side by side) -> (squared
        residuals, one tensor per block; error outputs, one per autoencoder), with the autoencoders'
        weights, as one block (``joint``, :func:`_joint_weights`) or apart (:func:`runs_apart`); called
        twice, it reuses its layers."""
        import keras

        ae_layers = self.autoencoder_layers_
        apart = runs_apart([lay.features for lay in ae_layers], [lay.bottleneck for lay in ae_layers])
        blocks = [_joint_weights([ae]) for ae in self.autoencoders_] if apart else [joint]
        layers, start, errors = [], 0, 0
        for index, weights in enumerate(blocks):
            width = weights["decode"].shape[1]
            encode = keras.layers.Dense(weights["encode"].shape[1], activation="tanh", name=f"fp_encode_{index}")
            decode = keras.layers.Dense(width, name=f"fp_decode_{index}")
            encode.build((None, width))
            decode.build((None, weights["encode"].shape[1]))
            encode.set_weights([weights["encode"], weights["encode_bias"]])
            decode.set_weights([weights["decode"], weights["decode_bias"]])
            averages = []
            for columns in weights["columns"]:
                average = keras.layers.Dense(2, use_bias=False, name=f"fp_error_{errors}")
                average.build((None, width))
                selector = np.zeros((width, 2), np.float32)
                selector[columns] = np.asarray([1.0, ood.COARSE_WEIGHT / 127], np.float32) / len(columns)
                average.set_weights([selector])
                averages.append(average)
                errors += 1
            layers.append((start, start + width, encode, decode, _squared_difference(f"fp_square_{index}"), averages))
            start += width

        def apply(residual):
            squares, values = [], []
            for start, end, encode, decode, square, averages in layers:
                part = residual if len(layers) == 1 else residual[:, start:end]
                squares.append(square([decode(encode(part)), part]))
                values += [average(squares[-1]) for average in averages]
            return squares, values

        return apply

    def _predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N, C) and evidence (N, L) of preprocessed samples."""
        probs, *values = self.monitor_.predict(x, verbose=0, batch_size=256)
        return probs, np.concatenate([v.reshape(len(v), -1)[:, :1] for v in values], axis=1)

    def _evidence(self, x: np.ndarray) -> np.ndarray:
        return self._predict(x)[1].astype(np.float64)

    # ----------------------------------------------------------------------------------- scoring
    @property
    def label_values_(self) -> np.ndarray:
        return np.asarray([label["value"] for label in self.labels_], dtype=np.int64)

    @property
    def autoencoder_layers_(self) -> list[Evidence]:
        return [layer for layer in self.layers_ if layer.kind == AUTOENCODER]

    @property
    def transforms_(self) -> list[str]:
        return [layer.transform for layer in self.layers_]

    def z_stats_(self):
        """Per evidence: z_mean, z_std, weight."""
        return tuple(
            np.asarray([getattr(layer, key) for layer in self.layers_]) for key in ("z_mean", "z_std", "weight")
        )

    def score(self, x) -> ood.Scores:
        """Classify raw samples ``x`` and score them for out-of-distribution."""
        x = self.prepare(x)
        probs, values = self._predict(x)
        score = ood.ood_score(values, *self.z_stats_(), self.transforms_)
        return ood.Scores(
            pred=self.label_values_[np.argmax(probs, axis=1)],
            probs=probs,
            ood_score=score,
            is_ood=score > self.threshold_,
            layer_errors=values,
        )

    def ood_score(self, x) -> np.ndarray:
        """The kit's OOD score per raw sample: higher = more out-of-distribution (the score files' ``ood_score``)."""
        return self.score(x).ood_score

    # scikit-learn's outlier-detector conventions (as IsolationForest): higher = more normal, 0 at the threshold
    @property
    def offset_(self) -> float:
        """The threshold in :meth:`score_samples` terms: ``decision_function = score_samples - offset_``."""
        return -float(self.threshold_)

    def score_samples(self, x) -> np.ndarray:
        """Normality per raw sample, as scikit-learn's ``score_samples``: higher = more normal (``-ood_score``)."""
        return -self.ood_score(x)

    def decision_function(self, x) -> np.ndarray:
        """``score_samples(x) - offset_``: negative for the samples the fingerprint flags out of distribution."""
        return self.score_samples(x) - self.offset_

    def predict(self, x) -> np.ndarray:
        """+1 for an inlier, -1 for an outlier (a sample flagged out of distribution), as scikit-learn's."""
        return np.where(self.decision_function(x) < 0, -1, 1)

    def fingerprint_params(self) -> int:
        """Weights the fingerprint adds to the classifier (its autoencoders')."""
        return sum(layer.params for layer in self.layers_)

    # -------------------------------------------------------------------------------- save / load
    def to_dict(self, classifier_sha256: str) -> dict:
        return {
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "edgefp_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "classifier": {
                "file": "classifier.keras",
                "sha256": classifier_sha256,
                "params": int(self.model_.count_params()),
                "input_shape": list(self.model_.inputs[0].shape[1:]),
            },
            "preprocessing": self.preprocessing_,
            "labels": self.labels_,
            "settings": {
                "fpr": self.fpr,
                "holdout": self.holdout,
                "max_features": self.max_features,
                "budget": self.budget,
                "epochs": self.epochs_,
                "seed": self.seed,
            },
            "layers": [asdict(layer) for layer in self.layers_],
            "score": {
                "combine": ood.COMBINE,
                "eps": ood.EPS,
                "target_fpr": self.fpr,
                "threshold": self.threshold_,
                "holdout_quantiles": self.holdout_score_quantiles_,
                "n_fit": self.n_fit_,
                "n_holdout": self.n_holdout_,
            },
        }

    def save(self, run_dir: str, *, force: bool = False) -> str:
        """Write the RUN directory (classifier, evidence models, fingerprint.json) atomically."""
        with atomic_directory(run_dir, "run", force=force) as tmp:
            os.makedirs(os.path.join(tmp, "autoencoders"))
            classifier = os.path.join(tmp, "classifier.keras")
            self.model_.save(classifier)
            for layer, ae in zip(self.autoencoder_layers_, self.autoencoders_):
                ae.save(os.path.join(tmp, layer.file))
            np.savez_compressed(os.path.join(tmp, HOLDOUT_FILE), x=self.holdout_x_)
            meta = self.to_dict(sha256_file(classifier))
            meta["files"] = {name: sha256_file(os.path.join(tmp, name)) for name in _run_files(meta)}
            with open(os.path.join(tmp, "fingerprint.json"), "w") as handle:
                json.dump(meta, handle, indent=1)
        return run_dir

    @classmethod
    def load(cls, run_dir: str) -> NeuralFingerprint:
        """Read a RUN directory written by :meth:`save`."""
        meta = read_fingerprint_json(run_dir)
        import keras

        settings = meta["settings"]
        layers = [Evidence(**layer) for layer in meta["layers"]]
        fp = cls(
            layers=[layer.name for layer in layers if layer.kind == AUTOENCODER],
            fpr=meta["score"]["target_fpr"],
            holdout=settings["holdout"],
            max_features=settings["max_features"],
            budget=settings["budget"],
            epochs=settings["epochs"],
            seed=settings["seed"],
        )
        classifier = os.path.join(run_dir, meta["classifier"]["file"])
        fp.model_ = keras.models.load_model(classifier, compile=False)
        fp.preprocessing_ = meta["preprocessing"]
        fp.labels_ = meta["labels"]
        fp.layers_ = layers
        fp.autoencoders_ = [
            keras.models.load_model(os.path.join(run_dir, layer.file), compile=False)
            for layer in fp.autoencoder_layers_
        ]
        fp.threshold_ = meta["score"]["threshold"]
        fp.holdout_score_quantiles_ = meta["score"]["holdout_quantiles"]
        fp.n_fit_, fp.n_holdout_ = meta["score"]["n_fit"], meta["score"]["n_holdout"]
        fp.epochs_ = settings["epochs"]
        with np.load(os.path.join(run_dir, HOLDOUT_FILE)) as holdout:
            fp.holdout_x_ = holdout["x"]
        fp._build_monitor()
        return fp


def read_fingerprint_json(run_dir: str) -> dict:
    """The checked contents of RUN/fingerprint.json."""
    path = os.path.join(run_dir, "fingerprint.json")
    if not os.path.isdir(run_dir):
        raise EdgefpError(f"{run_dir}: no such RUN directory; create one with 'edgefp train' or 'edgefp fingerprint'")
    if not os.path.exists(path):
        raise EdgefpError(f"{run_dir}: not a RUN directory (no fingerprint.json)")
    meta = read_json(path, "fingerprint file")
    schema, version = meta.get("schema"), meta.get("version")
    if schema == SCHEMA and isinstance(version, int) and version < SCHEMA_VERSION:
        raise EdgefpError(
            f"{path}: a fingerprint of version {version}, written by an older edgefp; this edgefp reads version "
            f"{SCHEMA_VERSION}: retrain the RUN with 'edgefp train' (or 'edgefp fingerprint')"
        )
    if (schema, version) != (SCHEMA, SCHEMA_VERSION):
        raise EdgefpError(
            f"{path}: schema {schema} v{version} is not {SCHEMA} v{SCHEMA_VERSION}; "
            "re-create the RUN with this version of edgefp"
        )
    try:
        files = _run_files(meta)
    except (KeyError, TypeError):
        files = None
    if files is None or not all(isinstance(name, str) for name in files):
        raise EdgefpError(f"{path}: incomplete or malformed; re-create the RUN")
    missing = [f for f in files if not os.path.exists(os.path.join(run_dir, f))]
    if missing:
        raise EdgefpError(f"{run_dir}: missing {', '.join(missing)}; the RUN directory is incomplete")
    hashes = meta.get("files")
    if not isinstance(hashes, dict) or sorted(hashes) != sorted(files):
        raise EdgefpError(f"{path}: no hashes of the RUN's files (an older edgefp wrote it); re-create the RUN")
    for name, digest in hashes.items():
        if sha256_file(os.path.join(run_dir, name)) != digest:
            raise EdgefpError(
                f"{os.path.join(run_dir, name)} does not match the hash in fingerprint.json; "
                "the RUN directory was modified"
            )
    return meta


def _run_files(meta: dict) -> list[str]:
    """The files of a RUN besides fingerprint.json: classifier, held-out samples, the evidence models."""
    return [meta["classifier"]["file"], HOLDOUT_FILE] + [layer["file"] for layer in meta["layers"] if layer["file"]]
