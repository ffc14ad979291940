"""Sharpness: the Hessian's top eigenvalue exact against numpy (plain and preconditioned by the
Adam family's state), the edge of stability of full-batch gradient descent, the stability
thresholds (by value, and by running the optimizers at them), the model and optimizer left
bit-identical, and the errors for inputs it cannot use."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import keras
import numpy as np
import pytest

from actwatch.check.sharpness import Sharpness, stability_threshold

RNG = np.random.default_rng(0)
N = 32
# Columns of different scales: the Hessian's top eigenvalue stands clear of the next.
X = (RNG.normal(size=(N, 3)) * np.array([2.0, 1.0, 0.5])).astype("float32")
Y = RNG.normal(size=(N, 1)).astype("float32")
WEIGHT = RNG.uniform(0.2, 2.0, size=N).astype("float32")


def numpy_of(value: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(value))


def linear(
    optimizer: keras.optimizers.Optimizer | None = None,
    *,
    kind: str = "functional",
    l2: float = 0.0,
) -> keras.Model:
    """Dense(1) on 3 features, mean squared error (a quadratic loss)."""
    keras.utils.set_random_seed(0)
    regularizer = keras.regularizers.L2(l2) if l2 else None
    dense = keras.layers.Dense(1, kernel_regularizer=regularizer, name="dense")
    if kind == "functional":
        inputs = keras.Input((3,))
        model = keras.Model(inputs, dense(inputs))
    elif kind == "sequential":
        model = keras.Sequential([keras.Input((3,)), dense])
    else:
        model = Linear(dense)
        model(X[:1])
    model.compile(optimizer=optimizer or keras.optimizers.SGD(0.01), loss="mse")
    return model


class Linear(keras.Model):
    """A subclassed model whose `call` takes no `training`."""

    def __init__(self, dense: keras.layers.Layer) -> None:
        super().__init__()
        self.dense = dense

    def call(self, x: Any) -> Any:
        return self.dense(x)


def numpy_hessian(weight: np.ndarray | None = None, l2: float = 0.0) -> np.ndarray:
    """The Hessian of mean (w_i (x_i k + b - y_i)^2) + l2 |k|^2 over (kernel, bias)."""
    a = np.concatenate([X, np.ones((N, 1), "float32")], axis=1).astype(np.float64)
    w = np.ones(N) if weight is None else weight.astype(np.float64)
    hessian = 2 * (a * w[:, None]).T @ a / N
    hessian[:3, :3] += 2 * l2 * np.eye(3)
    return hessian  # type: ignore[no-any-return]


def top(matrix: np.ndarray) -> float:
    return float(np.linalg.eigvalsh(matrix)[-1])


# -- exact against numpy ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["functional", "sequential", "subclassed"])
def test_sharpness_equals_numpy(kind: str) -> None:
    """A linear model under MSE: the sharpness is the top eigenvalue of 2 A^T A / n, on
    Functional, Sequential and subclassed models; warm-started, the next check converges in
    a couple of products."""
    model = linear(kind=kind)
    sharpness = Sharpness(model, X, Y)
    result = sharpness.measure()
    assert result.sharpness == pytest.approx(top(numpy_hessian()), rel=1e-3)
    assert 1 <= result.iterations_run <= 20
    again = sharpness.measure()
    assert again.sharpness == pytest.approx(top(numpy_hessian()), rel=1e-4)
    assert again.iterations_run <= 3
    assert result.seconds > 0


def test_sample_weights_and_weight_penalties() -> None:
    """The loss is the compiled one: sample weights and the kernel's L2 penalty are in the
    Hessian; only the labelled rows of `x` count."""
    model = linear(l2=0.5)
    extra = np.concatenate([X, 100 * np.ones((5, 3), "float32")])  # unlabelled rows
    result = Sharpness(model, extra, Y, WEIGHT).measure()
    assert result.sharpness == pytest.approx(top(numpy_hessian(WEIGHT, 0.5)), rel=1e-3)


def velocity(optimizer: Any, variable: Any, name: str) -> np.ndarray:
    slots = getattr(optimizer, name)
    return numpy_of(slots[optimizer._get_variable_index(variable)]).astype(np.float64).ravel()


def numpy_preconditioner(model: keras.Model) -> np.ndarray:
    """Each optimizer's P, written out from its update rule in Keras."""
    opt = model.optimizer
    t = int(numpy_of(opt.iterations))
    weights = model.trainable_variables
    if isinstance(opt, keras.optimizers.Adamax):
        u = np.concatenate([velocity(opt, w, "_u") for w in weights])
        return u + opt.epsilon  # type: ignore[no-any-return]
    name = "_velocity_hats" if getattr(opt, "amsgrad", False) else "_velocities"
    v = np.concatenate([velocity(opt, w, name) for w in weights])
    correction = np.sqrt(1 - opt.beta_2**t)
    if isinstance(opt, keras.optimizers.Nadam):
        return np.sqrt(v) / correction + opt.epsilon  # type: ignore[no-any-return]
    return (np.sqrt(v) + opt.epsilon) / correction  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: keras.optimizers.Adam(0.05),
        lambda: keras.optimizers.AdamW(0.05, weight_decay=0.01),
        lambda: keras.optimizers.Adam(0.05, amsgrad=True),
        lambda: keras.optimizers.Adamax(0.05),
        lambda: keras.optimizers.Nadam(0.05),
    ],
    ids=["adam", "adamw", "amsgrad", "adamax", "nadam"],
)
def test_preconditioned_equals_numpy(optimizer: Any) -> None:
    """After a few steps, the preconditioned sharpness is the top eigenvalue of
    P^-1/2 H P^-1/2 with P from the optimizer's second-moment state; before the first step
    there is none; the threshold is that of the preconditioned figure. (Its top two
    eigenvalues are close here, 0.89 apart for Adamax: power iteration needs more products
    than the default 20 to converge from a random start.)"""
    model = linear(optimizer())
    sharpness = Sharpness(model, X, Y, iterations=100)
    before = sharpness.measure()
    assert before.preconditioned is None and before.preconditioned_iterations_run == 0
    assert before.ratio is None
    model.fit(X, Y, batch_size=8, epochs=2, verbose=0, shuffle=False)
    result = sharpness.measure()
    scale = 1 / np.sqrt(numpy_preconditioner(model))
    expected = top(scale[:, None] * numpy_hessian() * scale[None, :])
    assert result.preconditioned == pytest.approx(expected, rel=1e-3)
    assert result.preconditioned_iterations_run < 100  # converged: residual <= 1e-3
    assert result.sharpness == pytest.approx(top(numpy_hessian()), rel=1e-3)
    assert result.threshold_of == "preconditioned"
    assert result.threshold == pytest.approx(stability_threshold(model.optimizer, 0.05))
    assert result.ratio == pytest.approx(result.preconditioned / result.threshold)
    assert result.scalars()["preconditioned_sharpness"] == result.preconditioned


