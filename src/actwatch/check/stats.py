"""Per-layer statistics of activations, reduced on the device with `keras.ops`.

A layer output is first brought to the shape `(N, P, C)`: N samples, P positions (the spatial
positions, flattened; 1 for Dense outputs) and C channels (filters). With `a[n, p, c]`:

- **zero fraction**: mean over the finite values of `1[a <= 0]`.
- **dead filter**: `max_{n,p} a[n, p, c] <= 0` (Lu et al. 2019, "Dying ReLU and
  Initialization"). Meaningful after a ReLU-like activation; see `LayerStats.nonnegative`.
- **tau-dormant filter** (Sokar et al., ICML 2023): `s_c = mean|a[:, :, c]| /
  mean_k mean|a[:, :, k]|`; dormant when `s_c <= tau`. When every filter is zero, all are
  dormant.
- A filter with no finite value at all is neither dead nor dormant (its mean over the others
  leaves it out), and a layer with no finite value is not `nonnegative`: it is non-finite.
- **Hoyer sparsity** (Hoyer 2004, JMLR 5): `H(x) = (sqrt(P) - |x|_1 / |x|_2) / (sqrt(P) - 1)`
  for each filter map `x = a[n, :, c]`, averaged over the maps that are not all zero. For
  outputs without spatial positions (P = 1, e.g. Dense), `x` is the vector of all C
  channels of one sample instead. 0 is flat and blobby, 1 is a single hot pixel.
- **mean**: mean of the finite values.
- **non-finite**: how many values are NaN or +-Inf. All other statistics ignore them.
- The deeper signals (histogram, signal propagation, outliers, feature rank) are defined in
  `signals`, and ignore non-finite values too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from keras import ops

from actwatch.check import reductions
from actwatch.check.signals import signals_from_device

__all__ = [
    "SIGNAL_INPUTS",
    "SIGNAL_SCALARS",
    "LayerStats",
    "reduce_layer",
    "summarize",
]


#: A live map (or a layer) whose sum of squares is below this is too small for the fast
#: path's Hoyer (or signals): float32 squares of values under ~1e-19 underflow; the careful
#: path rescales it first.
_TINY_SQUARES = 1e-30


def reduce_layer(a: Any, path: str = "auto", *, nonnegative: bool = False) -> dict[str, Any]:
    """Reduce one layer's activations `a` of shape `(N, P, C)` (float32) on the device.

    Returns scalars and three per-filter vectors of length C; nothing larger crosses to the
    host. `SIGNAL_INPUTS` (per-channel sums and squares, per-map means `(N, C)` over the
    finite positions, in units of `scale`) feed `signals.reduce_signals` on the device and
    are taken out before the copy to the host. Two paths give the same figures. The fast one
    reads the activations in a few passes (per-map sums, sums of squares, max and min over
    positions) and is taken when every one of those is finite and no live map is too small
    to square in float32: the usual case. Otherwise (NaN, Inf, or values so large a sum
    would overflow) the careful one: sums of values divided by the layer's largest finite
    magnitude (`scale`), so huge but finite activations cannot overflow float32 into Inf or
    NaN; `mean` and `filter_mean_abs` are in units of `scale` (`summarize` multiplies back).

    `nonnegative` says that no value of `a` can be below zero (a ReLU's output, from
    `kinds.nonnegative`): the fast path takes the sum of |a| to be the sum, one pass fewer.

    `path="auto"` picks with `keras.ops.cond` (the backend runs only the path it takes).
    `"fast"` returns the fast path's figures with `ok`, a boolean tensor that is False where
    only the careful path is right; `"careful"` the careful path's (`ok` True). The check's
    compiled call uses "fast" and, in the rare check where a layer is not `ok`, a second
    compiled call with "careful": a `cond` in each of a ResNet50's 70 layers made
    TensorFlow's first check take 10 s longer to compile.
    """
    if path == "careful":
        return {**_reduce_careful(a), "ok": ops.convert_to_tensor(True)}
    n, p, c = a.shape
    # Per (sample, filter) map, over positions: a few passes over the activations.
    # (`reductions`: each by the backend's cheapest kernels.)
    map_sum = ops.sum(a, axis=1)
    map_max = ops.max(a, axis=1)
    map_min = ops.min(a, axis=1)
    # |a| is a where no value is negative (a ReLU's output): the same sums, one pass fewer.
    nonnegative = nonnegative or reductions.eager_nonnegative(map_min)
    map_abs = map_sum if nonnegative else ops.sum(ops.abs(a), axis=1)
    map_squares, map_l2 = reductions.squares(a)
    positive = reductions.positives(a, nonnegative)
    total = ops.sum(map_sum)
    # Finite totals of |a| and a^2 bound every partial sum of them: the per-filter sums and
    # the signals' per-channel sums over the samples cannot overflow into Inf.
    total_abs, total_squares = ops.sum(map_abs), ops.sum(map_squares)
    # They also stand for the per-map figures: a NaN or Inf value makes the total of |a| NaN
    # or Inf, a per-map sum (or sum of |a|, of a^2) that overflows its total: three finite
    # totals mean every per-map figure is finite (one test, not eight: on PyTorch, eager,
    # each `isfinite` is four ops).
    finite = ops.all(ops.isfinite(ops.stack([total, total_abs, total_squares])))
    # A layer of values so small their squares underflow (the signals' RMS and variance)...
    tiny = ops.logical_and(total_abs > 0.0, total_squares < _TINY_SQUARES)
    if p > 1:  # ... or one live map too small for the fast path's Hoyer
        tiny_map = ops.any(ops.logical_and(map_abs > 0.0, map_squares < _TINY_SQUARES))
        tiny = ops.logical_or(tiny, tiny_map)
    ok = ops.logical_and(finite, ops.logical_not(tiny))

    def fast() -> dict[str, Any]:
        values = int(n * p * c)
        count = float(values)
        if p > 1:
            live = map_abs > 0.0
            root = math.sqrt(p)
            l2 = ops.where(live, map_l2, ops.ones_like(map_l2))
            h = (root - map_abs / l2) / (root - 1.0)
            live_f = ops.cast(live, "float32")
            hoyer = ops.sum(h * live_f) / ops.maximum(ops.sum(live_f), 1.0)
        else:
            hoyer = _hoyer_over_channels(ops.reshape(a, (n, c)))
        return {
            "zero_fraction": ops.cast(values - positive, "float32") / count,
            "mean": ops.cast(total / count, "float32"),
            "hoyer": ops.cast(hoyer, "float32"),
            "min": ops.min(map_min),
            "nonfinite": ops.convert_to_tensor(0, "int32"),
            "values": ops.convert_to_tensor(values, "int32"),
            "scale": ops.convert_to_tensor(1.0, "float32"),
            "filter_max": ops.max(map_max, axis=0),
            "filter_mean_abs": ops.sum(map_abs, axis=0) / float(n * p),
            "filter_finite": ops.full((c,), n * p, dtype="int32"),
            # For `signals` (the pipeline takes them out before the copy to the host).
            "channel_sum": ops.sum(map_sum, axis=0),
            "channel_squares": ops.sum(map_squares, axis=0),
            "map_mean": map_sum / float(p),
        }

    if path == "fast":
        # Not `ok`: the careful call redoes the check; until then keep what feeds the signals
        # finite (an eigendecomposition of a matrix with NaN or Inf fails on TensorFlow).
        out = fast()
        for key in SIGNAL_INPUTS:
            out[key] = ops.where(ok, out[key], ops.zeros_like(out[key]))
        return {**out, "ok": ok}
    return ops.cond(ok, fast, lambda: _reduce_careful(a))  # type: ignore[no-any-return]


def _hoyer_over_channels(x: Any) -> Any:
    """Hoyer of each sample's vector of C channels `(N, C)` (finite), averaged over live ones."""
    c = x.shape[1]
    if c <= 1:
        return ops.zeros(())
    peak = ops.max(ops.abs(x), axis=1, keepdims=True)
    live = peak > 0.0
    x = x / ops.where(live, peak, ops.ones_like(peak))
    l1 = ops.sum(ops.abs(x), axis=1)
    l2 = ops.sqrt(ops.sum(ops.square(x), axis=1))
    live = ops.squeeze(live, axis=1)
    root = math.sqrt(c)
    h = (root - l1 / ops.where(live, l2, ops.ones_like(l2))) / (root - 1.0)
    live_f = ops.cast(live, "float32")
    return ops.sum(h * live_f) / ops.maximum(ops.sum(live_f), 1.0)


