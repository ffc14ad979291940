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
  most `HISTOGRAM_SAMPLE` (65,536) of them, else over an even strided sample of at most that
  many (`sample_values`: every k-th value of the flattened `(N, P, C)` data from the first,
  k the smallest stride that keeps the sample within the cap and shares no factor with C, so
  every channel is sampled alike; the same values at every check). Counting all 65M values
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

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops
from PIL import Image

__all__ = [
    "FLOAT32_MAX",
    "HISTOGRAM_EDGES",
    "HISTOGRAM_SAMPLE",
    "MEDIAN_SAMPLE",
    "SRANK_DELTA",
    "HistogramHistory",
    "TopK",
    "bin_counts",
    "bin_label",
    "colorful_dimension",
    "distribution_image",
    "histogram_buckets",
    "histograms",
    "ranks",
    "reduce_signals",
    "reduce_topk",
    "sample_stride",
    "sample_values",
    "signals_from_device",
    "topk_from_device",
    "topk_image",
]

FLOAT32_MAX = float(np.finfo(np.float32).max)
#: Half octaves of |a| with a bin of their own on each side of zero: 2^-20 (about 1e-6) to
#: 2^20 (about 1e6), two bins an octave (edges 2^j and 1.5 * 2^j).
_LOG_BINS = 80
_LOW_EXPONENT = -20
_FIRST_HALF_OCTAVE = 2 * (_LOW_EXPONENT + 127)  # float32 bits >> 22 of 2^-20
_POSITIVE = np.array(
    [m * 2.0**j for j in range(_LOW_EXPONENT, -_LOW_EXPONENT) for m in (1.0, 1.5)]
    + [2.0**-_LOW_EXPONENT]
)
#: Fixed histogram edges (float32, increasing): -max, -2^20 ... -2^-20, 2^-20 ... 2^20, +max.
HISTOGRAM_EDGES: np.ndarray = np.concatenate(
    [[-FLOAT32_MAX], -_POSITIVE[::-1], _POSITIVE, [FLOAT32_MAX]]
).astype(np.float32)
HISTOGRAM_EDGES.setflags(write=False)
#: At most this many values of a layer go into the median of |a|.
MEDIAN_SAMPLE = 4096
#: At most this many values of a layer go into its histogram (all of them below: the demo
#: CNN's layers on 4 probes at 64 px have at most 65,536; a ResNet50 at 224 px has 3.2M).
HISTOGRAM_SAMPLE = 65536


def sample_stride(size: int, channels: int, cap: int) -> int:
    """Stride of an even sample of at most `cap` of the `size` values of a flattened
    `(N, P, C)` layer output: the smallest stride >= ceil(size / cap) that shares no factor
    with C, so the sample takes every channel alike (a stride of C would take only the
    first channel). 1 (every value) when `size <= cap`.
    """
    stride = max(1, math.ceil(size / cap))
    while stride > 1 and math.gcd(stride, channels) != 1:
        stride += 1
    return stride


def sample_values(a: Any, cap: int) -> Any:
    """The flattened `(N, P, C)` tensor `a`, every `sample_stride(...)`-th value from the
    first (all of it when it has at most `cap` values)."""
    n, p, c = (int(d) for d in a.shape)
    flat = ops.reshape(a, (-1,))
    stride = sample_stride(n * p * c, c, cap)
    return flat if stride == 1 else flat[::stride]


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
    zero = _LOG_BINS + 1  # index of [-2^-20, 2^-20)
    indices = []
    for i, flat in enumerate(flats):
        negative = flat < 0.0
        bits = view(ops.abs(flat), "int32") - ops.cast(negative, "int32")
        half_octave = ops.right_shift(bits, 22) - _FIRST_HALF_OCTAVE  # 0: [2^-20, 1.5 2^-20)
        inner = ops.clip(half_octave, -1, _LOG_BINS)  # -1: the zero bin; _LOG_BINS: outer
        index = ops.where(negative, zero - 1 - inner, zero + 1 + inner)
        index = ops.where(ops.isfinite(flat), index, bins)  # non-finite: a bin dropped
        indices.append(index + i * (bins + 1))
    index = ops.concatenate(indices) if len(indices) > 1 else indices[0]
    total = len(flats) * (bins + 1)
    if keras.backend.backend() == "torch":
        counts = ops.bincount(index, minlength=total)
    else:  # a static length under jax.jit and XLA
        counts = ops.segment_sum(ops.ones_like(index), index, num_segments=total)
    return ops.cast(ops.reshape(counts, (len(flats), bins + 1))[:, :bins], "int32")


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


