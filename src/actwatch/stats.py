"""Per-layer statistics of activations, reduced on the device with `keras.ops`.

A layer output is first brought to the shape `(N, P, C)`: N samples, P positions (the spatial
positions, flattened; 1 for Dense outputs) and C channels (filters). With `a[n, p, c]`:

- **zero fraction**: mean over the finite values of `1[a <= 0]`.
- **dead filter**: `max_{n,p} a[n, p, c] <= 0` (Lu et al. 2019, "Dying ReLU and
  Initialization"). Meaningful after a ReLU-like activation; see `LayerStats.nonnegative`.
- **tau-dormant filter** (Sokar et al., ICML 2023): `s_c = mean|a[:, :, c]| /
  mean_k mean|a[:, :, k]|`; dormant when `s_c <= tau`. When every filter is zero, all are
  dormant.
- **Hoyer sparsity** (Hoyer 2004, JMLR 5): `H(x) = (sqrt(P) - |x|_1 / |x|_2) / (sqrt(P) - 1)`
  for each filter map `x = a[n, :, c]`, averaged over the maps that are not all zero. For
  outputs without spatial positions (P = 1, e.g. Dense), `x` is the vector of all C
  channels of one sample instead. 0 is flat and blobby, 1 is a single hot pixel.
- **mean**: mean of the finite values.
- **non-finite**: how many values are NaN or +-Inf. All other statistics ignore them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from keras import ops

__all__ = ["DEVICE_STATS", "LayerStats", "NetworkStats", "reduce_layer", "summarize"]

#: Names of the arrays `reduce_layer` returns for each layer.
DEVICE_STATS = (
    "zero_fraction",
    "mean",
    "hoyer",
    "min",
    "nonfinite",
    "values",
    "filter_max",
    "filter_mean_abs",
)


def reduce_layer(a: Any) -> dict[str, Any]:
    """Reduce one layer's activations `a` of shape `(N, P, C)` (float32) on the device.

    Returns scalars and two per-filter vectors of length C; nothing larger crosses to the
    host.
    """
    _, p, c = a.shape
    finite = ops.isfinite(a)
    finite_f = ops.cast(finite, "float32")
    # Counts in int32: a float32 sum of ones stops being exact past 2**24 values.
    count = ops.sum(ops.cast(finite, "int32"))
    safe_count = ops.cast(ops.maximum(count, 1), "float32")
    az = ops.where(finite, a, ops.zeros_like(a))
    abs_a = ops.abs(az)

    zeros = ops.sum(ops.cast(ops.logical_and(a <= 0.0, finite), "int32"))
    zero_fraction = ops.cast(zeros, "float32") / safe_count
    mean = ops.sum(az) / safe_count
    very_low = ops.full_like(a, -np.inf)
    very_high = ops.full_like(a, np.inf)
    filter_max = ops.max(ops.where(finite, a, very_low), axis=(0, 1))
    minimum = ops.min(ops.where(finite, a, very_high))
    per_filter_count = ops.maximum(ops.sum(finite_f, axis=(0, 1)), 1.0)
    filter_mean_abs = ops.sum(abs_a, axis=(0, 1)) / per_filter_count

    # Hoyer: over positions per (sample, filter) map, or over channels when P == 1.
    axis, length = (1, p) if p > 1 else (2, c)
    if length > 1:
        l1 = ops.sum(abs_a, axis=axis)
        l2 = ops.sqrt(ops.sum(ops.square(az), axis=axis))
        live = l2 > 0.0
        root = math.sqrt(length)
        ratio = l1 / ops.where(live, l2, ops.ones_like(l2))
        h = (root - ratio) / (root - 1.0)
        live_f = ops.cast(live, "float32")
        hoyer = ops.sum(h * live_f) / ops.maximum(ops.sum(live_f), 1.0)
    else:
        hoyer = ops.zeros(())
    total = int(a.shape[0] * p * c)
    return {
        "zero_fraction": zero_fraction,
        "mean": mean,
        "hoyer": hoyer,
        "min": minimum,
        "nonfinite": total - count,
        "values": ops.convert_to_tensor(total, "int32"),
        "filter_max": filter_max,
        "filter_mean_abs": filter_mean_abs,
    }


@dataclass(frozen=True)
class LayerStats:
    """One layer's statistics at one check, on the host.

    `dead` and `dormant` are boolean vectors over all the layer's filters. `nonnegative` is
    True when no finite output was below zero at this check (a ReLU-like layer): dead filters
    are alerted only for such layers.
    """

    zero_fraction: float
    mean: float
    hoyer: float
    nonfinite: int
    values: int
    nonnegative: bool
    dead: np.ndarray
    dormant: np.ndarray

    @property
    def filters(self) -> int:
        return int(self.dead.size)

    @property
    def dead_count(self) -> int:
        return int(self.dead.sum())

    @property
    def dead_fraction(self) -> float:
        return self.dead_count / max(self.filters, 1)

    @property
    def dormant_fraction(self) -> float:
        return int(self.dormant.sum()) / max(self.filters, 1)

    def scalars(self) -> dict[str, float]:
        """The per-layer figures written as scalars, keyed by metric name."""
        return {
            "zero_fraction": self.zero_fraction,
            "dead_filters": float(self.dead_count),
            "dead_fraction": self.dead_fraction,
            "dormant_fraction": self.dormant_fraction,
            "hoyer": self.hoyer,
            "mean": self.mean,
            "nonfinite": float(self.nonfinite),
        }


def summarize(reduced: dict[str, np.ndarray], dormant_threshold: float) -> LayerStats:
    """Turn one layer's reduced arrays (numpy) into `LayerStats`."""
    filter_max = np.asarray(reduced["filter_max"], dtype=np.float64)
    mean_abs = np.asarray(reduced["filter_mean_abs"], dtype=np.float64)
    layer_mean_abs = float(mean_abs.mean()) if mean_abs.size else 0.0
    if layer_mean_abs > 0.0:
        dormant = mean_abs / layer_mean_abs <= dormant_threshold
    else:
        dormant = np.ones(mean_abs.shape, dtype=bool)
    return LayerStats(
        zero_fraction=float(reduced["zero_fraction"]),
        mean=float(reduced["mean"]),
        hoyer=float(reduced["hoyer"]),
        nonfinite=round(float(reduced["nonfinite"])),
        values=round(float(reduced["values"])),
        nonnegative=bool(float(reduced["min"]) >= 0.0),
        dead=filter_max <= 0.0,
        dormant=np.asarray(dormant, dtype=bool),
    )


