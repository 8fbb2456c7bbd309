"""Where a fingerprint listens inside a Keras classifier: its latent layers, logits and probabilities."""

from __future__ import annotations

import math

from edgefp.errors import EdgefpError

LOGITS = "logits"
_WEIGHT_LAYERS = (
    "Dense",
    "Conv1D",
    "Conv2D",
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "SeparableConv1D",
    "SeparableConv2D",
    "LSTM",
    "GRU",
    "SimpleRNN",
)


def _activation_name(layer) -> str:
    return getattr(getattr(layer, "activation", None), "__name__", "")


def check_classifier(model) -> None:
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise EdgefpError("the classifier must have one input and one output (class scores)")
    if len(model.outputs[0].shape) != 2:
        raise EdgefpError(f"the classifier's output must be (batch, classes), got {tuple(model.outputs[0].shape)}")


def logits_and_probs(model):
    """Symbolic (logits, probabilities) of a classifier, whichever way its softmax is written."""
    import keras

    check_classifier(model)
    last, out = model.layers[-1], model.outputs[0]
    if isinstance(last, keras.layers.Softmax) or (
        isinstance(last, keras.layers.Activation) and _activation_name(last) == "softmax"
    ):
        return last.input, out
    if isinstance(last, keras.layers.Dense) and _activation_name(last) == "softmax":
        twin = keras.layers.Dense(last.units, name=f"{last.name}_logits")
        twin.build(tuple(last.input.shape))
        twin.set_weights(last.get_weights())
        return twin(last.input), out
    return out, keras.layers.Softmax(name="probs_from_logits")(out)


def input_name(model) -> str:
    """The name of the classifier's input layer (Keras numbers it when the model does not name it)."""
    return model.inputs[0]._keras_history.operation.name


def default_layers(model) -> list[str]:
    """Every layer with a kernel (convolutions, hidden dense layers) below the penultimate one (the one
    computing the features the logits are made from); that one when there is none below it. A vector
    input with fewer values than the first of those, when that one is a vector too, comes first: a few
    features, each read by every unit above them, cheap to watch (a wider input would take the
    autoencoders' parameter budget and more time than the layer's own).

    The top of the classifier speaks through its own evidence (the largest logit), and the layers below
    it measured better: docs/fingerprint.md. The logits or the penultimate layer can still be named
    with ``--layers``."""
    logits, _ = logits_and_probs(model)
    penultimate = logits._keras_history.operation.input._keras_history.operation.name
    output = {logits._keras_history.operation.name, model.layers[-1].name}
    kernels = [layer.name for layer in model.layers if type(layer).__name__ in _WEIGHT_LAYERS]
    below = [name for name in kernels if name not in output and name != penultimate]
    layers = below or [name for name in kernels if name == penultimate]
    inputs, first = model.inputs[0].shape, tap(model, layers[0]).shape if layers else ()
    if len(inputs) == 2 and len(first) == 2 and inputs[1] < first[1]:
        return [input_name(model), *layers]
    return layers


def tap(model, name: str):
    """The symbolic output of the named layer (``logits`` for the classifier's logits, the input's name
    for its input)."""
    if name == LOGITS:
        return logits_and_probs(model)[0]
    if name == input_name(model):
        return model.inputs[0]
    try:
        return model.get_layer(name).output
    except ValueError:
        known = ", ".join(dict.fromkeys([input_name(model), *(layer.name for layer in model.layers)]))
        raise EdgefpError(f"the classifier has no layer '{name}'; its layers are: {known}") from None


def pool_sizes(shape: tuple[int, ...], max_features: int) -> tuple[int, ...]:
    """Average-pooling window per spatial/time axis that brings a feature map to at most ``max_features``
    values: the grid along the longest axis is halved until it fits. Images get square windows (the
    int8 depthwise convolution that pools them takes one stride for both axes)."""
    *spatial, channels = shape
    if not spatial:
        return ()
    grid = max(spatial)
    while True:
        window = math.ceil(max(spatial) / grid)
        windows = [window] * len(spatial)
        if grid == 1 or math.prod(math.ceil(s / w) for s, w in zip(spatial, windows)) * channels <= max_features:
            return tuple(windows)
        grid = math.ceil(grid / 2)
