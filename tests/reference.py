"""Plain numpy reference implementations of actwatch's statistics, for the tests."""

from __future__ import annotations

import math

import numpy as np


def to_npc(a: np.ndarray, channel_axis: int = -1) -> np.ndarray:
    """Any layer output -> (N, P, C) float64, channels last."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim > 2 and channel_axis == 1:
        a = np.moveaxis(a, 1, -1)
    return a.reshape(a.shape[0], -1, a.shape[-1])


def zero_fraction(a: np.ndarray) -> float:
    finite = np.isfinite(a)
    return float(((a <= 0) & finite).sum() / max(finite.sum(), 1))


def mean(a: np.ndarray) -> float:
    finite = np.isfinite(a)
    return float(np.where(finite, a, 0).sum() / max(finite.sum(), 1))


def nonfinite(a: np.ndarray) -> int:
    return int((~np.isfinite(a)).sum())


def dead(a: np.ndarray) -> np.ndarray:
    """Per filter: it has finite values and their max over samples and positions is <= 0."""
    c = a.shape[-1]
    out = np.zeros(c, dtype=bool)
    for k in range(c):
        values = a[:, :, k][np.isfinite(a[:, :, k])]
        out[k] = values.size > 0 and values.max() <= 0
    return out


def dormant_scores(a: np.ndarray) -> np.ndarray:
    """Per filter: mean |a| over its finite values; NaN for a filter with none."""
    c = a.shape[-1]
    scores = np.full(c, np.nan)
    for k in range(c):
        values = a[:, :, k][np.isfinite(a[:, :, k])]
        if values.size:
            scores[k] = np.abs(values).mean()
    return scores


def dormant(a: np.ndarray, tau: float) -> np.ndarray:
    """Per filter with finite values: score / mean score of those filters <= tau."""
    scores = dormant_scores(a)
    scored = ~np.isnan(scores)
    layer = scores[scored].mean() if scored.any() else 0.0
    if layer <= 0:
        return scored
    return scored & (np.where(scored, scores, 0.0) / layer <= tau)


def nonnegative(a: np.ndarray) -> bool:
    """The layer has finite values and none is below zero."""
    finite = a[np.isfinite(a)]
    return bool(finite.size > 0 and finite.min() >= 0)


def hoyer_vector(x: np.ndarray) -> float | None:
    """Hoyer sparsity of one vector, None when it is all zero."""
    x = np.where(np.isfinite(x), x, 0.0)
    l2 = math.sqrt(float((x**2).sum()))
    if l2 == 0:
        return None
    root = math.sqrt(x.size)
    return (root - float(np.abs(x).sum()) / l2) / (root - 1)


def hoyer(a: np.ndarray) -> float:
    n, p, c = a.shape
    if p > 1:
        vectors = [a[i, :, k] for i in range(n) for k in range(c)]
    elif c > 1:
        vectors = [a[i, 0, :] for i in range(n)]
    else:
        return 0.0
    values = [h for h in (hoyer_vector(v) for v in vectors) if h is not None]
    return float(np.mean(values)) if values else 0.0


def normalize_maps(x: np.ndarray) -> np.ndarray:
    """uint8 codes of `(N, H, W, F)` maps (or `(N, F)` Dense outputs), as `grids` documents.

    Each map is scaled over its positions from its finite minimum (0) to its finite maximum
    (254); a constant map is 0 when its value is <= 0 and 127 otherwise; non-finite is 255.
    """
    x = np.asarray(x, dtype=np.float64)
    axes = (1, 2) if x.ndim == 4 else (1,)
    finite = np.isfinite(x)
    lo = np.where(finite, x, np.inf).min(axis=axes, keepdims=True)
    hi = np.where(finite, x, -np.inf).max(axis=axes, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        spread = hi - lo
        varied = spread > 0
        scaled = (x - lo) / np.where(varied, spread, 1.0) * 254.0
    flat = np.where(hi > 0, 127.0, 0.0)
    value = np.where(varied, scaled, flat)
    value = np.where(finite, np.clip(np.round(value), 0, 254), 255)
    return value.astype(np.uint8)


# Signals (actwatch.check.signals) -----------------------------------------------------------------


def finite_values(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[np.isfinite(a)]


def histogram(a: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """numpy.histogram of the finite values over `edges` (float32 edges, compared in float64)."""
    counts, _ = np.histogram(finite_values(a), np.asarray(edges, dtype=np.float64))
    return counts


def rms(a: np.ndarray) -> float:
    values = finite_values(a)
    return math.sqrt(float((values**2).mean())) if values.size else 0.0


def channel_moments(a: np.ndarray) -> tuple[float, float]:
    """(mean over channels of the squared channel mean, mean over channels of the channel
    variance), each channel over its finite values; channels without any left out."""
    means, variances = [], []
    for k in range(a.shape[-1]):
        values = finite_values(a[:, :, k])
        if values.size:
            means.append(values.mean() ** 2)
            variances.append(values.var())
    if not means:
        return 0.0, 0.0
    return float(np.mean(means)), float(np.mean(variances))


def max_abs(a: np.ndarray) -> float:
    values = finite_values(a)
    return float(np.abs(values).max()) if values.size else 0.0


def sampled(a: np.ndarray, cap: int) -> np.ndarray:
    """At most `cap` values of the `(N, P, C)` array, flattened: all of them when they fit;
    else, when at least 64 whole positions fit (cap // C >= 64), positions (rows of C values)
    evenly strided from the first, the stride the first k >= ceil(N * P / (cap // C)) with
    gcd(k, P) == 1 (found by trying them in turn); else single values, the first
    k >= ceil(size / cap) with gcd(k, C) == 1."""
    a = np.asarray(a)
    n, p, c = a.shape
    if a.size <= cap:
        return a.reshape(-1)
    if cap // c >= 64:
        stride = -(-(n * p) // (cap // c))
        while stride > 1 and math.gcd(stride, p) > 1:
            stride += 1
        rows = [a[i // p, i % p, :] for i in range(0, n * p, stride)]
        picked = np.concatenate(rows)
    else:
        stride = -(-a.size // cap)
        while stride > 1 and math.gcd(stride, c) > 1:
            stride += 1
        picked = a.reshape(-1)[::stride]
    assert picked.size <= cap
    return picked


def outlier_ratio(a: np.ndarray, sample: int) -> float:
    """max |a| over the finite values / median |a| over the finite nonzero values of the
    `sampled` values; 0 when there is none."""
    picked = sampled(np.asarray(a, dtype=np.float64), sample)
    picked = np.abs(picked[np.isfinite(picked) & (picked != 0)])
    if picked.size == 0:
        return 0.0
    return max_abs(a) / float(np.median(picked))


def features(a: np.ndarray) -> np.ndarray:
    """(N, C): each channel's mean over its finite positions per sample (0 with none)."""
    a = np.asarray(a, dtype=np.float64)
    finite = np.isfinite(a)
    total = np.where(finite, a, 0.0).sum(axis=1)
    return total / np.maximum(finite.sum(axis=1), 1)


def ranks(a: np.ndarray, delta: float = 0.01) -> tuple[float, float]:
    """(effective rank, srank) of `features(a)` from numpy's SVD in float64; singular values
    with s^2 <= max(s)^2 * min(N, C) * eps(float32) count as 0."""
    f = features(a)
    s = np.linalg.svd(f, compute_uv=False)
    eps = float(np.finfo(np.float32).eps)
    s = np.where(s**2 > (s.max() ** 2 if s.size else 0) * min(f.shape) * eps, s, 0.0)
    total = s.sum()
    if total <= 0:
        return 0.0, 0.0
    q = s / total
    q = q[q > 0]
    erank = math.exp(-float((q * np.log(q)).sum()))
    cumulative = np.cumsum(np.sort(s)[::-1]) / total
    srank = int(np.argmax(cumulative >= 1 - delta)) + 1
    return erank, float(srank)


def topk(a: np.ndarray, k: int, filters: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, positions) `(F, k)`: per filter the k samples with the highest finite peak
    over positions (ties: lower sample first), and the first position of each peak."""
    a = np.asarray(a, dtype=np.float64)[..., :filters]
    masked = np.where(np.isfinite(a), a, -np.inf)
    peaks = masked.max(axis=1)  # (N, F)
    where = masked.argmax(axis=1)
    k = min(k, a.shape[0])
    indices = np.stack([np.argsort(-peaks[:, f], kind="stable")[:k] for f in range(a.shape[-1])])
    positions = np.take_along_axis(where.T, indices, axis=1)
    return indices, positions
