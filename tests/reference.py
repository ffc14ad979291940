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
    """Per filter: max over samples and positions (finite values) <= 0."""
    n, p, c = a.shape
    out = np.zeros(c, dtype=bool)
    for k in range(c):
        values = a[:, :, k][np.isfinite(a[:, :, k])]
        out[k] = values.size == 0 or values.max() <= 0
    return out


def dormant(a: np.ndarray, tau: float) -> np.ndarray:
    n, p, c = a.shape
    scores = np.zeros(c)
    for k in range(c):
        values = a[:, :, k][np.isfinite(a[:, :, k])]
        scores[k] = np.abs(values).mean() if values.size else 0.0
    layer = scores.mean()
    if layer <= 0:
        return np.ones(c, dtype=bool)
    return scores / layer <= tau


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
