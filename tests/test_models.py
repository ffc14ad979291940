"""Every model shape, each with a real fit; statistics equal numpy on independent outputs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

import actwatch
from actwatch.check.stats import LayerStats

from . import reference as ref
from .helpers import read_events

L = keras.layers
RNG = np.random.default_rng(0)


def images(n: int = 16, size: int = 12, channels: int = 3) -> np.ndarray:
    return RNG.normal(size=(n, size, size, channels)).astype("float32")


def assert_matches(stats: LayerStats, output: np.ndarray, channel_axis: int = -1) -> None:
    """`stats` equal the numpy reference on `output`, the layer's output for the stats data."""
    a = ref.to_npc(output, channel_axis)
    assert stats.filters == a.shape[-1]
    assert stats.zero_fraction == pytest.approx(ref.zero_fraction(a), abs=1e-5)
    assert stats.mean == pytest.approx(ref.mean(a), rel=1e-3, abs=1e-4)
    assert stats.hoyer == pytest.approx(ref.hoyer(a), rel=1e-3, abs=1e-4)
    assert stats.dead.tolist() == ref.dead(a).tolist()


def fit(model: keras.Model, x: object, monitor: actwatch.ActivationMonitor, y: np.ndarray) -> None:
    model.compile(keras.optimizers.SGD(1e-3), "mse")
    model.fit(x, y, epochs=1, batch_size=8, callbacks=[monitor], verbose=0)
    assert monitor._check_failed.count == 0, "a check failed: see the log"


def test_sequential(tmp_path: Path) -> None:
    """A Sequential model is watched by default on its conv and pooling layers."""
    model = keras.Sequential(
        [
            keras.Input((12, 12, 3)),
            L.Conv2D(4, 3, activation="relu", name="c1"),
            L.MaxPooling2D(name="p1"),
            L.Flatten(),
            L.Dense(2, name="d"),
        ]
    )
    x = images()
    monitor = actwatch.ActivationMonitor(x[:2], tmp_path)
    fit(model, x, monitor, np.zeros((16, 2)))
    assert list(monitor.last_stats) == ["c1", "p1"]
    out = keras.Model(model.inputs, model.get_layer("c1").output).predict(x[:2], verbose=0)
    assert_matches(monitor.last_stats["c1"], out)


def test_nested_model_by_path(tmp_path: Path) -> None:
    """A layer inside a nested model is watched by path `backbone/conv1`."""
    inner_in = keras.Input((10, 10, 4))
    h = L.Conv2D(6, 3, activation="relu", name="conv1")(inner_in)
    backbone = keras.Model(inner_in, L.Conv2D(5, 3, name="conv2")(h), name="backbone")
    inputs = keras.Input((12, 12, 3))
    pre = L.Conv2D(4, 3, name="pre")(inputs)
    feats = backbone(pre)
    outputs = L.Dense(2)(L.GlobalAveragePooling2D()(feats))
    model = keras.Model(inputs, outputs)
    x = images()
    monitor = actwatch.ActivationMonitor(
        x[:2], tmp_path, layers=["backbone/conv1", "pre"], stats_data=x
    )
    fit(model, x, monitor, np.zeros((16, 2)))
    pre_out = keras.Model(inputs, pre).predict(x, verbose=0)
    inner = keras.Model(inner_in, h).predict(pre_out, verbose=0)
    assert_matches(monitor.last_stats["backbone/conv1"], inner)
    assert "filters/backbone/conv1/probe_0" in read_events(tmp_path).images


def test_default_layers_include_nested_models(tmp_path: Path) -> None:
    """The default selection walks into nested models."""
    inner_in = keras.Input((12, 12, 3))
    backbone = keras.Model(
        inner_in, L.Conv2D(4, 3, activation="relu", name="c")(inner_in), name="bb"
    )
    inputs = keras.Input((12, 12, 3))
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(backbone(inputs))))
    x = images()
    monitor = actwatch.ActivationMonitor(x[:2], tmp_path)
    fit(model, x, monitor, np.zeros((16, 2)))
    assert list(monitor.last_stats) == ["bb/c"]