def _reduce_careful(a: Any) -> dict[str, Any]:
    """`reduce_layer` for activations with NaN, Inf or huge values (see there)."""
    _, p, c = a.shape
    finite = ops.isfinite(a)
    # Counts in int32: a float32 sum of ones stops being exact past 2**24 values.
    filter_count = ops.sum(ops.cast(finite, "int32"), axis=(0, 1))
    count = ops.sum(filter_count)
    safe_count = ops.cast(ops.maximum(count, 1), "float32")
    az = ops.where(finite, a, ops.zeros_like(a))
    abs_a = ops.abs(az)
    peak = ops.max(abs_a)
    scale = ops.where(peak > 0.0, peak, ops.ones_like(peak))

    zeros = ops.sum(ops.cast(ops.logical_and(a <= 0.0, finite), "int32"))
    zero_fraction = ops.cast(zeros, "float32") / safe_count
    mean = ops.sum(az / scale) / safe_count  # each term <= 1: the sum stays finite
    very_low = ops.full_like(a, -np.inf)
    very_high = ops.full_like(a, np.inf)
    filter_max = ops.max(ops.where(finite, a, very_low), axis=(0, 1))
    minimum = ops.min(ops.where(finite, a, very_high))
    per_filter_count = ops.cast(ops.maximum(filter_count, 1), "float32")
    filter_mean_abs = ops.sum(abs_a / scale, axis=(0, 1)) / per_filter_count

    # Hoyer: over positions per (sample, filter) map, or over channels when P == 1. Each map
    # is divided by its own largest magnitude first: the ratio l1 / l2 does not change, no
    # sum can overflow, and l2 >= 1 for every map that is not all zero.
    axis, length = (1, p) if p > 1 else (2, c)
    if length > 1:
        map_peak = ops.max(abs_a, axis=axis, keepdims=True)
        live = map_peak > 0.0
        x = az / ops.where(live, map_peak, ops.ones_like(map_peak))
        l1 = ops.sum(ops.abs(x), axis=axis)
        l2 = ops.sqrt(ops.sum(ops.square(x), axis=axis))
        live = ops.squeeze(live, axis=axis)
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
        "scale": scale,
        "filter_max": filter_max,
        "filter_mean_abs": filter_mean_abs,
        "filter_finite": filter_count,
        # For `signals`, in units of `scale` (of its square for the squares).
        "channel_sum": ops.sum(az / scale, axis=(0, 1)),
        "channel_squares": ops.sum(ops.square(az / scale), axis=(0, 1)),
        "map_mean": ops.sum(az / scale, axis=1)
        / ops.cast(ops.maximum(ops.sum(ops.cast(finite, "int32"), axis=1), 1), "float32"),
    }


