"""Gradients of activations: exact against a numpy reference, GraMa's dormancy, the notebook
function, the errors without a loss or with labels that do not fit, and the check's one
compiled call (forward and backward) on the labelled samples alone."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

import actwatch
from actwatch import ActwatchWarning
from actwatch.check.extract import Extractor
from actwatch.check.gradients import GradientStats, LossGradients
from actwatch.check.pipeline import CheckPipeline

from .helpers import data, read_events, tiny_cnn
from .test_subclassed import Untraceable, ours

RNG = np.random.default_rng(0)
XD = RNG.normal(size=(6, 4)).astype("float32")
YD = RNG.normal(size=(6, 3)).astype("float32")


def dense_net() -> keras.Model:
    """4 -> Dense(5, tanh) 'h' -> Dense(3) 'out', mean squared error."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    h = keras.layers.Dense(5, activation="tanh", name="h")(inputs)
    outputs = keras.layers.Dense(3, name="out")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def numpy_gradient(model: keras.Model, weight: np.ndarray | None = None) -> np.ndarray:
    """dL/dh of L = mean over samples of (weighted) mean over outputs of (out - y)^2, by hand."""
    w1, b1 = (keras.ops.convert_to_numpy(v) for v in model.get_layer("h").weights)
    w2, b2 = (keras.ops.convert_to_numpy(v) for v in model.get_layer("out").weights)
    h = np.tanh(XD @ w1 + b1)
    out = h @ w2 + b2
    per_sample = np.ones(len(XD)) if weight is None else weight
    scale = per_sample[:, None] * 2 / (out.shape[1] * len(XD))
    return (scale * (out - YD)) @ w2.T  # type: ignore[no-any-return]


def test_get_gradients_equals_numpy() -> None:
    """`get_gradients(model, x, y)`: `{path: dLoss/d output}`, equal to the hand-derived
    gradient, with and without sample weights; the model's weights are untouched."""
    model = dense_net()
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.weights]
    grads = actwatch.get_gradients(model, XD, YD, ["h"])
    assert list(grads) == ["h"] and grads["h"].shape == (6, 5)
    np.testing.assert_allclose(grads["h"], numpy_gradient(model), rtol=1e-4, atol=1e-7)
    weight = np.array([1, 0, 2, 1, 0.5, 1], dtype="float32")
    weighted = actwatch.get_gradients(model, XD, YD, ["h"], sample_weight=weight)
    np.testing.assert_allclose(weighted["h"], numpy_gradient(model, weight), rtol=1e-4, atol=1e-7)
    for old, new in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))


def test_gradient_rms_in_a_fit_equals_numpy(tmp_path: Path) -> None:
    """With `stats_data=(x, y)` each check writes `gradient_rms/{layer}`: the RMS of the
    hand-derived gradient for the weights of that check (the last one: after training)."""
    model = dense_net()
    monitor = actwatch.ActivationMonitor(
        XD[:2], tmp_path, layers=["h"], stats_data=(XD, YD), images=False
    )
    model.fit(XD, YD, batch_size=6, epochs=1, verbose=0, callbacks=[monitor])
    expected = float(np.sqrt(np.mean(numpy_gradient(model) ** 2)))
    assert monitor.last_gradients["h"].rms == pytest.approx(expected, rel=1e-4)
    scalars = read_events(tmp_path).scalars
    assert [s for s, _ in scalars["gradient_rms/h"]] == [0, 1]
    assert scalars["gradient_rms/h"][-1][1] == pytest.approx(expected, rel=1e-4)
    assert "gradient_dormant_fraction/h" in scalars


def test_grama_flags_the_filter_whose_outgoing_weights_are_zero(tmp_path: Path) -> None:
    """conv1's filter 1 feeds conv2 through zero weights (conv2 frozen): it fires, so the
    activation tests call it alive, but it gets no gradient, and GraMa calls it dormant."""
    x, y = data(32)
    model = tiny_cnn(filters=(4, 8))
    conv2 = model.get_layer("conv2")
    kernel = keras.ops.convert_to_numpy(conv2.kernel).copy()
    kernel[:, :, 1, :] = 0.0
    conv2.kernel.assign(kernel)
    conv2.trainable = False
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    monitor = actwatch.ActivationMonitor(
        x[:2], tmp_path, layers=["conv1", "conv2"], stats_data=(x, y), images=False
    )
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[monitor])
    conv1 = monitor.last_gradients["conv1"]
    assert isinstance(conv1, GradientStats)
    assert conv1.filter_mean_abs[1] == 0.0 and conv1.dormant.tolist() == [
        False,
        True,
        False,
        False,
    ]
    assert not monitor.last_stats["conv1"].dead[1]  # it fires
    assert conv1.dormant_fraction == 0.25
    fractions = read_events(tmp_path).scalars["gradient_dormant_fraction/conv1"]
    assert [v for _, v in fractions] == [0.25, 0.25]


