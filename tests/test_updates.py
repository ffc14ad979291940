"""Update-to-weight ratios: exact against numpy, written as scalars, and the learning-rate alerts.

The bounds are the defaults, (1e-5, 1e-1): on the tiny CNN with Adam, one step moves each
weight by about the learning rate, and the weights' RMS is about 0.1-0.3, so the ratio is
about 3-10x the learning rate: 10 gives ~30-100 (too high), 1e-3 gives ~3e-3-1e-2 (healthy).
What a small ratio means is `tests/test_verdicts.py`'s.
"""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

import actwatch
from actwatch.check.layers import resolve_layers, weight_sources
from actwatch.diagnose.updates import UpdateRatios

from .helpers import data, read_events, tiny_cnn

X, Y = data(32)


def weights(model: keras.Model, name: str) -> np.ndarray:
    """The layer's trainable weights (kernel, bias) as one vector."""
    layer = model.get_layer(name)
    return np.concatenate(
        [np.ravel(keras.ops.convert_to_numpy(v.value)) for v in layer.trainable_weights]
    )


def ratio(before: np.ndarray, after: np.ndarray) -> float:
    return float(np.linalg.norm(after - before) / np.linalg.norm(before))


def test_ratio_equals_numpy_over_one_train_on_batch() -> None:
    """`||W_after - W_before|| / ||W_before||` from weights read around one `train_on_batch`."""
    model = tiny_cnn(lr=1e-2)
    updates = UpdateRatios(resolve_layers(model, None))
    assert list(updates.layers) == ["conv1", "conv2"]  # pooling layers have no weights
    before = {name: weights(model, name) for name in updates.layers}
    updates.snapshot(0)
    model.train_on_batch(X[:16], Y[:16])
    ratios = updates.measure()
    assert not updates.pending
    for name, value in ratios.items():
        assert value == pytest.approx(ratio(before[name], weights(model, name)), rel=1e-5)
        assert 1e-4 < value < 1  # one Adam step at 1e-2 moved it


def test_huge_weights_still_get_a_ratio() -> None:
    """Weights a too-high rate blew up to 1e20 (their squares overflow float32) doubled by a
    step: the ratio is 1, and the weight RMS is right."""
    model = tiny_cnn()
    kernel = model.get_layer("conv1").kernel
    kernel.assign(np.full(kernel.shape, 1e20, dtype="float32"))
    updates = UpdateRatios(resolve_layers(model, None))
    updates.snapshot(0)
    kernel.assign(np.full(kernel.shape, 2e20, dtype="float32"))
    ratios = updates.measure()
    assert ratios["conv1"] == pytest.approx(1.0, rel=1e-5)
    size = updates.sizes["conv1"]  # the kernel's 108 values, and 4 zero biases
    assert updates.weight_rms["conv1"] == pytest.approx(1e20 * math.sqrt(108 / size), rel=1e-5)
    assert ratios["conv2"] == 0.0


def test_weights_no_longer_finite_are_listed_as_diverged(tmp_path: Path) -> None:
    """A layer whose weights were NaN at the check has no ratio but is listed in `diverged`,
    and a fit judges it an infinite step: "too high"."""
    model = tiny_cnn()
    kernel = model.get_layer("conv1").kernel
    kernel.assign(np.full(kernel.shape, np.nan, dtype="float32"))
    updates = UpdateRatios(resolve_layers(model, None))
    updates.snapshot(0)
    assert "conv1" not in updates.measure() and updates.diverged == ["conv1"]
    monitor = actwatch.ActivationMonitor(X[:2], tmp_path, images=False, layers=["conv1"])
    model.fit(X[:16], Y[:16], batch_size=16, epochs=1, verbose=0, callbacks=[monitor])
    [alert] = [a for a in monitor.alerts if a.kind == "learning_rate"]
    assert "too high (current: 0.001)" in alert.message
    assert "made the weights of 1 of 1 layers with weights NaN or Inf" in alert.message


