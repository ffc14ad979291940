"""Subclassed models and custom layers: sublayers found by attribute path, captured in
actwatch's own compiled call, statistics equal numpy on outputs computed by hand."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from PIL import Image

import actwatch
from actwatch import ActwatchWarning

from .test_models import assert_matches

L = keras.layers
RNG = np.random.default_rng(1)
BACKEND = keras.backend.backend()


def images(n: int = 16, size: int = 12) -> np.ndarray:
    return RNG.normal(size=(n, size, size, 3)).astype("float32")


@keras.saving.register_keras_serializable(package="actwatch_tests")
class ResBlock(L.Layer):
    """A residual block: relu(x + conv_b(conv_a(x)))."""

    def __init__(self, filters: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.filters = filters
        self.res_conv_a = L.Conv2D(filters, 3, padding="same", activation="relu", name="a")
        self.res_conv_b = L.Conv2D(filters, 3, padding="same", name="b")
        self.relu = L.ReLU(name="out")

    def call(self, x: Any) -> Any:
        return self.relu(x + self.res_conv_b(self.res_conv_a(x)))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package="actwatch_tests")
class Net(keras.Model):
    """Stem, `repeats` calls of one residual block (Python loop), pool, head."""

    def __init__(self, repeats: int = 1, twice: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.repeats = repeats
        self.twice = twice
        self.stem = L.Conv2D(4, 3, activation="relu")
        self.block = ResBlock(4)
        self.pool = L.MaxPooling2D()
        self.flat = L.Flatten()
        self.head = L.Dense(1)

    def call(self, x: Any) -> Any:
        x = self.stem(x)
        for _ in range(self.repeats):
            x = self.block(x)
        if self.twice:
            x = self.block(x)
        return self.head(self.flat(self.pool(x)))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "repeats": self.repeats, "twice": self.twice}


def numpy(x: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x))


def oracle(model: Net, x: np.ndarray) -> dict[str, np.ndarray]:
    """Each sublayer called by hand, as `Net.call` and `ResBlock.call` would (first calls)."""
    stem = model.stem(x)
    a = model.block.res_conv_a(stem)
    b = model.block.res_conv_b(a)
    out = model.block.relu(stem + b)
    x = out
    for _ in range(model.repeats - 1 + int(model.twice)):
        x = model.block(x)
    pool = model.pool(x)
    return {
        "stem": numpy(stem),
        "block/res_conv_a": numpy(a),
        "block/res_conv_b": numpy(b),
        "block/relu": numpy(out),
        "pool": numpy(pool),
    }


def no_wrapper_left(model: keras.Model) -> None:
    for _, layer in actwatch.check.tree.iter_layers(model):
        assert "call" not in vars(layer), layer.name
    assert "call" not in vars(model)


def test_subclassed_model_fit_matches_oracle_and_round_trips(tmp_path: Path) -> None:
    """A subclassed model with a Python loop: default layers by attribute path, checked mid-
    epoch in a real fit, stats equal numpy; the model saves, loads and predicts the same."""
    keras.utils.set_random_seed(0)
    model = Net(repeats=2)
    x = images()
    model(x[:1])
    model.compile(keras.optimizers.SGD(1e-3), "mse")
    monitor = actwatch.ActivationMonitor(x[:4], tmp_path / "logs", every_n_batches=1)
    model.fit(x, np.zeros((16, 1)), epochs=1, batch_size=8, callbacks=[monitor], verbose=0)
    assert monitor._check_failed.count == 0, "a check failed: see the log"
    assert list(monitor.last_stats) == [
        "stem",
        "block/res_conv_a",
        "block/res_conv_b",
        "block/relu",
        "pool",
    ]
    expected = oracle(model, x[:4])
    for path, stats in monitor.last_stats.items():
        assert_matches(stats, expected[path])
    no_wrapper_left(model)
    model.save(tmp_path / "net.keras")
    loaded = keras.saving.load_model(tmp_path / "net.keras")
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )


def test_custom_block_in_functional_and_sequential_models() -> None:
    """A custom block inside Functional and Sequential models: its sublayers are watched next
    to graph layers, in the notebook functions, equal to the sublayers called by hand."""
    keras.utils.set_random_seed(0)
    x = images(4)
    for kind in ("functional", "sequential"):
        block = ResBlock(4, name="block")
        stem = L.Conv2D(4, 3, activation="relu", name="stem")
        if kind == "functional":
            inputs = keras.Input((12, 12, 3))
            pooled = L.MaxPooling2D(name="pool")(block(stem(inputs)))
            model = keras.Model(inputs, L.Dense(1)(L.Flatten()(pooled)))
        else:
            model = keras.Sequential([keras.Input((12, 12, 3)), stem, block, L.MaxPooling2D()])
        s = stem(x)
        a = block.res_conv_a(s)
        out = numpy(block.relu(s + block.res_conv_b(a)))
        stats = actwatch.activation_stats(model, x)
        assert list(stats)[:4] == ["stem", "block/res_conv_a", "block/res_conv_b", "block/relu"]
        assert_matches(stats["block/res_conv_a"], numpy(a))
        assert_matches(stats["block/relu"], out)
        got = actwatch.get_activations(model, x, ["block/relu", "stem"])
        np.testing.assert_allclose(got["block/relu"], out, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["stem"], numpy(s), rtol=1e-5, atol=1e-5)
        no_wrapper_left(model)


def test_layer_called_twice_is_watched_at_its_first_call() -> None:
    """A sublayer a subclassed model calls twice is watched at its first call (documented)."""
    keras.utils.set_random_seed(0)
    model = Net(twice=True)
    x = images(4)
    model(x[:1])
    got = actwatch.get_activations(model, x, ["block/relu", "pool"])
    expected = oracle(model, x)
    np.testing.assert_allclose(got["block/relu"], expected["block/relu"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["pool"], expected["pool"], rtol=1e-5, atol=1e-5)


def test_image_probes_take_the_built_input_size(tmp_path: Path) -> None:
    """Image files for a subclassed model are resized to the shape it was built on; an
    unbuilt one is a clear error."""
    model = Net()
    paths = []
    for i in range(2):
        path = tmp_path / f"p{i}.png"
        Image.fromarray(RNG.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    with pytest.raises(ValueError, match=r"needs a built model.*model\.build\(input_shape\)"):
        actwatch.get_activations(model, paths, "stem")
    model(images(1))  # built on (1, 12, 12, 3): the images are resized to 12 x 12
    got = actwatch.get_activations(model, paths, "stem", preprocess=lambda a: a / 255.0)
    assert got["stem"].shape == (2, 10, 10, 4)


class WithUnused(Net):
    """`Net` with a layer `call` never runs."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.extra = L.Conv2D(2, 1)