@dataclass(frozen=True)
class NetworkStats:
    """Whole-network figures over all watched layers.

    Fractions of filters are counted over all watched filters (a pooling layer counts its
    filters again); `zero_fraction`, `hoyer` and `mean` are plain means over layers.
    """

    zero_fraction: float
    dead_filters: int
    dead_fraction: float
    dormant_fraction: float
    hoyer: float
    mean: float
    nonfinite: int

    @classmethod
    def of(cls, layers: Mapping[str, LayerStats]) -> NetworkStats:
        items = list(layers.values())
        filters = max(sum(s.filters for s in items), 1)
        n = max(len(items), 1)
        return cls(
            zero_fraction=sum(s.zero_fraction for s in items) / n,
            dead_filters=sum(s.dead_count for s in items),
            dead_fraction=sum(s.dead_count for s in items) / filters,
            dormant_fraction=sum(int(s.dormant.sum()) for s in items) / filters,
            hoyer=sum(s.hoyer for s in items) / n,
            mean=sum(s.mean for s in items) / n,
            nonfinite=sum(s.nonfinite for s in items),
        )

    def scalars(self) -> dict[str, float]:
        return {
            "zero_fraction": self.zero_fraction,
            "dead_filters": float(self.dead_filters),
            "dead_fraction": self.dead_fraction,
            "dormant_fraction": self.dormant_fraction,
            "hoyer": self.hoyer,
            "mean": self.mean,
            "nonfinite": float(self.nonfinite),
        }