def histogram_buckets(
    counts: np.ndarray, low: float | None = None, high: float | None = None
) -> np.ndarray:
    """TensorBoard's histogram tensor `[k, 3]` (left edge, right edge, count) of `counts`.

    Only the bins from the first to the last non-empty one are kept; an outer bin's infinite-
    looking edge (the largest float32) is replaced by the data's `low` / `high` when given,
    so TensorBoard's axis spans the data. Shape `(0, 3)` when every count is 0.
    """
    counts = np.asarray(counts, dtype=np.float64)
    nonzero = np.flatnonzero(counts)
    if nonzero.size == 0:
        return np.zeros((0, 3), dtype=np.float64)
    first, last = int(nonzero[0]), int(nonzero[-1])
    edges = HISTOGRAM_EDGES.astype(np.float64)
    out = np.stack([edges[first : last + 1], edges[first + 1 : last + 2], counts[first : last + 1]])
    out = out.T.copy()
    if low is not None and first == 0:
        out[0, 0] = min(low, out[0, 1])
    if high is not None and last == counts.size - 1:
        out[-1, 1] = max(high, out[-1, 0])
    return out


def bin_counts(buckets: np.ndarray) -> np.ndarray:
    """Counts over `HISTOGRAM_EDGES`' bins from a `[k, 3]` tensor of `histogram_buckets`."""
    counts = np.zeros(HISTOGRAM_EDGES.size - 1, dtype=np.float64)
    buckets = np.asarray(buckets, dtype=np.float64).reshape(-1, 3)
    if buckets.size:
        # Each bucket's midpoint lies inside its fixed bin (outer edges may be the data's).
        mid = np.clip((buckets[:, 0] + buckets[:, 1]) / 2, -FLOAT32_MAX, FLOAT32_MAX)
        edges = HISTOGRAM_EDGES.astype(np.float64)
        index = np.clip(np.searchsorted(edges, mid, side="right") - 1, 0, counts.size - 1)
        np.add.at(counts, index, buckets[:, 2])
    return counts


def bin_label(index: int) -> str:
    """The range of bin `index`, e.g. `[0.5, 0.75)`."""
    lo, hi = HISTOGRAM_EDGES[index], HISTOGRAM_EDGES[index + 1]
    show = [
        "-max" if v == -FLOAT32_MAX else "max" if v == FLOAT32_MAX else f"{v:.2g}" for v in (lo, hi)
    ]
    return f"[{show[0]}, {show[1]})"


def colorful_dimension(history: Sequence[np.ndarray]) -> tuple[np.ndarray, int]:
    """fastai's "colorful dimension": brightness `log(1 + count)` of bins (rows) x checks.

    `history` holds one count vector over `HISTOGRAM_EDGES`' bins per check, oldest first.
    Returns the `(rows, checks)` float image scaled to 0..1 (the largest bin at the top) and
    the index of the bin of its first row; only the bins non-empty at some check are kept.
    """
    matrix = np.stack([np.asarray(h, dtype=np.float64) for h in history], axis=1)
    used = np.flatnonzero(matrix.sum(axis=1) > 0)
    if used.size == 0:
        return np.zeros((1, matrix.shape[1])), 0
    lo, hi = int(used[0]), int(used[-1])
    body = np.log1p(matrix[lo : hi + 1])[::-1]
    top = float(body.max())
    return (body / top if top > 0 else body), hi