def test_nested_models_run_once_per_check(tmp_path: Path) -> None:
    """Two levels of nesting: each nested model is tapped once, and every value is exact."""
    deep_in = keras.Input((8, 8, 4))
    d1 = L.Conv2D(5, 3, padding="same", activation="relu", name="d1")(deep_in)
    d2 = L.Conv2D(6, 3, padding="same", activation="relu", name="d2")(d1)
    deep = keras.Model(deep_in, d2, name="deep")
    outer_in = keras.Input((8, 8, 3))
    o1 = L.Conv2D(4, 3, padding="same", activation="relu", name="o1")(outer_in)
    outer = keras.Model(outer_in, L.ReLU(name="o2")(deep(o1)), name="outer")
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(outer(inputs))))
    paths = ["outer/o1", "outer/deep/d1", "outer/deep/d2", "outer/o2"]
    watched = actwatch.check.layers.resolve_layers(model, paths)
    extractor = actwatch.check.extract.Extractor(model, watched)
    taps = sorted(layer.name for layer in extractor.model.layers if "actwatch_tap" in layer.name)
    assert taps == ["actwatch_tap_outer", "actwatch_tap_outer_deep"]
    x = images(size=8)
    monitor = actwatch.ActivationMonitor(x[:2], tmp_path, layers=paths, stats_data=x)
    fit(model, x, monitor, np.zeros((16, 2)))
    o1_out = keras.Model(outer_in, o1).predict(x, verbose=0)
    d1_out, d2_out = keras.Model(deep_in, [d1, d2]).predict(o1_out, verbose=0)
    assert_matches(monitor.last_stats["outer/o1"], o1_out)
    assert_matches(monitor.last_stats["outer/deep/d1"], d1_out)
    assert_matches(monitor.last_stats["outer/deep/d2"], d2_out)
    assert_matches(monitor.last_stats["outer/o2"], np.maximum(d2_out, 0.0))


def test_monitoring_leaves_the_users_graph_as_it_was(tmp_path: Path) -> None:
    """Fits and notebook calls that tap a nested model add no node to the user's layers:
    Keras records one on each call of a model on graph tensors, which would pile up."""
    inner_in = keras.Input((8, 8, 3))
    backbone = keras.Model(inner_in, L.Conv2D(4, 3, activation="relu", name="c")(inner_in))
    inputs = keras.Input((8, 8, 3))
    pre = L.Conv2D(3, 1, name="pre")
    model = keras.Model(inputs, L.Dense(2)(L.Flatten()(backbone(pre(inputs)))))

    def nodes() -> list[int]:
        layers = [pre, backbone, *backbone.layers, *model.layers]
        return [len(layer._outbound_nodes) + len(layer._inbound_nodes) for layer in layers]

    before = nodes()
    x = images(size=8)
    monitor = actwatch.ActivationMonitor(x[:2], tmp_path, images=False)
    for _ in range(2):
        fit(model, x, monitor, np.zeros((16, 2)))
    actwatch.activation_stats(model, x[:4])
    assert nodes() == before


@pytest.mark.parametrize("form", ["dict", "list", "tuple"])
def test_multi_input_probes(tmp_path: Path, form: str) -> None:
    """Multi-input models take probes as a dict by input name, or a list/tuple in order."""
    a_in = keras.Input((12, 12, 3), name="rgb")
    b_in = keras.Input((12, 12, 1), name="depth")
    a = L.Conv2D(4, 3, activation="relu", name="rgb_conv")(a_in)
    b = L.Conv2D(2, 3, activation="relu", name="depth_conv")(b_in)
    merged = L.Concatenate(name="merge")([a, b])
    model = keras.Model([a_in, b_in], L.Dense(1)(L.Flatten()(merged)))
    xa, xb = images(), images(channels=1)
    probes: object = {"rgb": xa[:2], "depth": xb[:2]}
    if form == "list":
        probes = [xa[:2], xb[:2]]
    elif form == "tuple":
        probes = (xa[:2], xb[:2])
    monitor = actwatch.ActivationMonitor(
        probes, tmp_path, layers=["rgb_conv", "depth_conv", "merge"]
    )
    fit(model, [xa, xb], monitor, np.zeros((16, 1)))
    out = keras.Model(model.inputs, model.get_layer("depth_conv").output).predict(
        [xa[:2], xb[:2]], verbose=0
    )
    assert_matches(monitor.last_stats["depth_conv"], out)
    assert monitor.last_stats["merge"].filters == 6


