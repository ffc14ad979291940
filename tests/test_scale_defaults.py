"""Defaults that stay useful on big networks: which layers are drawn, chart sizes, the report's
dead-fraction heatmap, and dead figures only where "dead" means something."""

from __future__ import annotations

import io
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

import actwatch
from actwatch.check.images import DRAW_ALL_UP_TO, default_drawn
from actwatch.check.layers import resolve_layers
from actwatch.events import tags
from actwatch.events.runs import read_run

from .helpers import read_events

L = keras.layers


def deep_cnn(blocks: int = 3, convs: int = 4, size: int = 16) -> keras.Model:
    """`blocks` resolution stages of `convs` ReLU convolutions each, then a pooling layer:
    blocks * (convs + 1) watched layers."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3))
    x = inputs
    for b in range(blocks):
        for c in range(convs):
            x = L.Conv2D(4, 3, padding="same", activation="relu", name=f"b{b}_c{c}")(x)
        x = L.MaxPooling2D(name=f"b{b}_pool")(x)
    outputs = L.Dense(2)(L.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.SGD(1e-3), "mse")
    return model


def _fit(model: keras.Model, log_dir: Path, **kwargs: object) -> actwatch.ActivationMonitor:
    x = np.random.default_rng(0).normal(size=(16, 16, 16, 3)).astype("float32")
    monitor = actwatch.ActivationMonitor(x[:2], log_dir, **kwargs)  # type: ignore[arg-type]
    model.fit(x, np.zeros((16, 2)), epochs=1, batch_size=8, callbacks=[monitor], verbose=0)
    assert monitor._check_failed.count == 0
    return monitor


def _drawn(log_dir: Path) -> set[str]:
    images = read_events(log_dir).images
    return {tag.split("/", 1)[1].rsplit("/", 1)[0] for tag in images if tag.startswith("filters/")}


class TestDrawnLayers:
    def test_rule_small_network_draws_everything(self) -> None:
        """Up to DRAW_ALL_UP_TO watched layers, every layer is drawn."""
        shapes = [(f"l{i}", (8, 8, 4)) for i in range(DRAW_ALL_UP_TO)]
        assert default_drawn(shapes) == [p for p, _ in shapes]

    def test_rule_big_network_draws_first_and_each_stage_output(self) -> None:
        """Beyond, the first layer and the last one of each spatial resolution are drawn;
        1x1 maps (squeeze-and-excitation gates) are not a stage."""
        shapes = [(f"a{i}", (32, 32, 8)) for i in range(10)]
        shapes += [(f"b{i}", (16, 16, 8)) for i in range(10)] + [("se", (1, 1, 8))]
        shapes += [("b10", (16, 16, 8)), ("dense", (10,))]
        assert default_drawn(shapes) == ["a0", "a9", "b10", "dense"]

    def test_rule_transformer_draws_first_and_last_attention_and_block(self) -> None:
        """A ViT-B's 37 layers (patch embedding, then attention, MLP and block of 12 blocks,
        all of one shape): the patch embedding, blocks 0 and 11 and their attention."""
        shapes: list[tuple[str, tuple[int | None, ...]]] = [("patch", (14, 14, 768))]
        roles = {}
        for b in range(12):
            for role, name in (("attention", "mha"), ("mlp", "mlp"), ("block", "out")):
                shapes.append((f"l{b}/{name}", (197, 768)))
                roles[f"l{b}/{name}"] = role
        assert default_drawn(shapes, roles) == ["patch", "l0/mha", "l0/out", "l11/mha", "l11/out"]
        assert default_drawn(shapes) == ["patch", "l11/out"]  # without roles: the stages rule

    def test_big_model_draws_the_stage_outputs_and_keeps_every_statistic(
        self, tmp_path: Path
    ) -> None:
        """A 20-layer CNN: statistics for all 20, pictures for the first and each stage's last."""
        monitor = _fit(deep_cnn(blocks=4, convs=4), tmp_path)
        assert len(monitor.last_stats) == 20
        # Resolutions 16, 8, 4 and 2 px (a pooling layer opens the next one); 1x1 is no stage.
        assert _drawn(tmp_path) == {"b0_c0", "b0_c3", "b1_c3", "b2_c3", "b3_c3"}
        scalars = read_events(tmp_path).scalars
        assert all(f"zero_fraction/{path}" in scalars for path in monitor.last_stats)

    def test_small_model_draws_every_layer(self, tmp_path: Path) -> None:
        """A 10-layer CNN (the demo's size) keeps every watched layer drawn."""
        monitor = _fit(deep_cnn(blocks=2, convs=4), tmp_path)
        assert _drawn(tmp_path) == set(monitor.last_stats)

    @pytest.mark.parametrize(
        ("draw_layers", "expected"),
        [("all", 20), (["b1_c2", "b3_pool"], 2), (r"b2_c\d", 4)],
    )
    def test_draw_layers_overrides_the_rule(
        self, tmp_path: Path, draw_layers: object, expected: int
    ) -> None:
        """`draw_layers` takes "all", names or a regex of watched layers."""
        _fit(deep_cnn(blocks=4, convs=4), tmp_path, draw_layers=draw_layers)
        assert len(_drawn(tmp_path)) == expected