def test_no_loss_is_a_clear_error() -> None:
    """A model compiled without a loss (or never compiled) has nothing to differentiate."""
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="h")(inputs))
    with pytest.raises(ValueError, match=r"need the model's loss.*model.compile\(loss=...\)"):
        actwatch.get_gradients(model, XD, YD, ["h"])


def test_labels_that_do_not_fit_are_a_clear_error(tmp_path: Path) -> None:
    """`stats_data=(x, y)` with fewer labels than samples fails before training."""
    model = dense_net()
    monitor = actwatch.ActivationMonitor(
        XD[:2], tmp_path, layers=["h"], stats_data=(XD, YD[:4]), images=False
    )
    with pytest.raises(ValueError, match=r"stats_data.*y has 4 samples but x has 6"):
        model.fit(XD, YD, epochs=1, verbose=0, callbacks=[monitor])


class OldLossNet(keras.Model):  # type: ignore[misc]
    """The dense net, subclassed, with a `compute_loss` override written before Keras 3.3
    (no `training` argument) and no compiled loss."""

    def __init__(self) -> None:
        super().__init__()
        self.h = keras.layers.Dense(5, activation="tanh", name="h")
        self.out = keras.layers.Dense(3, name="out")

    def call(self, x: Any) -> Any:
        return self.out(self.h(x))

    def compute_loss(
        self, x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None
    ) -> Any:
        return keras.ops.mean(keras.ops.square(y_pred - keras.ops.convert_to_tensor(y)))


def test_sequential_and_subclassed_models() -> None:
    """A Sequential model, and a subclassed one whose own `compute_loss` takes no
    `training`: the hand-derived gradient, the weights untouched."""
    keras.utils.set_random_seed(0)
    sequential = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(5, activation="tanh", name="h"),
            keras.layers.Dense(3, name="out"),
        ]
    )
    sequential.compile(optimizer="sgd", loss="mse")
    subclassed = OldLossNet()
    subclassed(XD[:1])
    subclassed.compile(optimizer="sgd")
    for model in (sequential, subclassed):
        before = [keras.ops.convert_to_numpy(v).copy() for v in model.weights]
        grads = actwatch.get_gradients(model, XD, YD, ["h"])
        assert list(grads) == ["h"], model.name
        np.testing.assert_allclose(grads["h"], numpy_gradient(model), rtol=1e-4, atol=1e-7)
        for old, new in zip(before, model.weights, strict=True):
            np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))


