"""Deeper signals of a layer's activations, reduced on the device with `keras.ops`.

The passes over the activations run on the device, in the check's compiled call; only small
arrays cross (163 counts, two per-channel sums, a sample of at most 4096 values, the
`min(N, C)` eigenvalues, top-k indices and positions), and the last operations on them run on
the host in float64 (`signals_from_device`).

Computed on the statistics data (`stats_data`, or the probes), from the layer output as
`(N, P, C)` (N samples, P positions, C channels; see `stats`). Non-finite values are left
out of every figure, as in `stats`. With `a[n, p, c]` over the finite values:

- **histogram**: counts of the finite values in `HISTOGRAM_EDGES`, equal to
  `numpy.histogram(finite values, HISTOGRAM_EDGES)` over the layer's values when it has at
  most `HISTOGRAM_SAMPLE` (16,384) of them, else over an even strided sample of at most that
  many (`sample_values`: every k-th position of the `(N * P, C)` rows from the first, with all
  C channels of it, k the smallest stride that keeps the sample within the cap and shares no
  factor with P, so every channel is sampled alike and the positions spread over a picture's
  columns; when fewer than `SAMPLE_MIN_ROWS` (64) positions would fit, every k-th value, k
  sharing no factor with C; the same values at every check). Counting all 65M values
  of a ResNet50's 70 layers at 224 px took about 300 ms a check on 2 CPU cores, as long as
  the forward pass twice; the shape of a distribution does not need them all. The edges are
  fixed and the same for every layer and every check (symmetric log bins, so histograms stay
  comparable from check to check and layer to layer without any state): a bin `[-2^-20,
  2^-20)` around zero (the exact zeros of a ReLU; 2^-20 is about 9.5e-7), two bins per
  octave (edges `2^j` and `1.5 * 2^j`) from 2^-20 to 2^20 (about 1e6) on each side, and two
  outer bins out to the largest float32, so every finite value is counted: 163 bins. Half
  octaves because the bin of a float32 is then read from its bits, with no search (see
  `histograms`).
- **signal propagation** (Brock, De, Smith, ICLR 2021): `rms = sqrt(mean a^2)`, the average
  squared channel mean `mean_c (mean_{n,p} a[n, p, c])^2` and the average channel variance
  `mean_c var_{n,p} a[n, p, c]` (population variance, as `E[a^2] - E[a]^2` in float64 from
  the statistics pass's float32 per-channel sums), over the channels with finite values.
- **outliers** (Sun, Chen, Kolter, Liu, "Massive Activations in Large Language Models",
  2024): `max_abs = max |a|` and `outlier_ratio = max |a| / median |a|`. The median is taken
  over the values that are not exactly zero (a ReLU layer is mostly exact zeros: its plain
  median |a| is 0; where no value is zero, as in the hidden states Sun et al. measure, this is
  their median) in a fixed strided sample of at most `MEDIAN_SAMPLE` values of the flattened
  `(N, P, C)` data (`sample_values`, as for the histogram), so a big layer costs one small
  sort. `outlier_ratio` is 0 when that sample has no nonzero value.
- **feature rank** of the features `f[n, c] = mean_p a[n, p, c]` (spatially averaged
  channels, samples x channels): with `s_i` the singular values of `f`, from the eigenvalues
  of the `C x C` Gram matrix `f^T f` (or the `N x N` one `f f^T` when N < C: the same nonzero
  spectrum at a smaller cost), eigenvalues below `max * size * eps(float32)` counted as 0
  (`numpy.linalg.matrix_rank`'s rule, applied to the eigenvalues `s^2`: float32 round-off
  of the Gram hides singular values below about `max s * sqrt(size * eps)`, 3e-3 of the
  largest for 64 channels, which an SVD of `f` would keep), `q_i = s_i / sum s`: the
  **effective rank** (Roy & Vetterli 2007) `exp(-sum q_i log q_i)` and **srank** (Kumar,
  Agarwal, Ghosh, Levine, ICLR 2021) with delta = 0.01, the fewest largest singular values
  whose sum reaches `(1 - delta) sum s`. Both are at most `min(N, C)`: with fewer samples
  than channels they describe the samples, not the layer (give `stats_data` with at least C
  samples). Both are 0 when every feature is 0.
- **top-k** (what each filter responds to): for each drawn filter, the `k` samples whose
  peak `max_p a[n, p, c]` is highest (ties: the lower sample index first), and the position
  `argmax_p` of each peak (the first one on ties). Only these indices and positions cross to
  the host, where `topk_image` draws the samples as thumbnails with the peak marked.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from actwatch.events.histograms import FIRST_HALF_OCTAVE, HISTOGRAM_EDGES, LOG_BINS
from actwatch.render.tiles import TopK

__all__ = [
    "HISTOGRAM_SAMPLE",
    "MEDIAN_SAMPLE",
    "SAMPLE_MIN_ROWS",
    "SRANK_DELTA",
    "histograms",
    "ranks",
    "reduce_signals",
    "reduce_topk",
    "sample_rows",
    "sample_stride",
    "sample_values",
    "signals_from_device",
    "topk_from_device",
]

#: At most this many values of a layer go into the median of |a|.
MEDIAN_SAMPLE = 4096
#: At most this many values of a layer go into its histogram (a ResNet50 at 224 px has up to
#: 3.2M on 4 probes): about 100 a bin where its values lie, enough for the distribution's
#: shape (its extremes are `max_abs`, exact). 65,536 took 50 ms of a PyTorch check of
#: MobileNetV2 at 224 px (52 layers, 13 element-wise ops on 3.4M values, one thread).
HISTOGRAM_SAMPLE = 16384


#: A sample takes whole positions (rows of C values) only when it can take this many of them;
#: else single values: 4096 values of a 768-wide token layer in whole rows would be 5 tokens,
#: all of them padding in a padded batch.
SAMPLE_MIN_ROWS = 64


def sample_rows(channels: int, cap: int) -> bool:
    """Whether a sample of at most `cap` values of a layer with `channels` channels takes
    whole positions: when at least `SAMPLE_MIN_ROWS` of them fit."""
    return cap // max(channels, 1) >= SAMPLE_MIN_ROWS


def sample_stride(size: int, channels: int, cap: int, positions: int) -> int:
    """Stride of an even sample of at most `cap` of the `size` values of a flattened
    `(N, P, C)` layer output (`positions` is P). With `sample_rows`: a stride over the
    `N * P` rows of C values, the smallest >= ceil(rows / (cap // C)) that shares no factor
    with P, so the rows taken spread over a picture's columns (a stride of the width would
    take one column), each with all its channels. Else a stride over the values, the
    smallest >= ceil(size / cap) that shares no factor with C (a stride of C would take only
    the first channel). 1 (every value) when `size <= cap`.
    """
    if size <= cap:
        return 1
    if sample_rows(channels, cap):
        rows, coprime = size // channels, positions
        stride = max(1, math.ceil(rows / (cap // channels)))
    else:
        coprime = channels
        stride = max(1, math.ceil(size / cap))
    while stride > 1 and math.gcd(stride, coprime) != 1:
        stride += 1
    return stride


def sample_values(a: Any, cap: int) -> Any:
    """At most `cap` values of the `(N, P, C)` tensor `a`, flattened: all of them when they
    fit; else every `sample_stride(...)`-th row of C values (`sample_rows`), or every
    `sample_stride`-th value. Rows are gathered by index on TensorFlow, whose strided slice
    copies value by value (MobileNetV2's 52 layers at 224 px, one thread: 16 ms a check for
    a stride over values or over rows, 6 ms gathering the rows); a strided view elsewhere."""
    n, p, c = (int(d) for d in a.shape)
    stride = sample_stride(n * p * c, c, cap, p)
    if stride == 1:
        return ops.reshape(a, (-1,))
    if not sample_rows(c, cap):
        return ops.reshape(a, (-1,))[::stride]
    rows = ops.reshape(a, (n * p, c))
    if keras.backend.backend() == "tensorflow":
        taken = ops.take(rows, np.arange(0, n * p, stride, dtype=np.int32), axis=0)
    else:
        taken = rows[::stride]
    return ops.reshape(taken, (-1,))


#: delta of srank (Kumar et al. 2021).
SRANK_DELTA = 0.01
_EPS32 = float(np.finfo(np.float32).eps)


def reduce_signals(
    a: Any,
    inputs: Mapping[str, Any],
    *,
    histogram: bool = True,
    feature_rank: bool = True,
) -> dict[str, Any]:
    """What the signals of one layer's `(N, P, C)` float32 activations `a` need, on the device.

    `inputs` are `stats.reduce_layer`'s per-channel sums (`channel_sum`, `channel_squares`)
    and per-map means (`map_mean`, `(N, C)`): the moments and the features come from the
    statistics pass, so they cost no pass over the activations. Returns small arrays only:
    the two per-channel sums (C each), the strided sample for the median (at most
    `MEDIAN_SAMPLE` values), with `histogram` the counts (`len(HISTOGRAM_EDGES) - 1` int32),
    with `feature_rank` the eigenvalues of the features' Gram matrix (`min(N, C)`).
    `signals_from_device` finishes on the host in float64 (a few operations on C numbers per
    layer: fewer device ops, and float64 where a float32 difference could cancel).
    """
    n, c = int(a.shape[0]), int(a.shape[2])
    out: dict[str, Any] = {
        "channel_sum": inputs["channel_sum"],
        "channel_squares": inputs["channel_squares"],
        "median_sample": sample_values(a, MEDIAN_SAMPLE),
    }
    if histogram:
        out["histogram"] = histograms([sample_values(a, HISTOGRAM_SAMPLE)])[0]
    if feature_rank:
        # (N, C), divided by its largest |f| (the ranks do not mind a scale): the Gram's
        # float32 products neither overflow nor underflow whatever the activations' scale.
        features = inputs["map_mean"]
        peak = ops.max(ops.abs(features))
        features = features / ops.where(peak > 0.0, peak, ops.ones_like(peak))
        if n < c:
            gram = ops.matmul(features, ops.transpose(features))
        else:
            gram = ops.matmul(ops.transpose(features), features)
        out["eigenvalues"] = ops.eigh(gram)[0]
    return out


def signals_from_device(
    device: Mapping[str, Any], *, scale: float, filter_finite: np.ndarray, peak: float
) -> dict[str, Any]:
    """The signals (host, float64) from `reduce_signals`' arrays (numpy).

    `scale` is the unit of the sums (`stats.reduce_layer`'s), `filter_finite` the count of
    finite values per channel and `peak` the largest finite |a|. Returns the `LayerStats`
    fields: `rms`, `channel_mean_sq`, `channel_var`, `max_abs`, `outlier_ratio`, and with
    what was computed, `erank`, `srank` and `histogram`.
    """
    per = np.asarray(filter_finite, dtype=np.float64)
    has = per > 0
    count = max(float(per.sum()), 1.0)
    sums = np.asarray(device["channel_sum"], dtype=np.float64) * scale
    squares = np.asarray(device["channel_squares"], dtype=np.float64) * scale**2
    mean = sums[has] / per[has]
    var = np.maximum(squares[has] / per[has] - mean**2, 0.0)
    sample = np.asarray(device["median_sample"], dtype=np.float64)
    sample = np.abs(sample[np.isfinite(sample) & (sample != 0.0)])
    median = float(np.median(sample)) if sample.size else 0.0
    out: dict[str, Any] = {
        "rms": math.sqrt(float(squares.sum()) / count),
        "channel_mean_sq": float(np.mean(mean**2)) if mean.size else 0.0,
        "channel_var": float(np.mean(var)) if var.size else 0.0,
        "max_abs": peak,
        "outlier_ratio": peak / median if median > 0.0 else 0.0,
    }
    if "eigenvalues" in device:
        out["erank"], out["srank"] = ranks(np.asarray(device["eigenvalues"], dtype=np.float64))
    if "histogram" in device:
        out["histogram"] = np.asarray(device["histogram"], dtype=np.int64)
    return out


def ranks(eigenvalues: np.ndarray, delta: float = SRANK_DELTA) -> tuple[float, float]:
    """(effective rank, srank) from the eigenvalues of a Gram matrix `f^T f` (or `f f^T`).

    Singular values `s = sqrt(eigenvalues)`; eigenvalues below `max * size * eps(float32)`
    (float32 round-off of the device's eigh) count as 0. Both are 0 when every one is 0.
    """
    values = np.maximum(np.asarray(eigenvalues, dtype=np.float64), 0.0)
    if values.size == 0 or values.max() <= 0.0:
        return 0.0, 0.0
    values = np.where(values > values.max() * values.size * _EPS32, values, 0.0)
    singular = np.sort(np.sqrt(values))[::-1]
    q = singular / singular.sum()
    nonzero = q[q > 0]
    erank = math.exp(-float((nonzero * np.log(nonzero)).sum()))
    srank = int(np.searchsorted(np.cumsum(q), 1.0 - delta - 1e-12)) + 1
    return erank, float(min(srank, values.size))


def histograms(flats: Sequence[Any]) -> Any:
    """Counts `(L, len(HISTOGRAM_EDGES) - 1)` int32 of the finite values of each 1-D float32
    tensor of `flats` (the layers' statistics data, flattened) in `HISTOGRAM_EDGES`' bins.

    The bin comes from the bits of |a| (IEEE 754: for positive floats the integer order is
    the value order, and bits >> 22 are the exponent and the first mantissa bit, so each
    half octave is one integer), with no search and no logarithm. A negative value counts one
    bit lower (its bins are closed on the right side of |a|), exactly as `numpy.histogram`'s
    half-open bins over the mirrored edges. Every layer goes into one count (its bins offset
    by its position). On TensorFlow the whole is compiled by XLA (`jit_compile`): a dozen
    element-wise ops fused into one pass, one call for all layers (the demo CNN's 10 layers,
    600k values: about 5 ms -> 1 ms); JAX fuses them anyway.
    """
    if not flats:
        return ops.zeros((0, HISTOGRAM_EDGES.size - 1), "int32")
    if keras.backend.backend() == "tensorflow":
        return _xla_histograms()(list(flats))
    return _histograms_ops(flats)


def _histograms_ops(flats: Sequence[Any], view: Any = ops.view) -> Any:
    bins = int(HISTOGRAM_EDGES.size - 1)
    zero = LOG_BINS + 1  # index of [-2^-20, 2^-20)
    # All layers' values in one vector first, so each step below is one op for every layer
    # (not one per layer: on PyTorch, eager, the ops of ViT-B's 37 layers cost 13 x 37
    # parallel launches); the concatenation also makes a strided sample contiguous.
    sizes = [int(flat.shape[0]) for flat in flats]
    flat = ops.concatenate(list(flats)) if len(flats) > 1 else flats[0]
    negative = flat < 0.0
    magnitude = view(ops.abs(flat), "int32")
    bits = magnitude - ops.cast(negative, "int32")
    half_octave = ops.right_shift(bits, 22) - FIRST_HALF_OCTAVE  # 0: [2^-20, 1.5 2^-20)
    inner = ops.clip(half_octave, -1, LOG_BINS)  # -1: the zero bin; LOG_BINS: outer
    index = ops.where(negative, zero - 1 - inner, zero + 1 + inner)
    # Non-finite (exponent bits all ones: |a| >= Inf's bits, NaN above): a bin dropped. One
    # comparison of the bits already there (PyTorch's `isfinite` is four ops, eager).
    index = ops.where(magnitude < _INF_BITS, index, bins)
    if len(flats) > 1:  # each layer's bins after the previous layer's
        if keras.backend.backend() == "torch":  # eager: made (and copied to a GPU) once
            index = index + _bin_offsets(tuple(sizes), bins)
        else:  # a constant of the compiled function
            index = index + ops.convert_to_tensor(_offsets(sizes, bins))
    total = len(flats) * (bins + 1)
    if keras.backend.backend() == "torch":
        counts = ops.bincount(index, minlength=total)
    else:  # a static length under jax.jit and XLA
        counts = ops.segment_sum(ops.ones_like(index), index, num_segments=total)
    return ops.cast(ops.reshape(counts, (len(flats), bins + 1))[:, :bins], "int32")


def _offsets(sizes: Sequence[int], bins: int) -> np.ndarray:
    """Per sampled value, where its layer's bins start among all the layers' bins."""
    return np.repeat(np.arange(len(sizes), dtype="int32") * (bins + 1), sizes)


@functools.lru_cache(maxsize=8)
def _bin_offsets(sizes: tuple[int, ...], bins: int) -> Any:
    """`_offsets` as a device tensor, kept between checks (PyTorch, eager only: a tensor
    kept from inside a traced function would leak its tracer)."""
    return ops.convert_to_tensor(_offsets(sizes, bins))


#: The bits of float32 +Inf as an int32: a finite |a| has fewer.
_INF_BITS = 0x7F800000


def _xla_histograms() -> Any:
    """A new XLA-compiled function for each call: one shared by every pipeline of the process
    (it was `functools.cache`d) was retraced for each model's list of layers, and from the
    third on `reduce_retracing` traced it with unknown shapes, which fails (`TypeError`), so
    a third model's checks ran eagerly (seen in benchmarks/scale.py on EfficientNetB0)."""
    import tensorflow as tf  # only on the TensorFlow backend

    def compiled(flats: list[Any]) -> Any:  # Keras' view needs static shapes: tf.bitcast not
        return _histograms_ops(flats, tf.bitcast)

    return tf.function(compiled, jit_compile=True, reduce_retracing=True)


def reduce_topk(a: Any, k: int, filters: int) -> dict[str, Any]:
    """Top-k samples per filter of `(N, P, C)` activations `a`, for the first `filters` filters.

    Returns `indices` and `positions` int32 `(F, k')` with `k' = min(k, N)` and the peaks
    `values` float32 `(F, k')` (-inf for a filter with no finite value).
    """
    n = int(a.shape[0])
    kk = min(k, n)
    a = a[..., :filters]
    masked = ops.where(ops.isfinite(a), a, ops.full_like(a, -np.inf))
    peaks = ops.transpose(ops.max(masked, axis=1))  # (F, N)
    # Positions go through the transpose as float32 (exact below 2^24): TensorFlow's oneDNN
    # build prints an error line for an int32 transpose on CPUs without AVX-512.
    where = ops.transpose(ops.cast(ops.argmax(masked, axis=1), "float32"))  # (F, N)
    if keras.backend.backend() == "torch":
        # torch.topk does not order ties (a dead ReLU filter peaks at 0 on every sample):
        # a stable sort of -peaks puts the lower sample index first, as JAX and TF's top_k.
        indices = ops.cast(ops.argsort(-peaks, axis=1)[:, :kk], "int32")
        values = ops.take_along_axis(peaks, indices, axis=1)
    else:
        values, indices = ops.top_k(peaks, kk, sorted=True)
        indices = ops.cast(indices, "int32")
    positions = ops.cast(ops.take_along_axis(where, indices, axis=1), "int32")
    return {"indices": indices, "positions": positions, "values": values}


# Host side -------------------------------------------------------------------------------


def topk_from_device(item: Mapping[str, np.ndarray], spatial: tuple[int, ...]) -> TopK:
    return TopK(
        indices=np.asarray(item["indices"], dtype=np.int64),
        positions=np.asarray(item["positions"], dtype=np.int64),
        values=np.asarray(item["values"], dtype=np.float64),
        spatial=spatial,
    )


def check_outlier_ratio(value: Any) -> float | None:
    """`outlier_ratio` as a float > 1, or None; an error that says so otherwise."""
    if value is None:
        return None
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if not ok or not math.isfinite(float(value)) or float(value) <= 1.0:
        raise ValueError(
            "Invalid value for argument `outlier_ratio`. Expected a number > 1 (e.g. 1000, "
            f"Sun et al. 2024) or None. Received: outlier_ratio={value!r}"
        )
    return float(value)