def distribution_image(history: Sequence[np.ndarray], lut: np.ndarray) -> np.ndarray:
    """The colorful dimension as an RGB uint8 image for TensorBoard: `lut` colours, each
    check a column of at least 1 and at most 8 pixels, each bin a row of 3."""
    body, _ = colorful_dimension(history)
    checks = body.shape[1]
    width = max(1, min(8, 512 // max(checks, 1)))
    codes = np.round(body * 255).astype(np.uint8)
    image: np.ndarray = lut.take(codes, axis=0)
    return image.repeat(3, axis=0).repeat(width, axis=1)


class HistogramHistory:
    """Each check's histogram counts per layer, for the colorful dimension, in at most
    `columns` columns a layer (host memory: at most `columns` + 1 vectors of
    `len(HISTOGRAM_EDGES) - 1` float32 per layer, however long the fit).

    Up to `columns` checks, a column is one check. Each time a layer's columns reach
    `columns`, adjacent ones are merged in pairs (their mean) and from then on a column stands
    for twice as many checks: 2^j consecutive checks after j merges, the last column the mean
    of the checks so far of the current group. The image stays at most `columns` + 1 wide, so
    drawing it costs the same at the ten-thousandth check as at the hundredth.
    """

    def __init__(self, columns: int = 512) -> None:
        self.columns = max(2, int(columns) // 2 * 2)  # even: pairs merge evenly
        self._done: dict[str, list[np.ndarray]] = {}  # full columns (means), oldest first
        self._open: dict[str, tuple[np.ndarray, int]] = {}  # the current column: sum, checks
        self._span: dict[str, int] = {}  # checks a full column stands for

    def add(self, path: str, counts: np.ndarray) -> None:
        counts = np.asarray(counts, dtype=np.float64)
        if path in self._open:
            total, checks = self._open[path]
            total, checks = total + counts, checks + 1
        else:
            total, checks = counts.copy(), 1
        span = self._span.setdefault(path, 1)
        if checks < span:
            self._open[path] = (total, checks)
            return
        self._open.pop(path, None)
        done = self._done.setdefault(path, [])
        done.append((total / checks).astype(np.float32))
        if len(done) >= self.columns:  # half as many columns, each twice the checks
            done[:] = [(done[i] + done[i + 1]) / 2 for i in range(0, len(done), 2)]
            self._span[path] = 2 * span

    def snapshot(self, paths: Sequence[str] | set[str]) -> dict[str, tuple[np.ndarray, ...]]:
        """The columns of `paths` so far, oldest first, the current group's mean last (tuples
        of arrays that later checks do not change)."""
        out: dict[str, tuple[np.ndarray, ...]] = {}
        for p in paths:
            columns = list(self._done.get(p, ()))
            if p in self._open:
                total, checks = self._open[p]
                columns.append((total / checks).astype(np.float32))
            if columns:
                out[p] = tuple(columns)
        return out


@dataclass(frozen=True)
class TopK:
    """One layer's top-k samples per drawn filter (host), from `reduce_topk`.

    `indices[f, j]` is the sample with the j-th highest peak of filter `f`, `positions[f, j]`
    the flattened position of that peak in the layer's `spatial` shape (channels last, no
    batch or channel axis; `()` for Dense outputs), `values[f, j]` the peak.
    """

    indices: np.ndarray
    positions: np.ndarray
    values: np.ndarray
    spatial: tuple[int, ...]

    def peak_cells(self) -> np.ndarray:
        """`(F, k, 2)` row and column of each peak in the layer's map (0, 0 for Dense)."""
        spatial = self.spatial
        if len(spatial) == 0:
            return np.zeros((*self.positions.shape, 2), dtype=np.int64)
        if len(spatial) == 1:
            rows = np.zeros_like(self.positions)
            return np.stack([rows, self.positions], axis=-1).astype(np.int64)
        h_w = spatial[-2:]
        inner = int(np.prod(spatial[-2:]))
        flat = self.positions % inner  # 3-D maps: the position within its depth slice
        return np.stack(np.unravel_index(flat, h_w), axis=-1).astype(np.int64)


THUMB = 32  # thumbnail side in pixels
_MARK_RGB = np.array([0, 255, 0], dtype=np.uint8)
_GUTTER_RGB = np.array([32, 64, 96], dtype=np.uint8)
_EMPTY_RGB = np.array([90, 90, 90], dtype=np.uint8)


def _thumbnails(display: np.ndarray, indices: np.ndarray) -> dict[int, np.ndarray]:
    """The pictures of the samples `indices` (only those: `stats_data` may hold hundreds)
    resized (bilinear) to `THUMB` x `THUMB`, by sample index."""
    return {
        int(i): np.asarray(
            Image.fromarray(display[int(i)]).resize((THUMB, THUMB), Image.Resampling.BILINEAR)
        )
        for i in np.unique(indices)
    }


def _mark(tile: np.ndarray, row: int, col: int, spatial: tuple[int, ...]) -> None:
    """Draw a square outline around the input area of map cell `(row, col)` on `tile`."""
    h, w = (1, spatial[0]) if len(spatial) == 1 else spatial[-2:]
    cy, cx = (row + 0.5) * THUMB / h, (col + 0.5) * THUMB / w
    half = max(3.0, THUMB / max(h, w) / 2)
    y0, y1 = int(max(0, cy - half)), int(min(THUMB - 1, cy + half))
    x0, x1 = int(max(0, cx - half)), int(min(THUMB - 1, cx + half))
    tile[y0 : y1 + 1, [x0, x1]] = _MARK_RGB
    tile[[y0, y1], x0 : x1 + 1] = _MARK_RGB


def topk_image(topk: TopK, display: np.ndarray, gutter: int = 4) -> np.ndarray:
    """One RGB image of a layer's top-k strips: per drawn filter, its k samples side by side
    (highest peak first), the peak's cell outlined in green (no mark for Dense outputs);
    filters in a near-square grid, left to right, top to bottom. A filter without a finite
    value gets grey tiles.
    """
    f, k = topk.indices.shape
    shown = topk.indices[np.isfinite(topk.values)]
    thumbs = _thumbnails(display, shown)
    cells = topk.peak_cells()
    cols = max(1, math.ceil(math.sqrt(f * THUMB / max(k * THUMB, 1))))
    rows = math.ceil(f / cols)
    cell_w, cell_h = k * (THUMB + 1) - 1 + gutter, THUMB + gutter
    out = np.empty((rows * cell_h + gutter, cols * cell_w + gutter, 3), dtype=np.uint8)
    out[:] = _GUTTER_RGB
    for i in range(f):
        r, c = divmod(i, cols)
        y, x = gutter + r * cell_h, gutter + c * cell_w
        for j in range(k):
            left = x + j * (THUMB + 1)
            if not np.isfinite(topk.values[i, j]):
                out[y : y + THUMB, left : left + THUMB] = _EMPTY_RGB
                continue
            tile = thumbs[int(topk.indices[i, j])].copy()
            if topk.spatial:
                _mark(tile, int(cells[i, j, 0]), int(cells[i, j, 1]), topk.spatial)
            out[y : y + THUMB, left : left + THUMB] = tile
    return out


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


def histogram_values(
    stats: Mapping[str, Any],
    history: HistogramHistory | None = None,
    remember: Collection[str] | None = None,
) -> dict[str, tuple[np.ndarray, str]]:
    """Every layer's histogram of one check as `{tag: ([k, 3] buckets, description)}`.

    `stats` maps layer paths to `LayerStats`; layers without a histogram or without a finite
    value are left out. The histograms of the layers in `remember` (all when None) are also
    added to `history` when given (the colorful dimension of the drawn layers).
    """
    from actwatch.events import tags

    out: dict[str, tuple[np.ndarray, str]] = {}
    for path, s in stats.items():
        if s.histogram is None:
            continue
        if history is not None and (remember is None or path in remember):
            history.add(path, s.histogram)
        low, high = s.value_range if s.value_range is not None else (None, None)
        buckets = histogram_buckets(s.histogram, low, high)
        if buckets.shape[0]:
            out[tags.histogram_tag(path)] = (
                buckets,
                f"Activations of layer `{path}` on the statistics data: symmetric log bins "
                "(a bin around 0, two an octave from 2^-20 to 2^20 each side), the same at every "
                "check; non-finite values left out.",
            )
    return out
