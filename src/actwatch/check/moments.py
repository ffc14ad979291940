"""Masked moments for BatchNormalization (moved out of `capture`, which keeps it under 400
lines)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

__all__ = ["masked_moments"]


def masked_moments(x: Any, mask: Any, axes: list[int]) -> tuple[Any, Any]:
    """Mean and variance of the values of `x` where `mask` (one axis fewer) is set, as
    Keras' BatchNormalization computes them."""
    where = ops.broadcast_to(ops.expand_dims(ops.cast(mask, "bool"), -1), ops.shape(x))
    weights = ops.sum(ops.cast(where, x.dtype), axes, keepdims=True) + keras.config.epsilon()
    mean = ops.sum(ops.where(where, x, 0), axes, keepdims=True) / weights
    variance = ops.sum(ops.square(ops.where(where, x - mean, 0)), axes, keepdims=True) / weights
    return ops.squeeze(mean), ops.squeeze(variance)
