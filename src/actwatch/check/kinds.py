"""Keras layer classes by what they do to activations: the one table the other rooms consult.

`isinstance(layer, POOLING)` and friends. Convolutions are split by how their filters map to
output channels: plain ones (one filter, one channel: what ReDo can re-initialise) and the
rest (transposed, depthwise, separable).
"""

from __future__ import annotations

from typing import Any

import keras

__all__ = [
    "ACTIVATIONS",
    "CONVOLUTIONS",
    "GLOBAL_POOLING",
    "NOISE",
    "NORMALIZATION",
    "OTHER_CONVOLUTIONS",
    "PADDING",
    "PLAIN_CONVOLUTIONS",
    "POOLING",
    "nonnegative",
]

L = keras.layers

#: One filter per output channel.
PLAIN_CONVOLUTIONS: tuple[type[Any], ...] = (L.Conv1D, L.Conv2D, L.Conv3D)
#: Transposed, depthwise and separable convolutions.
OTHER_CONVOLUTIONS: tuple[type[Any], ...] = (
    L.Conv1DTranspose,
    L.Conv2DTranspose,
    L.Conv3DTranspose,
    L.DepthwiseConv1D,
    L.DepthwiseConv2D,
    L.SeparableConv1D,
    L.SeparableConv2D,
)
CONVOLUTIONS = PLAIN_CONVOLUTIONS + OTHER_CONVOLUTIONS
POOLING: tuple[type[Any], ...] = (
    L.MaxPooling1D,
    L.MaxPooling2D,
    L.MaxPooling3D,
    L.AveragePooling1D,
    L.AveragePooling2D,
    L.AveragePooling3D,
)
GLOBAL_POOLING: tuple[type[Any], ...] = (
    L.GlobalMaxPooling1D,
    L.GlobalMaxPooling2D,
    L.GlobalMaxPooling3D,
    L.GlobalAveragePooling1D,
    L.GlobalAveragePooling2D,
    L.GlobalAveragePooling3D,
)
#: Activation layers (activations inside Conv/Dense layers are found by `activation`).
ACTIVATIONS: tuple[type[Any], ...] = (L.Activation, L.ReLU, L.LeakyReLU, L.PReLU, L.ELU)
#: Layers that are the identity at inference: dropout and noise.
NOISE: tuple[type[Any], ...] = (
    L.Dropout,
    L.SpatialDropout1D,
    L.SpatialDropout2D,
    L.SpatialDropout3D,
    L.GaussianNoise,
    L.GaussianDropout,
    L.AlphaDropout,
)
NORMALIZATION: tuple[type[Any], ...] = (
    L.BatchNormalization,
    L.LayerNormalization,
    L.GroupNormalization,
)
PADDING: tuple[type[Any], ...] = (L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D)


#: Activation functions whose output is never below zero, in float arithmetic too.
_NONNEGATIVE_FUNCTIONS = (
    keras.activations.relu,
    keras.activations.relu6,
    keras.activations.sigmoid,
    keras.activations.softplus,
    keras.activations.softmax,
)


def nonnegative(layer: Any) -> bool:
    """Whether `layer`'s output can have no value below zero, by what the layer is: a
    `ReLU` layer without a negative slope and with a threshold >= 0, or an `Activation`,
    convolution or `Dense` layer whose activation is ReLU, ReLU6, sigmoid, softplus or
    softmax (Keras' own functions, with their default arguments). Only Keras' own classes,
    whose `call` is theirs (a subclass may add something after the activation). NaN is not
    below zero: a NaN output is still caught by the statistics' finite test."""
    cls = type(layer)
    if cls is L.ReLU:
        slope, threshold = layer.negative_slope, layer.threshold
        return float(slope) == 0.0 and float(threshold) >= 0.0
    for base in (L.Activation, L.Dense, *CONVOLUTIONS):
        if isinstance(layer, base) and cls.call is base.call:
            activation = getattr(layer, "activation", None)
            return any(activation is f for f in _NONNEGATIVE_FUNCTIONS)
    return False