def residual_net() -> keras.Model:
    """conv -> BN -> ReLU, then a residual block's end: conv -> BN -> Add(shortcut conv ->
    BN) -> ReLU; the default watches the two ReLUs only (the convs are linear)."""
    L = keras.layers
    inputs = keras.Input((16, 16, 3))
    a = L.ReLU(name="a_relu")(
        L.BatchNormalization(name="a_bn")(L.Conv2D(4, 3, name="a_conv")(inputs))
    )
    b = L.BatchNormalization(name="b_bn")(L.Conv2D(6, 1, name="b_conv")(a))
    s = L.BatchNormalization(name="s_bn")(L.Conv2D(6, 1, name="s_conv")(a))
    out = L.ReLU(name="out")(L.Add(name="add")([b, s]))
    logits = L.Dense(3)(L.GlobalAveragePooling2D()(out))
    model = keras.Model(inputs, logits)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def test_an_activation_gets_the_ratio_of_the_linear_convs_that_make_it() -> None:
    """With conv -> BN -> ReLU watched as its ReLU only, the ReLU's ratio is its conv's (kernel
    and bias); after a residual addition, that of both convs into it, as one vector."""
    model = residual_net()
    watched = resolve_layers(model, None)
    assert [w.path for w in watched] == ["a_relu", "out"]
    updates = UpdateRatios(watched, weight_sources(model, watched))
    assert {p: [layer.name for layer in ls] for p, ls in updates.layers.items()} == {
        "a_relu": ["a_conv"],
        "out": ["b_conv", "s_conv"],
    }
    assert UpdateRatios(watched).layers == {}  # without sources: no weights of their own
    sources = {"a_relu": ["a_conv"], "out": ["b_conv", "s_conv"]}
    before = {p: np.concatenate([weights(model, n) for n in ns]) for p, ns in sources.items()}
    x = np.random.default_rng(0).random((8, 16, 16, 3), dtype=np.float32)
    updates.snapshot(0)
    model.train_on_batch(x, np.arange(8) % 3)
    ratios = updates.measure()
    for path, names in sources.items():
        after = np.concatenate([weights(model, n) for n in names])
        assert ratios[path] == pytest.approx(ratio(before[path], after), rel=1e-5)
        assert 1e-4 < ratios[path] < 1


class TimingsAtBatch(keras.callbacks.Callback):  # type: ignore[misc]
    """Copies the monitor's timings at the end of each batch (after its batch-begin hook)."""

    def __init__(self, monitor: actwatch.ActivationMonitor) -> None:
        super().__init__()
        self.monitor = monitor
        self.seen: list[dict[str, float]] = []

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.seen.append(dict(self.monitor.timings))


def test_the_comparison_is_timed_in_the_checks_timings(tmp_path: Path) -> None:
    """`monitor.timings["update_ratio"]`: the comparison at the batch after a check, added to
    that check's timings (benchmarks/scale.py reports it)."""
    model = residual_net()
    x = np.random.default_rng(2).random((16, 16, 16, 3), dtype=np.float32)
    monitor = actwatch.ActivationMonitor(x[:2], tmp_path, images=False)
    timings = TimingsAtBatch(monitor)
    model.fit(x, np.arange(16) % 3, batch_size=8, epochs=1, verbose=0, callbacks=[monitor, timings])
    # The check before training copies the weights; batch 0 trains; batch 1's hook compares.
    first, second = timings.seen
    assert first["blocking"] > 0 and "update_ratio" not in first
    assert second == {**first, "update_ratio": second["update_ratio"]}
    assert 0 < second["update_ratio"] < 60
    assert set(monitor.last_update_ratios) == {"a_relu", "out"}
    assert "update_ratio" not in monitor.timings  # the epoch-end check's: nothing after it


def test_the_weight_copy_is_capped_in_network_order(caplog: pytest.LogCaptureFixture) -> None:
    """Beyond `max_bytes` of weights, later layers get no ratio, said once in the log."""
    model = residual_net()
    watched = resolve_layers(model, None)
    sources = weight_sources(model, watched)
    full = UpdateRatios(watched, sources)
    # float32: a_conv 3x3x3x4 + 4, b_conv and s_conv 1x1x4x6 + 6 each
    assert full.bytes == 4 * (3 * 3 * 3 * 4 + 4 + 2 * (4 * 6 + 6))
    with caplog.at_level("INFO", logger="actwatch"):
        capped = UpdateRatios(watched, sources, max_bytes=full.bytes - 1)
    assert list(capped.layers) == ["a_relu"] and capped.left_out == ["out"]
    assert "get no ratio (first: 'out')" in caplog.text
    capped.snapshot(0)
    model.train_on_batch(np.ones((2, 16, 16, 3), "float32"), np.arange(2))
    assert set(capped.measure()) == {"a_relu"}


