"""The per-map reductions of `stats.reduce_layer`'s fast path, each by the backend's cheapest
kernels: the same figures, fewer passes over the activations.

`keras.ops` spells each figure as element-wise ops and a reduction; a compiler (`jax.jit`)
fuses them into one pass, but PyTorch runs eagerly and TensorFlow's graph executor runs op by
op, each writing a full-size intermediate. So, on `(N, P, C)` float32 activations `a`:

- `squares`: the per-map sum of squares and its square root (the L2 norm). TensorFlow:
  `tf.math.reduce_euclidean_norm`, one reduction that squares as it sums, not a squared copy
  of `a` and a sum of it. (PyTorch's `torch.linalg.vector_norm` over the positions axis is
  3x slower than a square and a sum on the CPU; `torch.aminmax` 4x slower than `amax` and
  `amin`: not used.)
- `positives`: how many values are above zero, over the whole layer. Where no value can be
  below zero, the sum of `sign(a)`: one element-wise op, not a comparison and a count; else
  on PyTorch `torch.count_nonzero` of the comparison (a third of the cost of an int32 sum of
  it), elsewhere an int32 sum of it (TensorFlow's `count_nonzero` casts twice: slower).
- `eager_nonnegative`: whether no value is below zero, read on the host where the check runs
  eagerly on the CPU (PyTorch).

Measured in benchmarks/RESULTS.md, "Fewer passes over the activations".
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

__all__ = ["EXACT_POSITIONS", "eager_nonnegative", "positives", "squares"]

#: float32 counts every integer below this exactly: a per-map sum of 0s and 1s over fewer
#: positions is the exact count.
EXACT_POSITIONS = 2**24


def squares(a: Any) -> tuple[Any, Any]:
    """Per-map `(sum of a^2, sqrt of it)` over positions (axis 1), each `(N, C)`."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        norm = tf.math.reduce_euclidean_norm(a, axis=1)
        return ops.square(norm), norm
    total = ops.sum(ops.square(a), axis=1)
    return total, ops.sqrt(total)


def positives(a: Any, nonnegative: bool) -> Any:
    """How many values of `a` are above zero (int32), over the whole layer (the zero fraction
    needs no count per map). `nonnegative`: no value is below zero, so the count is the sum
    of `sign(a)` (0 or 1 each; NaN aside: the fast path is not taken with one), summed per
    map in float32 (exact below `EXACT_POSITIONS`), then over the maps in int32; with more
    positions, the comparison's count."""
    if nonnegative and int(a.shape[1]) < EXACT_POSITIONS:
        return ops.sum(ops.cast(ops.sum(ops.sign(a), axis=1), "int32"))
    if keras.backend.backend() == "torch":
        import torch

        return torch.count_nonzero(a > 0.0).to(torch.int32)
    return ops.sum(ops.cast(a > 0.0, "int32"))


def eager_nonnegative(map_min: Any) -> bool:
    """Whether no value is below zero (nor NaN), read on the host where the check runs
    eagerly (PyTorch); False under a compiler (`jax.jit`, `tf.function`), which cannot branch
    on a value and fuses the passes anyway. On a GPU too: reading the answer would make the
    host wait for the device at every layer, where it otherwise queues the check ahead."""
    if keras.backend.backend() != "torch" or getattr(map_min.device, "type", "cpu") != "cpu":
        return False
    return bool(ops.all(map_min >= 0.0))