def test_naming_a_layer_never_called_is_a_clear_error() -> None:
    """A named sublayer that `call` never runs: the error lists the layers that are called."""
    model = WithUnused()
    with warnings.catch_warnings():  # Keras: "looks like it has unbuilt state" (`extra`)
        warnings.simplefilter("ignore", UserWarning)
        model(images(1))
    with pytest.raises(
        ValueError,
        match=r"'extra' is never called by `WithUnused.call`.*called: \['stem', "
        r"'block/res_conv_a', 'block/res_conv_b', 'block/relu', 'block', 'pool', 'flat', "
        r"'head'\]",
    ):
        actwatch.activation_stats(model, images(2), "extra")
    no_wrapper_left(model)


@keras.saving.register_keras_serializable(package="actwatch_tests")
class Untraceable(keras.Model):
    """A `call` that turns a tensor into a Python bool: no tf.function or jax.jit trace."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conv = L.Conv2D(3, 3, activation="relu")
        self.head = L.Dense(1)

    def call(self, x: Any) -> Any:
        y = self.conv(x)
        if bool(keras.ops.max(y) > 1e9):
            y = y * 0.0
        return self.head(keras.ops.mean(y, axis=(1, 2)))


def ours(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, ActwatchWarning)]


def test_untraceable_call_falls_back_to_eager_with_one_warning(tmp_path: Path) -> None:
    """A `call` the backend's compiler cannot trace is checked eagerly with one
    ActwatchWarning (TensorFlow, JAX; PyTorch runs eagerly anyway), statistics right, no
    crash: in the notebook functions, and in a fit (not on JAX, whose fit refuses it)."""
    keras.utils.set_random_seed(0)
    model = Untraceable()
    x = images()
    model(x[:1])
    expected_warnings = 0 if BACKEND == "torch" else 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stats = actwatch.activation_stats(model, x[:4])
    assert len(ours(caught)) == expected_warnings, ours(caught)
    if expected_warnings:
        assert "eagerly" in ours(caught)[0] and "slower" in ours(caught)[0]
        assert "in user code" not in ours(caught)[0]  # the error's own message, not TF's frame
    assert_matches(stats["conv"], numpy(model.conv(x[:4])))
    no_wrapper_left(model)
    if BACKEND == "jax":
        return
    model.compile(keras.optimizers.SGD(1e-3), "mse", run_eagerly=True)
    monitor = actwatch.ActivationMonitor(x[:4], tmp_path, every_n_batches=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, np.zeros((16, 1)), epochs=2, batch_size=8, callbacks=[monitor], verbose=0)
    assert len(ours(caught)) == expected_warnings, ours(caught)
    assert monitor._check_failed.count == 0
    assert_matches(monitor.last_stats["conv"], numpy(model.conv(x[:4])))
    no_wrapper_left(model)


class Stack(keras.Model):
    """Blocks held in a list, applied in turn."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = L.Conv2D(4, 1)
        self.blocks = [ResBlock(4), ResBlock(4)]

    def call(self, x: Any) -> Any:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x