# -- the edge of stability -------------------------------------------------------------------


def _benchmarks_common() -> ModuleType:
    """benchmarks/common.py, the edge-of-stability workload the benchmark also runs, loaded
    by its path (benchmarks/ is no package), wherever pytest runs from."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "common.py"
    spec = importlib.util.spec_from_file_location("actwatch_benchmarks_common", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gradient_descent_reaches_the_edge_of_stability() -> None:
    """Cohen et al. (2021): full-batch gradient descent on a tanh MLP regression at rate lr,
    from a sharpness well below 2/lr: the sharpness rises to 2/lr and then hovers there,
    while the loss keeps falling."""
    lr, steps, every = 0.4, 800, 50
    model, x, y = _benchmarks_common().teacher_regression(lr, samples=512)
    sharpness = Sharpness(model, x, y)
    # One epoch of the tiled data is `every` full-batch steps.
    xs, ys = np.tile(x, (every, 1)), np.tile(y, (every, 1))
    first_loss = float(model.evaluate(x, y, verbose=0))
    trace = []
    for _ in range(steps // every):
        trace.append(sharpness.measure())
        model.fit(xs, ys, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
    trace.append(sharpness.measure())
    edge = 2 / lr
    values = np.array([r.sharpness for r in trace])
    assert trace[0].threshold == pytest.approx(edge)
    assert values[0] < 0.8 * edge, values  # starts well below the edge
    assert values.max() > 0.95 * edge, values  # rises to it
    late = values[len(values) // 2 :]
    assert abs(np.median(late) - edge) < 0.1 * edge, values  # and hovers there
    assert values.max() < 1.15 * edge, values  # never far above it
    assert trace[-1].sharpness_x_lr == pytest.approx(trace[-1].sharpness * lr)
    assert float(model.evaluate(x, y, verbose=0)) < 0.25 * first_loss


# -- stability thresholds --------------------------------------------------------------------


def test_threshold_values() -> None:
    """2/lr for SGD, (2 + 2 beta)/lr with momentum, (2 + 2 beta)/((1 + 2 beta) lr) with
    Nesterov, (2 + 2 beta_1)/((1 - beta_1) lr) = 38/lr for Adam, AdamW and Adamax, the
    Nesterov form of it for Nadam, none for others; a loss-scale wrapper is looked through."""
    opt = keras.optimizers
    assert stability_threshold(opt.SGD(), 0.1) == pytest.approx(20)
    assert stability_threshold(opt.SGD(momentum=0.9), 0.1) == pytest.approx(38)
    assert stability_threshold(opt.SGD(momentum=0.9, nesterov=True), 0.1) == pytest.approx(
        3.8 / 0.28
    )
    assert stability_threshold(opt.SGD(nesterov=True), 0.1) == pytest.approx(20)
    assert stability_threshold(opt.Adam(), 1e-3) == pytest.approx(38_000)
    assert stability_threshold(opt.AdamW(), 1e-3) == pytest.approx(38_000)
    assert stability_threshold(opt.Adamax(beta_1=0.8), 1e-3) == pytest.approx(18_000)
    assert stability_threshold(opt.Nadam(), 1e-3) == pytest.approx(3.8 / (2.8 * 0.1e-3))
    assert stability_threshold(opt.LossScaleOptimizer(opt.Adam()), 1e-3) == pytest.approx(38_000)
    assert stability_threshold(opt.RMSprop(), 1e-3) is None
    assert stability_threshold(opt.Lion(), 1e-3) is None
    assert stability_threshold(opt.SGD(), 0.0) is None


@pytest.mark.parametrize(
    "momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)], ids=["sgd", "heavy", "nag"]
)
def test_thresholds_bound_keras_steps(momentum: float, nesterov: bool) -> None:
    """On loss w^2 (sharpness 2, as measured), Keras' own SGD converges at 0.9 times the rate
    where the threshold is 2 and diverges at 1.1 times it."""
    critical = stability_threshold(keras.optimizers.SGD(momentum=momentum, nesterov=nesterov), 1)
    assert critical is not None
    for factor, converges in ((0.9, True), (1.1, False)):
        lr = factor * critical / 2
        model = keras.Sequential(
            [keras.Input((1,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")]
        )
        model.compile(keras.optimizers.SGD(lr, momentum=momentum, nesterov=nesterov), "mse")
        one, zero = np.ones((1, 1), "float32"), np.zeros((1, 1), "float32")
        result = Sharpness(model, one, zero).measure()
        assert result.sharpness == pytest.approx(2.0, rel=1e-5)
        assert result.threshold_of == "sharpness"
        assert result.ratio == pytest.approx(factor, rel=1e-5)
        model.fit(np.ones((200, 1)), np.zeros((200, 1)), batch_size=1, verbose=0, shuffle=False)
        w = abs(float(numpy_of(model.weights[0])[0, 0]))
        if converges:
            assert w < 1e-3, (factor, w)
        else:
            assert not w < 1e3, (factor, w)  # large, or overflowed to inf or NaN


# -- nothing changes -------------------------------------------------------------------------


def state(model: keras.Model) -> list[np.ndarray]:
    """Every variable of the model (weights, batch statistics, seed states), its metrics
    and its optimizer (slots, iterations, rate)."""
    variables = [*model.variables, *model.metrics_variables, *model.optimizer.variables]
    return [numpy_of(v).copy() for v in variables]


@pytest.mark.parametrize("training", [False, True], ids=["inference", "training"])
def test_measure_changes_nothing(training: bool) -> None:
    """With dropout, batch normalization, a weight penalty and Adam mid-run, `measure`
    leaves every variable bit-identical, and the global random streams where they were."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((3,))
    h = keras.layers.Dense(8, activation="tanh", kernel_regularizer="l2")(inputs)
    h = keras.layers.Dropout(0.5)(h)
    h = keras.layers.BatchNormalization()(h)
    model = keras.Model(inputs, keras.layers.Dense(1)(h))
    model.compile(keras.optimizers.Adam(0.01), "mse", metrics=["mae"])
    model.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    sharpness = Sharpness(model, X, Y, training=training)
    before = state(model)
    keras.utils.set_random_seed(7)
    numpy_state = np.random.get_state()[1].copy()  # type: ignore[index]
    expected = numpy_of(keras.random.uniform((4,)))
    keras.utils.set_random_seed(7)
    result = sharpness.measure()
    assert result.preconditioned is not None and np.isfinite(result.sharpness)
    after = state(model)
    assert len(before) == len(after)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(numpy_of(keras.random.uniform((4,))), expected)
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state)  # type: ignore[index]


