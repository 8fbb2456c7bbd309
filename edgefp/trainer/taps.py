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


def default_layers(model) -> list[str]:
    """Every layer with a kernel (convolutions, hidden dense layers) except the one computing the logits.

    The logits themselves can be named with ``--layers``, but by default they are left out: OOD
    logits are small and easy to reconstruct, so their errors weaken the combined score."""
    logits, _ = logits_and_probs(model)
    output_layers = {logits._keras_history.operation.name, model.layers[-1].name}
    return [
        layer.name
        for layer in model.layers
        if type(layer).__name__ in _WEIGHT_LAYERS and layer.name not in output_layers
    ]


def tap(model, name: str):
    """The symbolic output of the named layer (``logits`` for the classifier's logits)."""
    if name == LOGITS:
        return logits_and_probs(model)[0]
    try:
        return model.get_layer(name).output
    except ValueError:
        known = ", ".join(layer.name for layer in model.layers)
        raise EdgefpError(f"the classifier has no layer '{name}'; its layers are: {known}") from None


def pool_sizes(shape: tuple[int, ...], max_features: int) -> tuple[int, ...]:
    """Average-pooling window per spatial/time axis that brings a feature map to at most
    ``max_features`` values (halving the grid along its longest axis until it fits)."""
    *spatial, channels = shape
    grid = list(spatial)
    while grid and math.prod(grid) * channels > max_features and max(grid) > 1:
        axis = grid.index(max(grid))
        grid[axis] = math.ceil(grid[axis] / 2)
    return tuple(math.ceil(s / g) for s, g in zip(spatial, grid))