@dataclass(frozen=True)
class LayerStats:
    """One layer's statistics at one check, on the host.

    `dead` and `dormant` are boolean vectors over all the layer's filters (False for a
    filter with no finite value). `nonnegative` is True when the layer had finite outputs and
    none was below zero at this check (a ReLU-like layer): dead filters are alerted only for
    such layers.
    """

    zero_fraction: float
    mean: float
    hoyer: float
    nonfinite: int
    values: int
    nonnegative: bool
    dead: np.ndarray
    dormant: np.ndarray
    #: Signals (see `signals`); None when not computed.
    rms: float | None = None
    channel_mean_sq: float | None = None
    channel_var: float | None = None
    max_abs: float | None = None
    outlier_ratio: float | None = None
    erank: float | None = None
    srank: float | None = None
    #: Counts over `actwatch.events.histograms.HISTOGRAM_EDGES`' bins (int64), and the finite
    #: values' range.
    histogram: np.ndarray | None = None
    value_range: tuple[float, float] | None = None
    #: A transformer's figures (`check.attention`, `check.tokens`), by metric name: for an
    #: attention layer `attention_*`, for a block's output `token_norm_ratio`,
    #: `token_similarity`, `kurtosis`, `massive_activation`. None elsewhere.
    transformer: Mapping[str, float] | None = None
    #: A block whose largest |a| is a massive activation: `(sample, token, channel)` of it.
    peak_at: tuple[int, int, int] | None = None

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
        """The per-layer figures written as scalars, keyed by metric name.

        `dead_filters` and `dead_fraction` only where "dead" means something: at a check where
        the layer's outputs are non-negative (ReLU-like). A linear convolution (before its
        BatchNormalization and activation) or a GELU/swish output is about half negative, so
        "<= 0 everywhere" says nothing there; `dormant_fraction` is its signal.
        """
        dead = (
            {"dead_filters": float(self.dead_count), "dead_fraction": self.dead_fraction}
            if self.nonnegative
            else {}
        )
        return {
            "zero_fraction": self.zero_fraction,
            **dead,
            "dormant_fraction": self.dormant_fraction,
            "hoyer": self.hoyer,
            "mean": self.mean,
            "nonfinite": float(self.nonfinite),
            **self.signal_scalars(),
            **dict(self.transformer or {}),
        }

    def signal_scalars(self) -> dict[str, float]:
        """The signals' scalars (see `signals`) that were computed, keyed by metric name."""
        values = {name: getattr(self, name) for name in SIGNAL_SCALARS}
        return {name: float(v) for name, v in values.items() if v is not None}