def test_frozen_layer_starts_afresh() -> None:
    """Freezing a layer between checks changes the weights the Hessian is taken by: the
    next check starts afresh on those that remain."""
    model = linear()
    sharpness = Sharpness(model, X, Y)
    sharpness.measure()
    model.get_layer("dense").trainable = False
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    with pytest.raises(ValueError, match="no trainable weights"):
        Sharpness(model, X, Y)
    model.get_layer("dense").trainable = True
    assert sharpness.measure().sharpness == pytest.approx(top(numpy_hessian()), rel=1e-3)


def test_learning_rate_given_or_read() -> None:
    """`measure()` reads the optimizer's rate; `measure(lr)` uses the one given."""
    model = linear(keras.optimizers.SGD(0.25))
    sharpness = Sharpness(model, X, Y)
    assert sharpness.measure().threshold == pytest.approx(8.0)
    result = sharpness.measure(0.5)
    assert result.threshold == pytest.approx(4.0)
    assert result.sharpness_x_lr == pytest.approx(0.5 * result.sharpness)
    assert result.scalars() == {
        "sharpness": result.sharpness,
        "sharpness_x_lr": result.sharpness_x_lr,
        "sharpness_threshold": result.threshold,
    }


# -- errors ----------------------------------------------------------------------------------


