"""The check's cheaper paths (benchmarks/RESULTS.md, "Fast on every model" on PyTorch and
TensorFlow) give the figures of an independent numpy computation: every layer's histogram from
one computation over all layers' values, the statistics of a non-negative layer (its sum of
|a| taken as its sum: read on PyTorch, known from the layer everywhere) and one whose values
are all finite but huge."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from actwatch.check import reductions
from actwatch.check.kinds import nonnegative
from actwatch.check.signals import histograms
from actwatch.check.stats import reduce_layer
from actwatch.events.histograms import HISTOGRAM_EDGES

from . import reference as ref


def test_histograms_of_several_layers_at_once() -> None:
    """Layers of different sizes, with NaN, +-Inf, -0.0 and values on the edges, counted in
    one call: each layer's counts are numpy's of its own finite values."""
    rng = np.random.default_rng(3)
    edges = HISTOGRAM_EDGES[1:-1].astype(np.float32)
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 3e38, -3e38], np.float32)
    layers = [
        np.concatenate([edges, -edges, special]),
        rng.standard_normal(1000).astype(np.float32) * 1e3,
        np.abs(rng.standard_normal(17)).astype(np.float32),
        -np.concatenate([np.nextafter(edges, np.float32(np.inf)), special]),
    ]
    counts = ops.convert_to_numpy(histograms([ops.convert_to_tensor(a) for a in layers]))
    assert counts.shape == (len(layers), HISTOGRAM_EDGES.size - 1)
    for got, a in zip(counts, layers, strict=True):
        np.testing.assert_array_equal(got, ref.histogram(a, HISTOGRAM_EDGES))


def _reduced(a: np.ndarray, nonnegative: bool = False) -> dict[str, np.ndarray]:
    out = reduce_layer(ops.convert_to_tensor(a), "fast", nonnegative=nonnegative)
    return {k: np.asarray(keras.ops.convert_to_numpy(v)) for k, v in out.items()}


def test_nonnegative_and_signed_layers_equal_numpy() -> None:
    """A ReLU-like layer (exact zeros, -0.0 among them) and a signed one: zero fraction, mean,
    per-filter mean |a| and maxima equal numpy's; both are `ok` (the fast path stands)."""
    rng = np.random.default_rng(4)
    signed = rng.standard_normal((3, 50, 6)).astype(np.float32)
    relu = np.maximum(signed, 0.0)
    relu[0, 0, 0] = -0.0
    for a, known in ((relu, False), (relu, True), (signed, False)):
        r = _reduced(a, known)  # known non-negative: its sum of |a| taken as its sum
        assert bool(r["ok"])
        np.testing.assert_allclose(r["zero_fraction"], np.mean(a <= 0.0), rtol=1e-6)
        np.testing.assert_allclose(r["mean"], a.mean(), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(r["filter_mean_abs"], np.abs(a).mean(axis=(0, 1)), rtol=1e-5)
        np.testing.assert_array_equal(r["filter_max"], a.max(axis=(0, 1)))
        np.testing.assert_allclose(r["hoyer"], ref.hoyer(a), rtol=1e-5)


def test_a_known_nonnegative_layer_with_nan_takes_the_careful_path() -> None:
    """A NaN in a ReLU layer (`relu(NaN)` is NaN): its sum, taken for its sum of |a|, is NaN,
    so the fast path is not `ok` and the check is redone carefully."""
    a = np.maximum(np.random.default_rng(6).standard_normal((2, 9, 3)), 0.0).astype(np.float32)
    a[1, 4, 2] = np.nan
    assert not bool(_reduced(a, True)["ok"])


def test_positives_past_float32_exact_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-negative layer's positives are per-map sums of sign(a) in float32, exact below
    `EXACT_POSITIONS` positions; with more, the comparison's count (the limit lowered here so
    the fallback runs on a small layer): both equal numpy's count."""
    a = np.maximum(np.random.default_rng(7).standard_normal((3, 40, 5)), 0.0).astype(np.float32)
    expected = int(np.count_nonzero(a > 0))
    assert int(ops.convert_to_numpy(reductions.positives(ops.convert_to_tensor(a), True))) == (
        expected
    )
    monkeypatch.setattr(reductions, "EXACT_POSITIONS", 40)  # 40 positions: not below it
    assert int(ops.convert_to_numpy(reductions.positives(ops.convert_to_tensor(a), True))) == (
        expected
    )


def test_the_layers_that_cannot_be_negative() -> None:
    """`kinds.nonnegative`: what tells the statistics a layer's sum of |a| is its sum. Keras'
    own ReLU-like layers and activations only; a slope, a negative threshold, a function
    given other arguments or a subclass (which may change the output) are not trusted; nor a
    negative threshold or a slope set after Keras checked them."""
    layers = keras.layers
    yes = [
        layers.ReLU(),
        layers.ReLU(max_value=6.0),
        layers.ReLU(threshold=0.5),
        layers.Activation("relu"),
        layers.Activation("relu6"),
        layers.Activation("sigmoid"),
        layers.Activation("softmax"),
        layers.Conv2D(4, 3, activation="relu"),
        layers.DepthwiseConv2D(3, activation="relu6"),
        layers.Dense(4, activation="softplus"),
    ]
    no = [
        layers.ReLU(negative_slope=0.1),
        layers.LeakyReLU(),
        layers.Activation("gelu"),
        layers.Activation("silu"),
        layers.Activation(lambda x: keras.activations.relu(x, negative_slope=0.2)),
        layers.Conv2D(4, 3),
        layers.Dense(4, activation="tanh"),
        layers.BatchNormalization(),
        _ShiftedReLU(),
    ]
    assert [nonnegative(layer) for layer in yes] == [True] * len(yes)
    assert [nonnegative(layer) for layer in no] == [False] * len(no)
    changed = layers.ReLU()
    changed.threshold = -1.0  # set after Keras checked it
    sloped = layers.ReLU()
    sloped.negative_slope = 0.2
    assert not nonnegative(changed) and not nonnegative(sloped)


class _ShiftedReLU(keras.layers.Activation):
    """An Activation("relu") subclass whose output goes below zero."""

    def __init__(self) -> None:
        super().__init__("relu")

    def call(self, inputs: object) -> object:
        return super().call(inputs) - 1.0


def test_fast_path_refuses_what_it_cannot_sum() -> None:
    """A NaN, an Inf, or finite values whose squares overflow float32: not `ok` (the careful
    path redoes the check); huge values whose squares fit stay `ok`."""
    base = np.ones((2, 4, 3), np.float32)
    for value, ok in [(np.nan, False), (np.inf, False), (-np.inf, False), (3e19, False)]:
        a = base.copy()
        a[1, 2, 1] = value
        assert bool(_reduced(a)["ok"]) is ok, value
    assert bool(_reduced(base * 1e18)["ok"])
