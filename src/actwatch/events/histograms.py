"""Activation histograms: the fixed symmetric log bins every check shares, TensorBoard's
`[k, 3]` histogram tensor written and read back, and the host memory of the colorful
dimension.

The edges are fixed and the same for every layer and every check (symmetric log bins, so
histograms stay comparable from check to check and layer to layer without any state): a bin
`[-2^-20, 2^-20)` around zero (the exact zeros of a ReLU; 2^-20 is about 9.5e-7), two bins per
octave (edges `2^j` and `1.5 * 2^j`) from 2^-20 to 2^20 (about 1e6) on each side, and two outer
bins out to the largest float32, so every finite value is counted: 163 bins. The device side
(`actwatch.check.signals.histograms`) reads the bin of a float32 from its bits.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from actwatch.events import tags

__all__ = [
    "FLOAT32_MAX",
    "HISTOGRAM_EDGES",
    "HistogramHistory",
    "bin_counts",
    "bin_label",
    "histogram_buckets",
    "histogram_values",
]


FLOAT32_MAX = float(np.finfo(np.float32).max)


#: Half octaves of |a| with a bin of their own on each side of zero: 2^-20 (about 1e-6) to
#: 2^20 (about 1e6), two bins an octave (edges 2^j and 1.5 * 2^j).
LOG_BINS = 80


LOW_EXPONENT = -20


FIRST_HALF_OCTAVE = 2 * (LOW_EXPONENT + 127)  # float32 bits >> 22 of 2^-20


_POSITIVE = np.array(
    [m * 2.0**j for j in range(LOW_EXPONENT, -LOW_EXPONENT) for m in (1.0, 1.5)]
    + [2.0**-LOW_EXPONENT]
)


#: Fixed histogram edges (float32, increasing): -max, -2^20 ... -2^-20, 2^-20 ... 2^20, +max.
HISTOGRAM_EDGES: np.ndarray = np.concatenate(
    [[-FLOAT32_MAX], -_POSITIVE[::-1], _POSITIVE, [FLOAT32_MAX]]
).astype(np.float32)


HISTOGRAM_EDGES.setflags(write=False)


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