def test_errors_at_construction() -> None:
    """Unusable inputs are refused at once, each with what was expected and received."""
    model = linear()
    with pytest.raises(ValueError, match=r"Sharpness needs labels.*Received: y=None"):
        Sharpness(model, X, None)
    uncompiled = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="was not compiled with one"):
        Sharpness(uncompiled, X, Y)
    unbuilt = keras.Sequential([keras.layers.Dense(1)])
    unbuilt.compile(loss="mse")
    with pytest.raises(ValueError, match="is not built"):
        Sharpness(unbuilt, X, Y)
    with pytest.raises(TypeError, match=r"`keras\.Model`"):
        Sharpness(keras.layers.Dense(1), X, Y)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`x` must be an array"):
        Sharpness(model, iter([X]), Y)
    with pytest.raises(ValueError, match="do not go into the compiled loss"):
        Sharpness(model, X, np.zeros((N, 2, 2, 2), "float32"))
    with pytest.raises(ValueError, match="`x` needs at least that many"):
        Sharpness(model, X[:4], Y)
    with pytest.raises(ValueError, match="one weight per label"):
        Sharpness(model, X, Y, WEIGHT[:3])
    with pytest.raises(ValueError, match=r"`iterations`.*Received: iterations=0"):
        Sharpness(model, X, Y, iterations=0)
    with pytest.raises(ValueError, match=r"`tolerance`.*Received: tolerance=-1"):
        Sharpness(model, X, Y, tolerance=-1)


def test_monitor_writes_the_sharpness_of_each_check(tmp_path: Any) -> None:
    """`ActivationMonitor(sharpness=True)` with labelled `stats_data`: `network/sharpness`,
    its product with the rate and the threshold at every check, the last one equal to an
    independent measure of the trained model; without labels, a ValueError before training."""
    import actwatch

    from .helpers import data, read_events, tiny_cnn

    x, y = data(48)
    model = tiny_cnn(lr=1e-2)
    monitor = actwatch.ActivationMonitor(
        x[:2], str(tmp_path), stats_data=(x[:32], y[:32]), sharpness=True, images=False
    )
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[monitor])
    scalars = read_events(tmp_path).scalars
    steps = [s for s, _ in scalars["network/zero_fraction"]]
    sharp = dict(scalars["network/sharpness"])
    assert sorted(sharp) == steps == [0, 3, 6]
    assert all(np.isfinite(v) and v > 0 for v in sharp.values())
    lr = dict(scalars["network/learning_rate"])
    for step, value in scalars["network/sharpness_x_lr"]:
        assert value == pytest.approx(sharp[step] * lr[step], rel=1e-5)
    assert dict(scalars["network/sharpness_threshold"])[6] == pytest.approx(38 / lr[6], rel=1e-5)
    assert "network/preconditioned_sharpness" in scalars  # Adam, once it has stepped
    last = monitor.last_sharpness
    assert last is not None and monitor.timings["sharpness"] > 0
    again = Sharpness(model, x[:32], y[:32], iterations=100).measure()
    assert last.sharpness == pytest.approx(again.sharpness, rel=0.05)
    from actwatch.events.runs import read_run
    from actwatch.report import figures

    figure = figures.learning_figure(read_run(tmp_path), {})
    assert figure is not None  # update ratios, gradient RMS, then the sharpness and its edge
    panel = figure.axes[-1]
    assert panel.get_title() == "sharpness against the stability edge"
    drawn = {line.get_label(): list(line.get_ydata()) for line in panel.get_lines()}
    assert drawn[figures.SHARPNESS_CURVES[0][1]] == pytest.approx([sharp[s] for s in steps])
    assert figures.SHARPNESS_CURVES[2][1] in drawn
    with pytest.raises(ValueError, match=r"`sharpness`.*needs labels.*stats_data=\(x, y\)"):
        actwatch.ActivationMonitor(x[:2], str(tmp_path), stats_data=x[:32], sharpness=True)
