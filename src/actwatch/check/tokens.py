"""The residual stream of a transformer block, per token, and the pictures of tokens.

With `x[n, t, d]` a block's output (sample n, token t, channel d), over the statistics
samples:

- `token_norm_ratio`: the largest token L2 norm `||x[n, t]||` over the median one, all
  samples' tokens together: the high-norm tokens of Darcet, Oquab, Mairal, Bojanowski
  ("Vision Transformers Need Registers", ICLR 2024), about 10x in large ViTs;
- `token_similarity`: mean over samples of the mean pairwise cosine between a sample's
  tokens, `(||sum_t u_t||^2 - T) / (T (T - 1))` with `u_t = x_t / ||x_t||`: rank collapse,
  tokens becoming alike (Dong, Cordonnier, Loukas, "Attention is not all you need: pure
  attention loses rank doubly exponentially with depth", ICML 2021);
- `kurtosis`: of the per-channel RMS over tokens `s_d = sqrt(mean_{n,t} x^2)`, as
  `mean(s^4) / mean(s^2)^2` (He, Noci, Paliotta, Schlag, Hofmann, "Understanding and
  Minimising Outlier Features in Transformer Training", NeurIPS 2024): 1 when every channel
  is alike, large with outlier features;
- `massive_activation`: 1.0 when the largest |x| is above 100 and above 1,000 times the
  median |x| (Sun, Chen, Kolter, Liu, "Massive Activations in Large Language Models", COLM
  2024), else 0.0; `TokenFigures.where` says at which (token, channel) it sits.

Padded tokens (`padding.validity_rule`) are left out of every figure: only the real
tokens' norms, pairs, channels and values count.

Every value is divided by the block's largest |x| on the device first, so no square
overflows float32; the host multiplies back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from keras import ops

from actwatch.check.signals import MEDIAN_SAMPLE, sample_values

__all__ = [
    "MASSIVE_ABSOLUTE",
    "MASSIVE_RATIO",
    "TokenFigures",
    "TokenPicture",
    "reduce_tokens",
    "split_key",
    "token_figures",
    "token_norms",
]

#: Sun et al. 2024's rule: |a| above this ...
MASSIVE_ABSOLUTE = 100.0
#: ... and above this many times the median |a|.
MASSIVE_RATIO = 1000.0


def _peak(x: Any) -> Any:
    peak = ops.max(ops.abs(x))
    return ops.where(ops.logical_and(peak > 0.0, ops.isfinite(peak)), peak, ops.ones_like(peak))


def reduce_tokens(x: Any, valid: Any = None) -> dict[str, Any]:
    """One block's output `x` `(N, T, D)` float32 (the statistics samples), on the device:
    per-token norms `(N, T)` and the channels' mean squares `(D,)` in units of `scale` (its
    square), the mean pairwise cosine per sample `(N,)` and its tokens counted `(N,)`, where
    the largest |x| is (a flat index) and a strided sample of |x| for the median (NaN at
    padding). `valid` `(N, T)` bool: the real tokens (None: all); the others count nowhere
    (their norms come back as NaN)."""
    n, t, _ = (int(d) for d in x.shape)
    real = None if valid is None else ops.cast(valid, "bool")
    if real is not None:  # padding: zeros (no norm, no pair, no peak), counted nowhere
        x = ops.where(ops.expand_dims(real, -1), x, ops.zeros_like(x))
    scale = _peak(x)
    xs = ops.where(ops.isfinite(x), x / scale, ops.zeros_like(x))
    norms = ops.sqrt(ops.sum(ops.square(xs), axis=-1))  # (N, T)
    live = norms > 0.0
    units = xs / ops.expand_dims(ops.where(live, norms, ops.ones_like(norms)), -1)
    summed = ops.sum(units, axis=1)  # (N, D)
    count = ops.sum(ops.cast(live, "float32"), axis=1)
    pairs = ops.maximum(count * (count - 1.0), 1.0)
    cosine = (ops.sum(ops.square(summed), axis=-1) - count) / pairs
    absolute = ops.abs(xs)
    tokens = float(n * t) if real is None else ops.maximum(ops.sum(ops.cast(real, "float32")), 1.0)
    if real is not None:  # NaN: read as padding by `token_figures`
        norms = ops.where(real, norms, ops.full_like(norms, float("nan")))
        sampled = ops.where(ops.expand_dims(real, -1), absolute, ops.full_like(xs, float("nan")))
    return {
        "scale": scale,
        "norms": norms,
        "channel_ms": ops.sum(ops.square(xs), axis=(0, 1)) / tokens,
        "cosine": cosine,
        "count": count,
        "argmax": ops.cast(ops.argmax(ops.reshape(absolute, (-1,))), "int32"),
        "abs_sample": sample_values(absolute if real is None else sampled, MEDIAN_SAMPLE),
    }


def token_norms(x: Any) -> Any:
    """Per-token L2 norms `(P, T)` of the probes' block output `(P, T, D)` (device)."""
    scale = _peak(x)
    xs = ops.where(ops.isfinite(x), x / scale, ops.zeros_like(x))
    return ops.sqrt(ops.sum(ops.square(xs), axis=-1)) * scale