def test_subclassed_model_is_watched_by_attribute_path(tmp_path: Path) -> None:
    """A subclassed model is watched: its conv found by attribute name, stats equal numpy."""

    class Net(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.conv = L.Conv2D(4, 3)
            self.head = L.Dense(1)

        def call(self, x: object) -> object:
            return self.head(L.Flatten()(self.conv(x)))

    model = Net()
    x = images()
    model(x[:1])
    monitor = actwatch.ActivationMonitor(x[:2], tmp_path)
    fit(model, x, monitor, np.zeros((16, 1)))
    assert list(monitor.last_stats) == ["conv"]
    assert_matches(monitor.last_stats["conv"], keras.ops.convert_to_numpy(model.conv(x[:2])))


def test_shared_layer_is_watched_at_its_first_call(tmp_path: Path) -> None:
    """A layer called twice is watched at its first call (documented)."""
    shared = L.Conv2D(3, 1, name="shared")
    inputs = keras.Input((12, 12, 3))
    first = shared(inputs)
    second = shared(L.ReLU()(first))
    model = keras.Model(inputs, L.Dense(1)(L.Flatten()(second)))
    x = images()
    monitor = actwatch.ActivationMonitor(x[:2], tmp_path, layers="shared")
    fit(model, x, monitor, np.zeros((16, 1)))
    out = keras.Model(inputs, first).predict(x[:2], verbose=0)
    assert_matches(monitor.last_stats["shared"], out)


@pytest.fixture
def policy(request: pytest.FixtureRequest) -> Iterator[str]:
    keras.mixed_precision.set_global_policy(request.param)
    try:
        yield request.param
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"], indirect=True)
def test_mixed_precision_statistics_in_float32(tmp_path: Path, policy: str) -> None:
    """Under mixed precision the statistics are computed in float32 from the float16 outputs."""
    inputs = keras.Input((12, 12, 3))
    conv = L.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    model = keras.Model(inputs, L.Dense(1, dtype="float32")(L.Flatten()(conv)))
    assert model.get_layer("conv").compute_dtype != "float32"
    x = images()
    monitor = actwatch.ActivationMonitor(x[:2], tmp_path)
    fit(model, x, monitor, np.zeros((16, 1)))
    out = keras.Model(inputs, conv).predict(x[:2], verbose=0)
    assert_matches(monitor.last_stats["conv"], np.asarray(out, dtype=np.float32))


def test_channels_first(tmp_path: Path) -> None:
    """channels_first layers (and a ReLU after them) are read on axis 1."""
    inputs = keras.Input((3, 12, 12))
    conv = L.Conv2D(4, 3, data_format="channels_first", name="conv")(inputs)
    relu = L.ReLU(name="relu")(conv)
    pooled = L.MaxPooling2D(data_format="channels_first", name="pool")(relu)
    model = keras.Model(inputs, L.Dense(1)(L.Flatten()(pooled)))
    x = np.moveaxis(images(), -1, 1)
    monitor = actwatch.ActivationMonitor(x[:2], tmp_path, layers=["conv", "relu", "pool"])
    fit(model, x, monitor, np.zeros((16, 1)))
    assert {k: s.filters for k, s in monitor.last_stats.items()} == {
        "conv": 4,
        "relu": 4,
        "pool": 4,
    }
    out = keras.Model(inputs, relu).predict(x[:2], verbose=0)
    assert_matches(monitor.last_stats["relu"], out, channel_axis=1)
    grid = read_events(tmp_path).images["filters/relu/probe_0"][0][1]
    assert grid.shape[:2] == (2 * (10 * 3 + 2) + 2,) * 2  # 4 tiles of 10x10, upscaled x3


def test_every_layer_kind(tmp_path: Path) -> None:
    """Conv1D, Conv3D, DepthwiseConv2D, SeparableConv2D, BN, Activation, ReLU, LeakyReLU, Dense."""
    img = keras.Input((12, 12, 3), name="img")
    seq = keras.Input((20, 2), name="seq")
    vol = keras.Input((6, 6, 6, 1), name="vol")
    h = L.DepthwiseConv2D(3, name="depthwise")(img)
    h = L.BatchNormalization(name="bn")(h)
    h = L.Activation("tanh", name="act")(h)
    h = L.SeparableConv2D(5, 3, name="separable")(h)
    h = L.LeakyReLU(negative_slope=0.1, name="leaky")(h)
    h = L.ReLU(name="relu")(h)
    s = L.Conv1D(4, 3, activation="relu", name="conv1d")(seq)
    v = L.Conv3D(2, 3, activation="relu", name="conv3d")(vol)
    merged = L.Concatenate()([L.Flatten()(h), L.Flatten()(s), L.Flatten()(v)])
    dense = L.Dense(7, activation="relu", name="dense")(merged)
    model = keras.Model([img, seq, vol], L.Dense(1)(dense))
    x = [
        images(),
        RNG.normal(size=(16, 20, 2)).astype("float32"),
        RNG.normal(size=(16, 6, 6, 6, 1)).astype("float32"),
    ]
    names = ["depthwise", "bn", "act", "separable", "leaky", "relu", "conv1d", "conv3d", "dense"]
    monitor = actwatch.ActivationMonitor([a[:2] for a in x], tmp_path, layers=names)
    fit(model, x, monitor, np.zeros((16, 1)))
    # The check sees the network as training does: "bn" on the probes' own statistics.
    sub = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    with keras.StatelessScope():  # leaves the moving statistics be
        outs = [keras.ops.convert_to_numpy(o) for o in sub([a[:2] for a in x], training=True)]
    for name, out in zip(names, outs, strict=True):
        assert_matches(monitor.last_stats[name], out)
    assert monitor.last_stats["act"].nonnegative is False
    events = read_events(tmp_path)
    assert events.images["filters/conv1d/probe_0"][0][1].shape[0] == 4 * (8 + 2) + 2  # strips
    assert events.images["filters/dense/probe_0"][0][1].shape[1] == 7 * 9 + 3  # cells
    assert "heatmap/dense/probe_0" not in events.images
    assert "heatmap/conv3d/probe_0" in events.images