def test_a_check_with_labels_is_one_compiled_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With `stats_data=(x, y)` each check is one call of one runner, forward and backward,
    traced once (TensorFlow, JAX; PyTorch runs eagerly), and its gradient figures are those of
    `get_gradients` on the same data."""
    calls: list[bool] = []
    traces: list[int] = []
    runner, forward = Extractor._runner, LossGradients.forward

    def counted_runner(self: Extractor, reduce: Any, gradients: Any) -> Any:
        run = runner(self, reduce, gradients)
        return lambda *data: (calls.append(gradients is not None), run(*data))[1]

    def counted_forward(self: LossGradients, *args: Any, **kwargs: Any) -> Any:
        traces.append(1)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Extractor, "_runner", counted_runner)
    monkeypatch.setattr(LossGradients, "forward", counted_forward)
    model = dense_net()
    monitor = actwatch.ActivationMonitor(
        XD[:2], tmp_path, layers=["h"], stats_data=(XD, YD), images=False
    )
    model.fit(XD, YD, batch_size=6, epochs=1, verbose=0, callbacks=[monitor])
    assert calls == [True, True]  # two checks, each one call with the gradients
    assert len(traces) == (2 if keras.backend.backend() == "torch" else 1)
    monkeypatch.undo()
    grads = actwatch.get_gradients(model, XD, YD, ["h"])["h"]
    got = monitor.last_gradients["h"]
    assert got.rms == pytest.approx(float(np.sqrt(np.mean(grads**2))), rel=1e-5)
    np.testing.assert_allclose(got.filter_mean_abs, np.abs(grads).mean(axis=0), rtol=1e-5)


def test_the_probes_do_not_enter_the_loss() -> None:
    """The check's batch is the labelled statistics samples, then the probes: the loss is
    computed on the labelled samples alone, so probes that would change it if they entered
    (huge, or a copy of a sample) leave the gradient figures as they are."""
    model = dense_net()
    watched = actwatch.check.layers.resolve_layers(model, ["h"])
    weight = np.array([1, 0, 2, 1, 0.5, 1], dtype="float32")
    expected = numpy_gradient(model, weight)
    for probes in (1000 * XD[:2], XD[:3]):
        pipeline = CheckPipeline(
            model, watched, stats_samples=len(XD), draw=False, labels=(YD, weight)
        )
        got = pipeline.run(np.concatenate([XD, probes])).gradients["h"]
        assert got.rms == pytest.approx(float(np.sqrt(np.mean(expected**2))), rel=1e-4)
        np.testing.assert_allclose(
            got.filter_mean_abs, np.abs(expected).mean(axis=0), rtol=1e-4, atol=1e-8
        )


def test_failing_gradients_cost_the_gradients_not_the_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A failure of the backward pass is logged once; every check still brings back its
    activation statistics, without gradients, and the fit goes on."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no backward pass today")

    monkeypatch.setattr(LossGradients, "forward", broken)
    model = dense_net()
    monitor = actwatch.ActivationMonitor(
        XD[:2], tmp_path, layers=["h"], stats_data=(XD, YD), images=False
    )
    with caplog.at_level("WARNING", logger="actwatch"):
        model.fit(XD, YD, batch_size=6, epochs=2, verbose=0, callbacks=[monitor])
    assert monitor._gradients_failed.count == 1 and monitor._check_failed.count == 0
    assert "gradients of activations failed (RuntimeError" in caplog.text
    assert "no backward pass today" in caplog.text
    assert monitor.last_gradients == {} and "h" in monitor.last_stats
    scalars = read_events(tmp_path).scalars
    assert [s for s, _ in scalars["zero_fraction/h"]] == [0, 1, 2]
    assert "gradient_rms/h" not in scalars


@pytest.mark.skipif(
    keras.backend.backend() == "jax", reason="jax.grad, like jax.jit, needs a traceable call"
)
def test_untraceable_call_gets_its_gradients_eagerly(tmp_path: Path) -> None:
    """A `call` the compiler cannot trace gets its gradients in the eager check (one
    ActwatchWarning), equal to those of the same network written traceably."""
    keras.utils.set_random_seed(0)
    x = RNG.normal(size=(8, 12, 12, 3)).astype("float32")
    y = RNG.normal(size=(8, 1)).astype("float32")
    model, twin = Untraceable(), Traceable()
    model(x[:1])
    twin(x[:1])
    twin.set_weights(model.get_weights())
    for m in (model, twin):
        m.compile(keras.optimizers.SGD(1e-3), "mse", run_eagerly=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grads = actwatch.get_gradients(model, x, y, ["conv"])["conv"]
    assert len(ours(caught)) == (0 if keras.backend.backend() == "torch" else 1)
    expected = actwatch.get_gradients(twin, x, y, ["conv"])["conv"]
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(grads, expected, rtol=1e-4, atol=1e-8)
    monitor = actwatch.ActivationMonitor(
        x[:2], tmp_path, layers=["conv"], stats_data=(x, y), images=False
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ActwatchWarning)
        model.fit(x, y, epochs=1, batch_size=8, callbacks=[monitor], verbose=0)
    assert monitor._check_failed.count == 0 and monitor._gradients_failed.count == 0
    assert monitor.last_gradients["conv"].rms > 0


class Traceable(Untraceable):
    """`Untraceable` without the test its `call` turns into a Python bool (never true here)."""

    def call(self, x: Any) -> Any:
        return self.head(keras.ops.mean(self.conv(x), axis=(1, 2)))
