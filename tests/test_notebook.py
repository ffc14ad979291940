"""The notebook functions: the callback's extractor, statistics and grids, one call each."""

from __future__ import annotations

import io
from pathlib import Path

import keras
import numpy as np
import pytest
from matplotlib.figure import Figure
from PIL import Image

import actwatch
from actwatch.render.tiles import heatmap_overlay

from . import reference as ref
from .fit_logs import dying_cnn
from .helpers import data, tiny_cnn

LAYERS = ["conv1", "pool1", "conv2", "pool2"]


def _outputs(model: keras.Model, x: np.ndarray, name: str) -> np.ndarray:
    """The layer's output through a plain Keras sub-model: the reference."""
    sub = keras.Model(model.inputs[0], model.get_layer(name).output)
    return np.asarray(keras.ops.convert_to_numpy(sub(x, training=False)))


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return dying_cnn(1)  # conv1 filter 0 never fires


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return data(6)[0]


class TestGetActivations:
    def test_default_layers_equal_keras_outputs(self, model: keras.Model, x: np.ndarray) -> None:
        """Every conv and pooling layer, in model order, equal to Keras' own outputs."""
        acts = actwatch.get_activations(model, x)
        assert list(acts) == LAYERS
        for name, array in acts.items():
            expected = _outputs(model, x, name)
            assert array.shape == expected.shape
            assert array.dtype == expected.dtype
            np.testing.assert_allclose(array, expected, rtol=1e-5, atol=1e-6)

    def test_one_layer_by_name_and_a_dense_layer(self, model: keras.Model, x: np.ndarray) -> None:
        acts = actwatch.get_activations(model, x, layers=["head"])
        assert list(acts) == ["head"]
        np.testing.assert_allclose(acts["head"], _outputs(model, x, "head"), rtol=1e-5, atol=1e-6)
        single = actwatch.get_activations(model, x, layers="conv2")
        assert list(single) == ["conv2"]
        assert single["conv2"].shape == (6, 8, 8, 8)

    def test_image_files_with_preprocess(self, model: keras.Model, tmp_path: Path) -> None:
        """Image paths are resized to the input and preprocessed like an array would be."""
        rng = np.random.default_rng(1)
        pixels = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
        paths = []
        for i, p in enumerate(pixels):
            paths.append(tmp_path / f"{i}.png")
            Image.fromarray(p).save(paths[-1])
        from_files = actwatch.get_activations(
            model, paths, layers="conv1", preprocess=lambda a: a / 255.0
        )
        from_array = actwatch.get_activations(model, pixels.astype("float32") / 255.0, "conv1")
        np.testing.assert_allclose(from_files["conv1"], from_array["conv1"], rtol=1e-5, atol=1e-6)

    def test_unknown_layer_names_the_choices(self, model: keras.Model, x: np.ndarray) -> None:
        with pytest.raises(ValueError, match=r"no layer named 'convX'.*'conv1'"):
            actwatch.get_activations(model, x, layers="convX")

    def test_missing_batch_axis(self, model: keras.Model, x: np.ndarray) -> None:
        with pytest.raises(
            ValueError,
            match=r"got shape \(16, 16, 3\)\. Did you forget the batch dimension\? Use x\[None\]",
        ):
            actwatch.get_activations(model, x[0])


class TestActivationStats:
    def test_equal_to_numpy_reference(self, model: keras.Model, x: np.ndarray) -> None:
        """Zero fraction, dead, dormant, Hoyer and mean match plain numpy on the outputs."""
        stats = actwatch.activation_stats(model, x)
        assert list(stats) == LAYERS
        for name, s in stats.items():
            a = ref.to_npc(_outputs(model, x, name))
            assert s.zero_fraction == pytest.approx(ref.zero_fraction(a), abs=1e-6)
            assert s.mean == pytest.approx(ref.mean(a), rel=1e-4, abs=1e-6)
            assert s.hoyer == pytest.approx(ref.hoyer(a), abs=1e-4)
            np.testing.assert_array_equal(s.dead, ref.dead(a))
            np.testing.assert_array_equal(s.dormant, ref.dormant(a, 0.025))
            assert s.nonfinite == 0
        assert stats["conv1"].dead.tolist() == [True, False, False, False]
        assert stats["pool1"].dead_count == 1

    def test_dormant_threshold_is_used(self, model: keras.Model, x: np.ndarray) -> None:
        everything = actwatch.activation_stats(model, x, "conv2", dormant_threshold=1.0)
        a = ref.to_npc(_outputs(model, x, "conv2"))
        np.testing.assert_array_equal(everything["conv2"].dormant, ref.dormant(a, 1.0))
        assert everything["conv2"].dormant.any()


