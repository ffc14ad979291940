"""What the benchmark scripts share, and with them `tests/test_sharpness.py`.

- `timed`: a call's first time (with its compilation) and the median of later ones;
- `teacher_regression`: the edge-of-stability workload (Cohen et al., ICLR 2021), a
  16-64-64-4 tanh MLP regression on a random teacher's targets, Glorot weights drawn with
  numpy so that every backend starts alike, compiled with full-batch SGD.

Keras is imported inside the functions: the scripts choose the backend first. The test
imports this file by its path (`tests/test_sharpness.py`), so it needs nothing from the
benchmark scripts.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

#: The teacher MLP's layer sizes: 16 inputs, two tanh layers of 64, 4 outputs.
SIZES = (16, 64, 64, 4)


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(first call, median of `repeats` later calls), in ms."""
    start = time.perf_counter()
    fn()
    first = (time.perf_counter() - start) * 1000
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return first, statistics.median(times)


def glorot(rng: np.random.Generator) -> list[np.ndarray]:
    """Glorot-uniform kernels and zero biases of a SIZES MLP (the same on every backend)."""
    weights = []
    for fan_in, fan_out in itertools.pairwise(SIZES):
        limit = np.sqrt(6 / (fan_in + fan_out))
        weights += [
            rng.uniform(-limit, limit, (fan_in, fan_out)).astype("float32"),
            np.zeros(fan_out, "float32"),
        ]
    return weights


def teacher(weights: list[np.ndarray], x: np.ndarray) -> np.ndarray:
    """The SIZES tanh MLP of `weights` on `x`, in numpy."""
    h = np.tanh(x @ weights[0] + weights[1])
    h = np.tanh(h @ weights[2] + weights[3])
    return np.asarray(h @ weights[4] + weights[5])


def teacher_regression(lr: float, samples: int = 512, seed: int = 0) -> tuple[Any, Any, Any]:
    """`(model, x, y)`: `samples` normal inputs, targets 3 x a random teacher's outputs, and
    a fresh student MLP (its own Glorot draw) compiled with `SGD(lr)` and mean squared error:
    one `fit` batch of all samples is a step of full-batch gradient descent."""
    import keras

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, SIZES[0])).astype("float32")
    y = (3 * teacher(glorot(rng), x)).astype("float32")
    inputs = keras.Input((SIZES[0],))
    h = keras.layers.Dense(SIZES[1], activation="tanh")(inputs)
    h = keras.layers.Dense(SIZES[2], activation="tanh")(h)
    model = keras.Model(inputs, keras.layers.Dense(SIZES[3])(h))
    model.set_weights(glorot(rng))
    model.compile(optimizer=keras.optimizers.SGD(lr), loss="mse")
    return model, x, y