#: What `reduce_layer` returns for `signals.reduce_signals`, not for the host.
SIGNAL_INPUTS = ("channel_sum", "channel_squares", "map_mean")

#: The `LayerStats` attributes written as per-layer signal scalars, in this order.
SIGNAL_SCALARS = (
    "rms",
    "channel_mean_sq",
    "channel_var",
    "max_abs",
    "outlier_ratio",
    "erank",
    "srank",
)


def _signals(
    signals: Mapping[str, Any] | None, reduced: Mapping[str, Any], has_finite: np.ndarray
) -> dict[str, Any]:
    """`LayerStats`' signal fields from `signals.reduce_signals`' arrays (None: none)."""
    if signals is None:
        return {}
    # An MLP of a padded text model has its per-unit max over the real tokens (dead, dormant)
    # and over every position (`all_max`): the layer's max_abs and histograms see them all.
    every = reduced.get("all_max", reduced["filter_max"])
    filter_max = np.asarray(every, dtype=np.float64)[has_finite]
    peak = max(float(filter_max.max()), -float(reduced["min"])) if filter_max.size else 0.0
    out = signals_from_device(
        signals,
        scale=float(reduced["scale"]),
        filter_finite=np.asarray(reduced["filter_finite"]),
        peak=peak,
    )
    if "histogram" in out and filter_max.size:
        out["value_range"] = (float(reduced["min"]), float(filter_max.max()))
    return out


def summarize(
    reduced: Mapping[str, Any],
    dormant_threshold: float,
    signals: Mapping[str, Any] | None = None,
) -> LayerStats:
    """Turn one layer's reduced arrays (numpy) from `reduce_layer` into `LayerStats`, with
    the signals from `signals.reduce_signals` when given.

    A filter without a single finite value is neither dead nor dormant (it is non-finite,
    which the `nonfinite` count and alert report); a layer without a finite value is not
    non-negative.
    """
    scale = float(reduced["scale"])
    filter_max = np.asarray(reduced["filter_max"], dtype=np.float64)
    has_finite = np.asarray(reduced["filter_finite"]) > 0
    mean_abs = np.asarray(reduced["filter_mean_abs"], dtype=np.float64) * scale
    scored = mean_abs[has_finite]
    layer_mean_abs = float(scored.mean()) if scored.size else 0.0
    if layer_mean_abs > 0.0:
        dormant = has_finite & (mean_abs / layer_mean_abs <= dormant_threshold)
    else:
        dormant = has_finite.copy()
    return LayerStats(
        zero_fraction=float(reduced["zero_fraction"]),
        mean=float(reduced["mean"]) * scale,
        hoyer=float(reduced["hoyer"]),
        nonfinite=round(float(reduced["nonfinite"])),
        values=round(float(reduced["values"])),
        nonnegative=bool(has_finite.any() and float(reduced["min"]) >= 0.0),
        dead=has_finite & (filter_max <= 0.0),
        dormant=np.asarray(dormant, dtype=bool),
        **_signals(signals, reduced, has_finite),
    )