class TestPlots:
    def test_plot_filters_one_grid_per_layer(self, model: keras.Model, x: np.ndarray) -> None:
        """One panel per layer, titled with the filters drawn and the dead count."""
        figure = actwatch.plot_filters(model, x, probe=2)
        assert isinstance(figure, Figure)
        titles = [a.get_title() for a in figure.axes]
        dead = {n: int(ref.dead(ref.to_npc(_outputs(model, x, n))).sum()) for n in LAYERS}
        assert dead["conv1"] >= 1  # filter 0 never fires; others may not fire on 6 samples
        assert titles == [
            f"conv1: 4/4 filters, {dead['conv1']} dead",
            f"pool1: 4/4 filters, {dead['pool1']} dead",
            f"conv2: 8/8 filters, {dead['conv2']} dead",
            f"pool2: 8/8 filters, {dead['pool2']} dead",
        ]
        conv1 = figure.axes[0].get_images()[0].get_array()
        # 2 x 2 tiles of 16 px maps upscaled x2 (to at least MIN_TILE = 24), 2 px gutters.
        assert conv1.shape == (2 + 2 * (32 + 2), 2 + 2 * (32 + 2), 3)
        png = io.BytesIO()
        figure.savefig(png, format="png")
        assert Image.open(png).size[0] > 0

    def test_plot_filters_caps_filters(self, model: keras.Model, x: np.ndarray) -> None:
        figure = actwatch.plot_filters(model, x, layers="conv2", max_filters=3)
        dead = int(ref.dead(ref.to_npc(_outputs(model, x, "conv2"))).sum())
        assert [a.get_title() for a in figure.axes] == [f"conv2: 3/8 filters, {dead} dead"]

    def test_plot_heatmaps_spatial_layers_only(self, model: keras.Model, x: np.ndarray) -> None:
        """Dense outputs have no positions and are left out; each panel is the probe's size."""
        figure = actwatch.plot_heatmaps(model, x, layers=["conv1", "pool2", "head"], probe=1)
        assert [a.get_title() for a in figure.axes] == ["conv1", "pool2"]
        # Drawn over the probe: the size of the 16 x 16 probe's overlay, whatever the layer's.
        expected = heatmap_overlay(np.zeros((2, 2), np.uint8), np.zeros((16, 16, 3), np.uint8))
        for axes in figure.axes:
            assert axes.get_images()[0].get_array().shape == expected.shape

    def test_plot_heatmaps_of_dense_layers_only(self, model: keras.Model, x: np.ndarray) -> None:
        with pytest.raises(ValueError, match=r"heatmaps need outputs with positions.*\['head'\]"):
            actwatch.plot_heatmaps(model, x, layers="head")

    @pytest.mark.parametrize("plot", [actwatch.plot_filters, actwatch.plot_heatmaps])
    def test_probe_out_of_range(self, plot: object, model: keras.Model, x: np.ndarray) -> None:
        message = r"`probe`: 6 is out of range for a batch of 6\. Pass 0 to 5"
        with pytest.raises(ValueError, match=message):
            plot(model, x, probe=6)  # type: ignore[operator]

    def test_dollar_signs_in_titles_are_plain_text(self) -> None:
        """A `$` in a layer path (legal on JAX and PyTorch) is not parsed as matplotlib math."""
        from actwatch.render import figures

        title = "cost$\\bad{$"  # broken math: drawing it as math would raise
        panels = [(title, np.zeros((4, 4, 3), np.uint8))]
        figure = figures.image_grid(panels, columns=3, tile=(2, 2))
        assert len(figure.axes) == 1
        figure.savefig(io.BytesIO(), format="png")
        assert figure.axes[0].get_title() == title.replace("$", r"\$")
        control = Figure()
        control.add_subplot().set_title(title)
        with pytest.raises(ValueError, match="Unknown symbol"):
            control.savefig(io.BytesIO(), format="png")


def test_notebook_functions_share_the_callback_pipeline(tmp_path: Path) -> None:
    """After a real fit, the notebook's statistics equal the callback's last check."""
    model = tiny_cnn()
    x, y = data(16)
    monitor = actwatch.ActivationMonitor(x[:4], str(tmp_path), images=False)
    model.fit(x, y, epochs=1, batch_size=16, callbacks=[monitor], verbose=0)
    stats = actwatch.activation_stats(model, x[:4])
    for name, s in monitor.last_stats.items():
        assert s.zero_fraction == pytest.approx(stats[name].zero_fraction, abs=1e-6)
        np.testing.assert_array_equal(s.dead, stats[name].dead)


def test_inference_view_on_request() -> None:
    """Review of issue 19: the one-off functions take `inference=True` (BatchNormalization on
    its moving statistics, as `predict` runs it); the default is the training view. The
    switch is the same Python on every backend (the views themselves are tested on each, in
    test_training_view.py), so this runs on JAX only."""
    if keras.backend.backend() != "jax":
        pytest.skip("backend-independent logic: runs in the JAX run only")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    h = keras.layers.ReLU(name="relu")(keras.layers.BatchNormalization(name="bn")(h))
    model = keras.Model(inputs, h)
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.full(4, 5.0, "float32"))  # far from the batch: all dead there
    x = data(4)[0]
    predicted = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))
    inferred = actwatch.get_activations(model, x, ["relu"], inference=True)["relu"]
    np.testing.assert_allclose(inferred, predicted, rtol=1e-5, atol=1e-5)
    stats = actwatch.activation_stats(model, x, ["relu"], inference=True)["relu"]
    assert stats.dead.tolist() == ref.dead(ref.to_npc(predicted)).tolist()
    trained = actwatch.get_activations(model, x, ["relu"])["relu"]  # the training view
    assert (trained.reshape(-1, 4).max(axis=0) > 0).all()
    with pytest.raises(TypeError, match="Received: inference='yes'"):
        actwatch.get_activations(model, x, inference="yes")  # type: ignore[arg-type]
