"""Training-mode batch normalization for the training view, beside `capture.batch_normalized`.

`capture.batch_normalized` normalises with Keras ops (`ops.moments`, or `masked_moments`
behind a mask, and `ops.batch_normalization`) everywhere; without gradients through the
statistics, TensorFlow (`fused`) and PyTorch (`torch_normalized`) have kernels that do it in
fewer passes.
"""

from __future__ import annotations

import functools
from typing import Any

import keras
from keras import ops

__all__ = ["FUSED_EPSILON", "fused", "masked_moments", "torch_normalized"]

#: The smallest epsilon TensorFlow's fused kernels take (a smaller one is raised to it).
FUSED_EPSILON = 1.001e-5


def fused(x: Any, scale: Any, offset: Any, epsilon: float, rows: int) -> Any:
    """Training-mode batch normalization of channels-last `x` (4-D or 5-D) by TensorFlow's
    fused kernels: one for all of `x`; with `rows`, one for the leading rows (their own
    statistics) and one for the rows after them, normalised with those statistics."""
    import tensorflow as tf

    channels = int(x.shape[-1])
    kernel = functools.partial(
        tf.compat.v1.nn.fused_batch_norm,
        scale=tf.ones(channels, x.dtype) if scale is None else scale,
        offset=tf.zeros(channels, x.dtype) if offset is None else offset,
        epsilon=epsilon,
        data_format="NHWC" if len(x.shape) == 4 else "NDHWC",
    )
    if not rows:
        return kernel(x, is_training=True)[0]
    head, tail = x[:rows], x[rows:]
    normalised, mean, unbiased = kernel(head, is_training=True)[:3]
    # The kernel returns the batch variance with Bessel's correction, n / (n - 1) (the
    # moving variance's estimate); training normalises with the plain one.
    n = tf.cast(tf.size(head, out_type=tf.int64) // channels, x.dtype)
    variance = unbiased * tf.maximum(n - 1.0, 0.0) / tf.maximum(n, 1.0)
    rest = kernel(tail, mean=mean, variance=variance, is_training=False)[0]
    return tf.concat([normalised, rest], axis=0)


def torch_normalized(x: Any, scale: Any, offset: Any, epsilon: float, rows: int, axis: int) -> Any:
    """Training-mode batch normalization of `x` (channels on `axis`) by PyTorch's kernel,
    on a channels-first view of `x` (no copy): in training mode for all of `x`; with
    `rows`, in training mode for the leading rows, their statistics kept in buffers
    (momentum 1), then the rows after them in inference mode with those statistics (no
    gradient through the statistics), as `fused` does."""
    import torch
    import torch.nn.functional as F

    view = torch.movedim(x, axis, 1)
    if not rows:
        return torch.movedim(
            F.batch_norm(view, None, None, scale, offset, True, 0.0, epsilon), 1, axis
        )
    channels = int(view.shape[1])
    mean = torch.zeros(channels, dtype=x.dtype, device=x.device)
    variance = torch.ones(channels, dtype=x.dtype, device=x.device)
    head = F.batch_norm(view[:rows], mean, variance, scale, offset, True, 1.0, epsilon)
    # The buffer holds the variance with Bessel's correction, n / (n - 1); training
    # normalises with the plain one.
    n = view[:rows].numel() // channels
    variance.mul_(max(n - 1, 0) / max(n, 1))
    tail = F.batch_norm(view[rows:], mean, variance, scale, offset, False, 0.0, epsilon)
    return torch.movedim(torch.cat([head, tail]), 1, axis)


def masked_moments(x: Any, mask: Any, axes: list[int]) -> tuple[Any, Any]:
    """Mean and variance of the values of `x` where `mask` (one axis fewer) is set, as
    Keras' BatchNormalization computes them."""
    where = ops.broadcast_to(ops.expand_dims(ops.cast(mask, "bool"), -1), ops.shape(x))
    weights = ops.sum(ops.cast(where, x.dtype), axes, keepdims=True) + keras.config.epsilon()
    mean = ops.sum(ops.where(where, x, 0), axes, keepdims=True) / weights
    variance = ops.sum(ops.square(ops.where(where, x - mean, 0)), axes, keepdims=True) / weights
    return ops.squeeze(mean), ops.squeeze(variance)