def test_layers_held_in_a_list_are_named_by_index() -> None:
    """Sublayers held in a list are named by attribute and index (`blocks/1/res_conv_a`),
    each block's own output is watched, and the plots take such paths."""
    keras.utils.set_random_seed(0)
    model = Stack()
    x = images(2)
    model(x[:1])
    stats = actwatch.activation_stats(model, x)
    assert list(stats) == [
        "stem",
        *(f"blocks/{i}/{name}" for i in (0, 1) for name in ("res_conv_a", "res_conv_b", "relu")),
    ]
    first = model.blocks[0](model.stem(x))
    assert_matches(stats["blocks/1/res_conv_a"], numpy(model.blocks[1].res_conv_a(first)))
    figure = actwatch.plot_filters(model, x, "blocks/1/relu")
    assert len(figure.axes) >= 1
    no_wrapper_left(model)


class Classifier(keras.Model):
    """A subclassed model around a Functional backbone (transfer learning, by hand)."""

    def __init__(self, base: keras.Model) -> None:
        super().__init__()
        self.base = base
        self.head = L.Dense(1)

    def call(self, x: Any) -> Any:
        return self.head(L.Flatten()(self.base(x)))


def test_custom_block_in_a_nested_backbone_and_a_backbone_in_a_subclassed_model() -> None:
    """A custom block inside a nested Functional backbone is watched at
    `backbone/block/...`; the same backbone held by a subclassed model at `base/block/...`."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    block = ResBlock(3, name="block")
    stem = L.Conv2D(3, 1, name="stem")
    backbone = keras.Model(inputs, block(stem(inputs)), name="backbone")
    outer = keras.Input((12, 12, 3))
    functional = keras.Model(outer, L.Dense(1)(L.Flatten()(backbone(outer))))
    subclassed = Classifier(backbone)
    x = images(2)
    subclassed(x[:1])
    expected = numpy(block.res_conv_a(stem(x)))
    for model, prefix in ((functional, "backbone"), (subclassed, "base")):
        got = actwatch.get_activations(model, x)
        assert list(got) == [
            f"{prefix}/{name}"
            for name in ("stem", "block/res_conv_a", "block/res_conv_b", "block/relu")
        ]
        np.testing.assert_allclose(
            got[f"{prefix}/block/res_conv_a"], expected, rtol=1e-5, atol=1e-5
        )
        no_wrapper_left(model)