@dataclass(frozen=True)
class TokenFigures:
    """One block's token figures at one check (host)."""

    token_norm_ratio: float
    token_similarity: float
    kurtosis: float
    massive: bool
    #: `(sample, token, channel)` of the largest |x|, and that |x|.
    where: tuple[int, int, int]
    peak: float
    median: float

    def scalars(self) -> dict[str, float]:
        return {
            "token_norm_ratio": self.token_norm_ratio,
            "token_similarity": self.token_similarity,
            "kurtosis": self.kurtosis,
            "massive_activation": 1.0 if self.massive else 0.0,
        }


def token_figures(device: Mapping[str, Any], shape: tuple[int, int, int]) -> TokenFigures:
    """`reduce_tokens`' arrays (numpy) -> `TokenFigures`; `shape` is `(N, T, D)`."""
    scale = float(device["scale"])
    norms = np.asarray(device["norms"], dtype=np.float64).ravel()
    norms = norms[np.isfinite(norms)]  # NaN: padding
    median_norm = float(np.median(norms)) if norms.size else 0.0
    ratio = float(norms.max()) / median_norm if median_norm > 0.0 else 0.0
    ms = np.asarray(device["channel_ms"], dtype=np.float64)
    second = float(np.mean(ms)) if ms.size else 0.0
    kurtosis = float(np.mean(ms**2)) / second**2 if second > 0.0 else 0.0
    _, t, d = shape
    index = int(device["argmax"])
    where = (index // (t * d), (index // d) % t, index % d)
    sample = np.asarray(device["abs_sample"], dtype=np.float64)
    sample = sample[np.isfinite(sample)]
    median = float(np.median(sample)) * scale if sample.size else 0.0
    peak = scale if norms.size and float(norms.max()) > 0.0 else 0.0
    # No finite value in the sample (every sampled token padding): no median to compare to,
    # so no claim (a median of 0 would call any |x| > 100 massive).
    massive = sample.size > 0 and peak > MASSIVE_ABSOLUTE and peak > MASSIVE_RATIO * median
    return TokenFigures(
        token_norm_ratio=ratio,
        token_similarity=_similarity(device),
        kurtosis=kurtosis,
        massive=bool(massive),
        where=where,
        peak=peak,
        median=median,
    )


def _similarity(device: Mapping[str, Any]) -> float:
    """Mean over the samples with two tokens or more of their mean pairwise cosine."""
    cosine = np.asarray(device["cosine"], dtype=np.float64).ravel()
    count = np.asarray(device.get("count", np.full(cosine.shape, 2.0)), dtype=np.float64)
    kept = cosine[count.ravel() >= 2.0]
    return float(kept.mean()) if kept.size else 0.0


@dataclass(frozen=True)
class TokenPicture:
    """What "pictures" draws of one transformer layer at one check (see
    /tmp/aw/interface-transformers.md): the probes' attention or token norms.

    `values`: for `kind="tokens"` `(probes, tokens)` token L2 norms; for `kind="attention"`
    `(probes, heads, tokens)` (`query` "class": the first query's row; "mean": the mean over
    queries) or `(probes, heads, q, k)` (`query` "all", text, at most `MAX_TEXT_TOKENS`).
    `prefix` leading tokens are class/register tokens; the others lie on `grid` (vision) or
    are text tokens (`grid` None, `token_ids` the probes' ids when known).
    """

    kind: Literal["attention", "tokens"]
    values: np.ndarray
    query: str
    prefix: int
    grid: tuple[int, int] | None
    token_ids: np.ndarray | None = None


def split_key(key: str) -> tuple[str, str]:
    """`(kind, path)` of a `CheckResult.tokens` key `"{kind}/{path}"`."""
    kind, _, path = key.partition("/")
    return kind, path
