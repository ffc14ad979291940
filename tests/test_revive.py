"""revive="redo": dead filters re-initialised with the output unchanged, alive at the next
check; optimizer slots reset; unsupported graphs and bad values rejected before training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

import actwatch
from actwatch.layers import resolve_layers
from actwatch.revive import Reviver, plan

from .helpers import data, read_events

X, Y = data(32)


def flatten_cnn(lr: float = 1e-7) -> keras.Model:
    """conv1-pool1-conv2-pool2-flatten-dense, Adam; conv1's filter 0 and conv2's filters
    0-2 dead (bias -100), trainable: with a tiny learning rate they cannot recover alone."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(name="pool2")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy")
    for name, dead in (("conv1", [0]), ("conv2", [0, 1, 2])):
        bias = model.get_layer(name).bias
        values = keras.ops.convert_to_numpy(bias).copy()
        values[dead] = -100.0
        bias.assign(values)
    return model


class Predict(keras.callbacks.Callback):  # type: ignore[misc]
    """Records the model's predictions on X when the first epoch begins."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[np.ndarray] = []

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        if epoch == 0:
            self.seen.append(keras.ops.convert_to_numpy(self.model(X, training=False)))


def test_redo_keeps_the_output_and_revives(tmp_path: Path) -> None:
    """At the check before training, the 4 dead filters are re-initialised: predictions just
    before and just after are equal, the revival is an alert, a text and a scalar, and at the
    next check the filters are alive."""
    model = flatten_cnn()
    before, after = Predict(), Predict()
    monitor = actwatch.ActivationMonitor(X[:2], tmp_path, stats_data=X, images=False, revive="redo")
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0, callbacks=[before, monitor, after])
    np.testing.assert_allclose(after.seen[0], before.seen[0], rtol=1e-5, atol=1e-6)
    revived = [(a.layer, a.filters, a.step) for a in monitor.alerts if a.kind == "revived"]
    assert revived == [("conv1", (0,), 0), ("conv2", (0, 1, 2), 0)]
    assert monitor.last_stats["conv1"].dead_count == 0
    assert monitor.last_stats["conv2"].dead_count == 0
    events = read_events(tmp_path)
    assert events.scalars["revived_filters/conv2"] == [(0, 3.0)]
    assert [v for _, v in events.scalars["network/revived_filters"]] == [4.0, 4.0]
    assert "**revived**" in events.texts["alerts"][0][1]


def test_redo_resets_weights_and_optimizer_slots() -> None:
    """After a training step (Adam's slots non-zero), reviving conv2's filter 1: fresh kernel
    column, zero bias, zero rows of the Dense kernel fed through Flatten (every 8th from 1),
    and those entries of Adam's momentums and velocities zero; the rest untouched."""
    model = flatten_cnn(lr=1e-2)
    model.train_on_batch(X[:16], Y[:16])
    targets = plan(model, resolve_layers(model, None))
    conv2 = next(t for t in targets if t.path == "conv2")
    assert [c.layer.name for c in conv2.consumers] == ["head"]

    def read(v: Any) -> np.ndarray:
        return np.array(keras.ops.convert_to_numpy(v.value))

    head = model.get_layer("head").kernel
    old_kernel = read(model.get_layer("conv2").kernel)
    old_head = read(head)
    slots = [v for v in model.optimizer.variables if tuple(v.shape) == tuple(head.shape)]
    assert len(slots) == 2 and all(np.abs(read(s)).sum() > 0 for s in slots)
    Reviver(model, targets, patience=1).revive(conv2, np.array([1]))
    kernel = read(model.get_layer("conv2").kernel)
    assert not np.allclose(kernel[..., 1], old_kernel[..., 1])
    np.testing.assert_array_equal(np.delete(kernel, 1, -1), np.delete(old_kernel, 1, -1))
    assert read(model.get_layer("conv2").bias)[1] == 0.0
    rows = np.arange(1, head.shape[0], 8)  # Flatten of (4, 4, 8): channel = index % 8
    new_head = read(head)
    assert np.all(new_head[rows] == 0)
    np.testing.assert_array_equal(np.delete(new_head, rows, 0), np.delete(old_head, rows, 0))
    for slot in slots:
        values = read(slot)
        assert np.all(values[rows] == 0) and np.abs(np.delete(values, rows, 0)).sum() > 0


def residual_cnn() -> keras.Model:
    inputs = keras.Input((16, 16, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv2")(a)
    x = keras.layers.Add(name="add")([a, b])
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def test_unsupported_graph_fails_before_training(tmp_path: Path) -> None:
    """A conv whose output reaches an Add: a ValueError at the start of fit that names the
    layer, the obstacle, what is supported and how to fix it; the weights are untouched."""
    model = residual_cnn()
    weights = [keras.ops.convert_to_numpy(v).copy() for v in model.weights]
    monitor = actwatch.ActivationMonitor(X[:2], tmp_path, images=False, revive="redo")
    with pytest.raises(
        ValueError,
        match=r"cannot revive.*'conv1'.*reaches Add 'add'.*Supported: .*revive=None",
    ):
        model.fit(X, Y, epochs=1, verbose=0, callbacks=[monitor])
    for old, new in zip(weights, model.weights, strict=True):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))


def test_subclassed_model_is_rejected(tmp_path: Path) -> None:
    """revive='redo' needs a graph to know each filter's consumers."""

    class Net(keras.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.conv = keras.layers.Conv2D(4, 3, activation="relu")
            self.gap = keras.layers.GlobalAveragePooling2D()
            self.head = keras.layers.Dense(3)

        def call(self, x: Any) -> Any:
            return self.head(self.gap(self.conv(x)))

    model = Net()
    model(X[:1])
    with pytest.raises(ValueError, match=r"needs a Functional or Sequential model.*Net"):
        plan(model, resolve_layers(model, None))


def test_bad_revive_value(tmp_path: Path) -> None:
    """Only None and 'redo'; the message lists them and what was received."""
    with pytest.raises(ValueError, match=r"Expected None .* or 'redo'.*Received: revive='bogus'"):
        actwatch.ActivationMonitor(X[:2], tmp_path, revive="bogus")