def test_the_monitor_writes_the_ratio_of_a_watched_relu(tmp_path: Path) -> None:
    """In a fit with default layers, `update_ratio/{relu}` is written from its conv."""
    model = residual_net()
    x = np.random.default_rng(1).random((16, 16, 16, 3), dtype=np.float32)
    monitor = actwatch.ActivationMonitor(x[:2], tmp_path, images=False)
    model.fit(x, np.arange(16) % 3, batch_size=16, epochs=1, verbose=0, callbacks=[monitor])
    assert set(monitor.last_update_ratios) == {"a_relu", "out"}
    events = read_events(tmp_path)
    assert [s for s, _ in events.scalars["update_ratio/out"]] == [1]


def test_ratio_in_fit_is_the_first_training_step(tmp_path: Path) -> None:
    """A fit of one batch: the ratio measured after the check before training is that of the
    weights before and after `fit`, and is written at step 1 (scalars per layer and network)."""
    model = tiny_cnn(lr=1e-2)
    before = {name: weights(model, name) for name in ("conv1", "conv2")}
    monitor = actwatch.ActivationMonitor(X[:2], tmp_path, images=False)
    model.fit(X[:16], Y[:16], batch_size=16, epochs=1, verbose=0, callbacks=[monitor])
    for name, value in monitor.last_update_ratios.items():
        assert value == pytest.approx(ratio(before[name], weights(model, name)), rel=1e-5)
    events = read_events(tmp_path)
    assert [s for s, _ in events.scalars["update_ratio/conv1"]] == [1]
    assert events.scalars["update_ratio/conv2"][0][1] == pytest.approx(
        monitor.last_update_ratios["conv2"], rel=1e-6
    )
    median = float(np.median(list(monitor.last_update_ratios.values())))
    assert events.scalars["network/update_ratio"] == [(1, pytest.approx(median, rel=1e-6))]
    assert "update_ratio/pool1" not in events.scalars