def test_layout_charts_have_at_most_12_lines() -> None:
    """Small models keep one chart per metric; 103 layers become charts of at most 12 lines,
    each layer in exactly one chart per metric."""
    small = tags.layout([f"l{i}" for i in range(10)])
    assert [c.title for c in small.category] == [
        "actwatch: layers per metric",
        "actwatch: network",
    ]
    layers = [f"l{i}" for i in range(103)]
    big = tags.layout(layers)
    per_metric = [c for c in big.category if c.title != "actwatch: network"]
    assert [c.title for c in per_metric] == [f"actwatch: {m}" for m in tags.METRICS]
    for category in per_metric:
        lines = [len(chart.multiline.tag) for chart in category.chart]
        assert max(lines) <= tags.CHART_LINES and sum(lines) == 103


def test_dead_figures_only_where_outputs_are_relu_like(tmp_path: Path) -> None:
    """A linear convolution gets no dead_* scalars (half its outputs are negative); the ReLU
    after it does, and the network's dead fraction counts only ReLU-like layers."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    linear = L.Conv2D(8, 3, padding="same", name="linear")(inputs)
    relu = L.ReLU(name="relu")(linear)
    model = keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling2D()(relu)))
    model.compile(keras.optimizers.SGD(1e-3), "mse")
    monitor = _fit(model, tmp_path, layers=["linear", "relu"])
    scalars = read_events(tmp_path).scalars
    assert "dead_fraction/linear" not in scalars and "dead_filters/linear" not in scalars
    assert "dormant_fraction/linear" in scalars and "dead_fraction/relu" in scalars
    relu_dead = scalars["dead_fraction/relu"][-1][1]
    assert scalars["network/dead_fraction"][-1][1] == pytest.approx(relu_dead)
    assert not monitor.last_stats["linear"].nonnegative


def test_report_heatmap_stays_readable_at_250_layers(tmp_path: Path) -> None:
    """The report's dead-fraction heatmap of a 250-layer run is one figure under 2,000 px
    tall, and the curves colour layers by depth instead of a 250-entry legend."""
    from actwatch.events.sink import Sink

    layers = [f"stage{i // 50}/conv{i}" for i in range(250)]
    sink = Sink(str(tmp_path / "run"), layout=tags.layout(layers))
    rng = np.random.default_rng(0)
    for step in (0, 10, 20):
        values = {
            tags.layer_tag(metric, layer): (float(rng.random()), "d")
            for layer in layers
            for metric in ("zero_fraction", "hoyer", "dead_fraction")
        }
        sink.submit(step, scalars=values)
    sink.close()
    assert len(read_run(tmp_path / "run").layers) == 250
    page = actwatch.report.write_report(tmp_path, tmp_path / "report.html", progress=False)
    figures = sorted((page.parent / "report_figures").glob("*dead-fraction.png"))
    assert len(figures) == 1
    height = Image.open(io.BytesIO(figures[0].read_bytes())).size[1]
    assert 500 < height < 2000


def test_default_leaves_out_linear_convs_that_feed_an_activation() -> None:
    """conv -> BN -> ReLU and conv -> ReLU: only the ReLU is watched by default; a linear conv
    feeding an addition that no activation follows (a linear bottleneck), and a conv with its
    own activation, stay watched; a residual block's convs into BN -> Add -> ReLU do not."""
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(4, 3, padding="same", name="a_conv")(inputs)
    a = L.ReLU(name="a_relu")(L.BatchNormalization(name="a_bn")(a))
    b = L.Conv2D(4, 3, padding="same", name="b_conv")(a)
    b = L.Activation("relu", name="b_relu")(b)
    c = L.Conv2D(4, 1, name="c_conv")(b)  # linear, into an addition: kept
    d = L.Conv2D(4, 1, activation="relu", name="d_conv")(b)
    added = L.Add(name="add")([c, d])
    # A ResNet bottleneck's end: last conv -> BN -> Add(shortcut conv -> BN) -> ReLU.
    e = L.BatchNormalization(name="e_bn")(L.Conv2D(4, 1, name="e_conv")(added))
    s = L.BatchNormalization(name="s_bn")(L.Conv2D(4, 1, name="s_conv")(added))
    out = L.Activation("relu", name="out")(L.Add(name="add2")([e, s]))
    model = keras.Model(inputs, out)
    watched = [w.path for w in resolve_layers(model, None)]
    assert watched == ["a_relu", "b_relu", "c_conv", "d_conv", "out"]
    named = resolve_layers(model, ["a_conv", "a_relu", "e_conv"])
    assert [w.path for w in named] == ["a_conv", "a_relu", "e_conv"]
