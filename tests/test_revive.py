"""revive="redo": dead filters re-initialised with the output unchanged, alive at the next
check; optimizer slots reset; unsupported graphs and bad values rejected before training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

import actwatch
from actwatch.check.layers import resolve_layers
from actwatch.diagnose.revive import Reviver, plan

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


def bn_cnn(data_format: str, optimizer: keras.optimizers.Optimizer) -> keras.Model:
    """conv-BN-relu-pool-flatten-dense in `data_format`, compiled with `optimizer`."""
    keras.utils.set_random_seed(0)
    first = data_format == "channels_first"
    inputs = keras.Input((3, 16, 16) if first else (16, 16, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", data_format=data_format, name="conv")(inputs)
    x = keras.layers.BatchNormalization(axis=1 if first else -1, name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.MaxPooling2D(data_format=data_format, name="pool")(x)
    x = keras.layers.Flatten(data_format=data_format, name="flatten")(x)
    outputs = keras.layers.Dense(3, name="head")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.mark.parametrize(
    "data_format",
    [
        "channels_last",
        pytest.param(
            "channels_first",
            marks=pytest.mark.skipif(
                keras.backend.backend() == "tensorflow",
                reason="TensorFlow's CPU kernels take channels_last only",
            ),
        ),
    ],
)
@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: keras.optimizers.SGD(0.05, momentum=0.9),
        lambda: keras.optimizers.RMSprop(1e-2, momentum=0.9, centered=True),
        lambda: keras.optimizers.Adam(1e-2, amsgrad=True),
    ],
    ids=["sgd_momentum", "rmsprop", "adam"],
)
def test_redo_through_batch_norm_and_flatten_keeps_the_output(
    data_format: str, optimizer: Any
) -> None:
    """Reviving dead filters 1 and 4 of a conv followed by BatchNormalization, pooling and
    Flatten (either data format): the predictions (inference and training mode) are unchanged, the
    Dense rows fed by those channels through Flatten's index mapping are zero, the BN
    channel is reset, and every optimizer slot of the changed entries is zero."""
    first = data_format == "channels_first"
    model = bn_cnn(data_format, optimizer())
    x = np.moveaxis(X, -1, 1) if first else X
    model.train_on_batch(x[:16], Y[:16])
    model.train_on_batch(x[16:], Y[16:])
    [target] = plan(model, resolve_layers(model, ["relu"]))
    assert target.source == "relu" and [n.name for n in target.norms] == ["bn"]

    def read(v: Any) -> np.ndarray:
        return np.array(keras.ops.convert_to_numpy(v.value))

    bn = model.get_layer("bn")
    beta = read(bn.beta)
    beta[[1, 4]] = -100.0  # channels 1 and 4 dead after the ReLU, in both modes
    bn.beta.assign(beta)
    moving = [read(bn.moving_mean), read(bn.moving_variance)]
    predictions = [keras.ops.convert_to_numpy(model(x, training=t)) for t in (False, True)]
    for variable, value in zip((bn.moving_mean, bn.moving_variance), moving, strict=True):
        variable.assign(value)  # as before the call in training mode, which moved them
    Reviver(model, [target], patience=1).revive(target, np.array([1, 4]))
    assert read(bn.gamma)[[1, 4]].tolist() == [1.0, 1.0]
    assert read(bn.moving_variance)[[1, 4]].tolist() == [1.0, 1.0]
    for t, before in zip((False, True), predictions, strict=True):
        after = keras.ops.convert_to_numpy(model(x, training=t))
        np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)
    head = model.get_layer("head").kernel
    # Pooled (6, 8, 8) or (8, 8, 6), flattened channels last either way (Flatten's format).
    channel = np.arange(head.shape[0]) % 6
    rows = np.flatnonzero(np.isin(channel, [1, 4]))
    assert len(rows) == 2 * 64 and np.all(read(head)[rows] == 0)
    assert np.all(read(head)[np.flatnonzero(~np.isin(channel, [1, 4]))].any(axis=1))
    edits = {
        id(head): (..., rows, slice(None)),
        id(model.get_layer("conv").kernel): (..., [1, 4]),
        id(model.get_layer("conv").bias): [1, 4],
        id(bn.gamma): [1, 4],
        id(bn.beta): [1, 4],
    }
    counts = set()
    for variable in model.trainable_variables:
        if id(variable) not in edits:
            continue
        prefix = variable.path.replace("/", "_") + "_"
        slots = [s for s in model.optimizer.variables if str(s.name).startswith(prefix)]
        for slot in slots:
            assert np.all(read(slot)[edits[id(variable)]] == 0), slot.name
        counts.add(len(slots))
    assert len(counts) == 1 and counts.pop() >= 1  # every slot of every changed weight


def test_batch_norm_on_another_axis_is_rejected() -> None:
    """A BatchNormalization that does not normalize the channel axis cannot be reset per
    filter: a ValueError that names it."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(axis=1, name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    with pytest.raises(ValueError, match=r"'relu'.*'bn' normalizes axis 1, not the channel axis 3"):
        plan(model, resolve_layers(model, ["relu"]))


def test_watched_only_after_flatten_is_rejected() -> None:
    """A producer watched only after a Flatten (its filters mixed with positions there)
    cannot be revived from that mask: a ValueError, not a revival of the wrong units."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(0.1, name="drop")(x)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(x))
    with pytest.raises(ValueError, match=r"'drop'.*watched only after a Flatten"):
        plan(model, resolve_layers(model, ["drop"]))


def test_revival_is_marked_on_the_watched_row(tmp_path: Path) -> None:
    """conv -> BN -> ReLU, the ReLU watched (the linear conv is not, by default): filters
    dead at the ReLU are revived in the conv, and the count is written on the ReLU's row
    (`revived_filters/relu`), where the report's heatmap marks it."""
    model = bn_cnn("channels_last", keras.optimizers.Adam(1e-7))
    # Dead as training sees them (the check normalises with the batch's statistics): BN
    # scales filters 1 and 4 to 0 and shifts them below it.
    norm = model.get_layer("bn")
    for weight, value in ((norm.gamma, 0.0), (norm.beta, -1.0)):
        values = keras.ops.convert_to_numpy(weight).copy()
        values[[1, 4]] = value
        weight.assign(values)
    monitor = actwatch.ActivationMonitor(X[:2], tmp_path, stats_data=X, images=False, revive="redo")
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0, callbacks=[monitor])
    revived = [(a.layer, a.filters, a.step) for a in monitor.alerts if a.kind == "revived"]
    assert revived == [("conv", (1, 4), 0)]
    scalars = read_events(tmp_path).scalars
    assert scalars["revived_filters/relu"] == [(0, 2.0)]
    assert "revived_filters/conv" not in scalars
