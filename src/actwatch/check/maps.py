"""The maps that are drawn, made on the device: uint8 codes of filters and heatmaps.

`normalize_maps` and `heat_maps` scale each filter map of each probe to its
own range and converts it to uint8 on the device, so only small uint8 arrays reach the host.
`actwatch.render.tiles` tiles them into images on the host.

Pixel code of the uint8 maps: 0..254 is the filter's own range (black = its minimum); 255
marks a non-finite value (drawn magenta). A constant map is drawn black when its value is
<= 0 and mid-gray otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import ops

from actwatch.render.tiles import NONFINITE

__all__ = ["channel_mean", "heat_maps", "normalize_maps"]


def normalize_maps(x: Any, finite: bool = False) -> Any:
    """Scale maps to uint8 codes over their positions.

    `x` is float32 of shape `(N, H, W, F)` (each filter map scaled over H and W) or `(N, F)`
    (Dense: each sample scaled over its F units). Returns uint8 of the same shape. With
    `finite`, the caller vouches that every value is finite (the check's statistics found
    so), and the full-size passes that set NaN and Inf apart are left out.
    """
    axes = (1, 2) if len(x.shape) == 4 else (1,)
    if finite:
        lo = ops.min(x, axis=axes, keepdims=True)
        hi = ops.max(x, axis=axes, keepdims=True)
        spread = hi - lo
        varied = spread > 0.0
        scale = ops.where(varied, 254.0 / ops.where(varied, spread, 1.0), 0.0)
        flat = ops.where(varied, 0.0, ops.where(hi > 0.0, 127.0, 0.0))
        # The careful path's arithmetic, so both give the same codes (at most 254).
        return ops.cast(ops.round((x - ops.where(varied, lo, 0.0)) * scale + flat), "uint8")
    finite_values = ops.isfinite(x)
    lo = ops.min(ops.where(finite_values, x, np.inf), axis=axes, keepdims=True)
    hi = ops.max(ops.where(finite_values, x, -np.inf), axis=axes, keepdims=True)
    spread = hi - lo
    varied = spread > 0.0
    # Per-map scale and offset on the small (N, 1, 1, F) tensors, so the full-size tensor is
    # touched by few element-wise ops: a constant map gets scale 0 and its flat code.
    scale = ops.where(varied, 254.0 / ops.where(varied, spread, 1.0), 0.0)
    flat = ops.where(varied, 0.0, ops.where(hi > 0.0, 127.0, 0.0))
    value = ops.round((x - ops.where(varied, lo, 0.0)) * scale + flat)
    value = ops.where(finite_values, ops.minimum(value, 254.0), float(NONFINITE))
    return ops.cast(value, "uint8")


def heat_maps(x: Any, finite: bool = False) -> Any:
    """Mean over channels of `(N, H, W, C)`, scaled per probe to uint8 0..255 (non-finite
    values count as 0; with `finite` the caller vouches there are none)."""
    m = ops.mean(x if finite else ops.where(ops.isfinite(x), x, ops.zeros_like(x)), axis=-1)
    lo = ops.min(m, axis=(1, 2), keepdims=True)
    hi = ops.max(m, axis=(1, 2), keepdims=True)
    spread = hi - lo
    scaled = (m - lo) / ops.where(spread > 0.0, spread, ops.ones_like(spread)) * 255.0
    return ops.cast(ops.clip(ops.round(scaled), 0.0, 255.0), "uint8")


def channel_mean(x: Any, finite: bool = False) -> Any:
    """Mean over the last (channel) axis, kept as a channel of 1: `heat_maps`' mean taken
    before a resize (non-finite values count as 0; with `finite` the caller vouches there
    are none)."""
    x = x if finite else ops.where(ops.isfinite(x), x, ops.zeros_like(x))
    return ops.mean(x, axis=-1, keepdims=True)
