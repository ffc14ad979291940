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