class Weights(keras.callbacks.Callback):  # type: ignore[misc]
    """Records conv2's weights before training and at every batch end."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[np.ndarray] = []

    def on_train_begin(self, logs: Any = None) -> None:
        self.seen.append(weights(self.model, "conv2"))

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if hasattr(self.model, "jax_state_sync"):
            self.model.jax_state_sync()
        self.seen.append(weights(self.model, "conv2"))


def test_ratio_with_a_check_every_batch(tmp_path: Path) -> None:
    """every_n_batches=1: each check measures the step since the one before, exactly (on JAX
    too, where the weights live outside the model mid-epoch)."""
    model = tiny_cnn(lr=1e-2)
    recorder = Weights()
    monitor = actwatch.ActivationMonitor(X[:2], tmp_path, images=False, every_n_batches=1)
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[recorder, monitor])
    written = read_events(tmp_path).scalars["update_ratio/conv2"]
    assert [s for s, _ in written] == [1, 2, 3, 4]
    w = recorder.seen
    for (step, value), (old, new) in zip(written, itertools.pairwise(w), strict=True):
        assert value == pytest.approx(ratio(old, new), rel=1e-5), step


def test_a_high_learning_rate_alert(tmp_path: Path) -> None:
    """Adam at 10 raises the "too high" alert at the step after the first check, passed to
    `on_alert` and written as alert text; the advice moves the rate 10x, not 5000x."""
    model = tiny_cnn(lr=10.0)
    seen: list[actwatch.Alert] = []
    monitor = actwatch.ActivationMonitor(X[:2], tmp_path, images=False, on_alert=seen.append)
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0, callbacks=[monitor])
    found = [a for a in monitor.alerts if a.kind == "learning_rate"]
    assert len(found) == 1 and found[0] in seen
    alert = found[0]
    assert (alert.step, alert.count, alert.total, alert.learning_rate) == (
        1,
        2,
        2,
        pytest.approx(10.0),
    )
    for words in ("above 0.1", "too high (current: 10)", "lower it 10x, to about 1 "):
        assert words in alert.message
    texts = read_events(tmp_path).texts["alerts"]
    assert texts[0][0] == 1 and "**learning_rate**" in texts[0][1]


def test_healthy_learning_rate_raises_no_learning_rate_alert(tmp_path: Path) -> None:
    """Adam at 1e-3 stays within the bounds."""
    model = tiny_cnn(lr=1e-3)
    monitor = actwatch.ActivationMonitor(X[:2], tmp_path, images=False)
    model.fit(X, Y, batch_size=16, epochs=2, verbose=0, callbacks=[monitor])
    assert all(1e-5 < r < 1e-1 for r in monitor.last_update_ratios.values())
    assert not [a for a in monitor.alerts if a.kind == "learning_rate"]


@pytest.mark.parametrize("bounds", [(0.1, 1e-5), (-1, 1), "low", (1e-5,)])
def test_bad_bounds(tmp_path: Path, bounds: Any) -> None:
    """Bounds must be (low, high) with 0 <= low < high; the message says so."""
    with pytest.raises(ValueError, match=r"update_ratio_bounds.*0 <= low < high.*Received"):
        actwatch.ActivationMonitor(X[:2], tmp_path, update_ratio_bounds=bounds)


def test_no_bounds_and_no_labels_measure_nothing(tmp_path: Path) -> None:
    """`update_ratio_bounds=None`: no snapshot, no ratio; `stats_data` without labels: no
    backward pass, no gradient figure."""
    model = tiny_cnn()
    monitor = actwatch.ActivationMonitor(
        X[:2], tmp_path, images=False, update_ratio_bounds=None, stats_data=X
    )
    model.fit(X[:16], Y[:16], batch_size=16, epochs=1, verbose=0, callbacks=[monitor])
    assert monitor.last_update_ratios == {} and monitor.last_gradients == {}
    written = read_events(tmp_path).scalars
    assert not [t for t in written if "update_ratio" in t or t.startswith("gradient")]


def test_gradient_accumulation_waits_for_the_applied_update(tmp_path: Path) -> None:
    """With `gradient_accumulation_steps=2` the first step after the check applies nothing:
    the ratio waits for the step that applies the update (step 2), equals numpy's over both,
    and no "too low" alert comes from the step that did not move the weights."""
    model = tiny_cnn()
    model.compile(
        keras.optimizers.Adam(1e-3, gradient_accumulation_steps=2),
        "sparse_categorical_crossentropy",
    )
    recorder = Weights()
    monitor = actwatch.ActivationMonitor(X[:2], tmp_path, images=False)
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[recorder, monitor])
    written = read_events(tmp_path).scalars["update_ratio/conv2"]
    assert [s for s, _ in written] == [2]
    assert written[0][1] == pytest.approx(ratio(recorder.seen[0], recorder.seen[2]), rel=1e-5)
    assert 1e-5 < written[0][1] < 1e-1
    assert not [a for a in monitor.alerts if a.kind == "learning_rate"]


def test_frozen_and_zero_initialised_layers_raise_no_alert(tmp_path: Path) -> None:
    """A frozen layer (trainable=False) is not measured, so it is never "too low"; a layer
    whose weights are all zero at the snapshot (a zero-initialised head) has no ratio, which
    would be infinite, so it is never "too high"."""
    model = tiny_cnn()
    model.get_layer("conv1").trainable = False
    for v in model.get_layer("head").weights:
        v.assign(np.zeros(v.shape, dtype="float32"))
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    # conv2 is left out: with a zero head it gets no gradient in that step, truly stuck.
    monitor = actwatch.ActivationMonitor(X[:2], tmp_path, images=False, layers=["conv1", "head"])
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0, callbacks=[monitor])
    assert monitor.last_update_ratios == {}
    assert not [a for a in monitor.alerts if a.kind == "learning_rate"]
    written = read_events(tmp_path).scalars
    assert "update_ratio/conv1" not in written and "update_ratio/head" not in written


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's warning")
def test_five_monitors_compile_the_comparison_once_per_structure(tmp_path: Path) -> None:
    """Five monitors in one process, on models of two structures: no retracing warning from
    TensorFlow for the comparison (issue 19: a `tf.function` per monitor warned at the fifth)."""
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    tf_logger = logging.getLogger("tensorflow")
    tf_logger.addHandler(handler)
    try:
        for i in range(5):
            model = tiny_cnn(filters=(4, 8 + i % 2))
            monitor = actwatch.ActivationMonitor(X[:2], tmp_path / str(i), images=False)
            model.fit(X[:16], Y[:16], batch_size=16, epochs=1, verbose=0, callbacks=[monitor])
            assert set(monitor.last_update_ratios) == {"conv1", "conv2"}
    finally:
        tf_logger.removeHandler(handler)
    retraced = [r.getMessage() for r in seen if "retracing" in r.getMessage()]
    assert not [m for m in retraced if "sums" in m], retraced
