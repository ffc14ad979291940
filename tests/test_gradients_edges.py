"""Gradients of activations at the edges: weight and activity regularizers, a nested backbone
with labels, statistics unchanged by labels, multi-input with sample weights, no wrapper left
after a failing check, the careful rerun, metrics left alone, and failures reported as what
they are (from a review of the one-compiled-call change)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

import actwatch
from actwatch.check.gradients import LossGradients
from actwatch.check.layers import resolve_layers
from actwatch.check.pipeline import CheckPipeline

from .helpers import data, tiny_cnn

L = keras.layers
RNG = np.random.default_rng(1)
XD = RNG.normal(size=(6, 4)).astype("float32")
YD = RNG.normal(size=(6, 3)).astype("float32")


def _np(v: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(v))


def _dense_net(**h_kwargs: Any) -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    h = L.Dense(5, activation="tanh", name="h", **h_kwargs)(inputs)
    outputs = L.Dense(3, name="out", kernel_regularizer=h_kwargs.get("kernel_regularizer"))(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def _mse_grad_h(model: keras.Model, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dL/dh of mean over samples and outputs of (out - y)^2 (the compiled mse)."""
    w1, b1 = (_np(v) for v in model.get_layer("h").weights)
    w2, b2 = (_np(v) for v in model.get_layer("out").weights)
    h = np.tanh(x @ w1 + b1)
    out = h @ w2 + b2
    return (2 * (out - y) / (out.shape[1] * len(x))) @ w2.T  # type: ignore[no-any-return]


def test_weight_regularized_model_gets_its_gradients(tmp_path: Path) -> None:
    """A model with a kernel regularizer gets its gradients: the loss's weight penalties read
    the weights from the `StatelessScope`'s state (an empty scope gave them None). The
    penalty does not depend on the activations, so the gradient is the plain mse one."""
    model = _dense_net(kernel_regularizer=keras.regularizers.L2(0.01))
    grads = actwatch.get_gradients(model, XD, YD, ["h"])["h"]
    np.testing.assert_allclose(grads, _mse_grad_h(model, XD, YD), rtol=1e-4, atol=1e-7)
    monitor = actwatch.ActivationMonitor(
        XD[:2], tmp_path, layers=["h"], stats_data=(XD, YD), images=False
    )
    model.fit(XD, YD, batch_size=6, epochs=1, verbose=0, callbacks=[monitor])
    assert monitor._check_failed.count == 0 and monitor._gradients_failed.count == 0
    assert "h" in monitor.last_gradients


def test_activity_regularizer_is_left_out_as_documented() -> None:
    """Training's loss adds an activity regularizer's penalty (`l2 * sum(h^2) / batch`); the
    check's loss leaves activity penalties and `add_loss` out (README: they would count the
    probes that share the call): the gradient is the plain mse one."""
    model = _dense_net(activity_regularizer=keras.regularizers.L2(0.5))
    grads = actwatch.get_gradients(model, XD, YD, ["h"])["h"]
    np.testing.assert_allclose(grads, _mse_grad_h(model, XD, YD), rtol=1e-4, atol=1e-7)


def _fields(s: Any) -> dict[str, Any]:
    return {f.name: getattr(s, f.name) for f in dataclasses.fields(s)}


def test_statistics_and_maps_are_the_same_with_labels() -> None:
    """With labels the check's call is the whole model (perturbed by zeros) instead of the
    tapped extractor: the statistics and the maps are those of the check without labels."""
    x, y = data(12)
    probes = data(3, seed=5)[0]
    model = tiny_cnn()
    watched = resolve_layers(model, None, probes)
    feed = np.concatenate([x, probes])
    plain = CheckPipeline(model, watched, stats_samples=len(x), draw=True, topk=2).run(feed)
    labelled = CheckPipeline(
        model, watched, stats_samples=len(x), draw=True, topk=2, labels=(y, None)
    ).run(feed)
    assert labelled.gradients and not plain.gradients
    assert set(plain.stats) == set(labelled.stats) and set(plain.maps) == set(labelled.maps)
    _same_stats(plain.stats, labelled.stats)
    for path in plain.maps:
        diff = np.abs(plain.maps[path].astype(int) - labelled.maps[path].astype(int))
        assert diff.max() <= 1, path


def _nested() -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 3))
    c1 = L.Conv2D(4, 3, activation="relu", name="c1")(inputs)
    c2 = L.Conv2D(5, 3, activation="tanh", name="c2")(c1)
    base = keras.Model(inputs, c2, name="base")
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), base, L.GlobalAveragePooling2D(name="gap"), L.Dense(3, name="out")]
    )
    model.compile(keras.optimizers.SGD(1e-3), "mse")
    return model


def _nested_reference(model: keras.Model, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dL/d(c2's output): through GAP and the Dense head, by hand."""
    pred = _np(model(x, training=False))
    w, _ = (_np(v) for v in model.get_layer("out").weights)
    d_pooled = (2 * (pred - y) / (pred.shape[1] * len(x))) @ w.T  # (N, 5)
    return np.broadcast_to(d_pooled[:, None, None, :] / 16.0, (len(x), 4, 4, 5))


def _instance_calls(model: keras.Model) -> list[str]:
    out = []
    for layer in [model, *model._flatten_layers(include_self=False)]:
        if "call" in vars(layer):
            out.append(layer.name)
    return out


def test_nested_backbone_with_labels(tmp_path: Path) -> None:
    """Layers inside a nested base get exact, non-zero gradients, in get_gradients and in a
    fit's check with probes after the labelled rows; nothing left on the model; the model
    saves and loads."""
    x = RNG.normal(size=(6, 8, 8, 3)).astype("float32")
    y = RNG.normal(size=(6, 3)).astype("float32")
    model = _nested()
    nodes = {ly.name: len(ly._inbound_nodes) for ly in model._flatten_layers()}
    grads = actwatch.get_gradients(model, x, y, ["base/c1", "base/c2"])
    np.testing.assert_allclose(
        grads["base/c2"], _nested_reference(model, x, y), rtol=1e-4, atol=1e-7
    )
    assert np.abs(grads["base/c1"]).max() > 0
    monitor = actwatch.ActivationMonitor(
        x[:2] * 100, tmp_path, layers=["base/c1", "base/c2"], stats_data=(x, y), images=False
    )
    model.fit(x, y, batch_size=6, epochs=1, verbose=0, callbacks=[monitor])
    assert monitor._check_failed.count == 0
    expected = _nested_reference(model, x, y)
    got = monitor.last_gradients["base/c2"]
    assert got.rms == pytest.approx(float(np.sqrt(np.mean(expected**2))), rel=1e-4)
    np.testing.assert_allclose(
        got.filter_mean_abs, np.abs(expected).mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-9
    )
    assert monitor.last_gradients["base/c1"].rms > 0
    assert _instance_calls(model) == []
    assert {ly.name: len(ly._inbound_nodes) for ly in model._flatten_layers()} == nodes
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(_np(loaded(x)), _np(model(x)), rtol=1e-5, atol=1e-6)


def test_multi_input_with_sample_weight_and_probes() -> None:
    """Two inputs, sample weights, probes after the labelled rows: the hand gradient."""
    keras.utils.set_random_seed(0)
    a, b = keras.Input((4,), name="a"), keras.Input((2,), name="b")
    h = L.Dense(5, activation="tanh", name="h")(L.Concatenate()([a, b]))
    model = keras.Model([a, b], L.Dense(3, name="out")(h))
    model.compile("sgd", "mse")
    xa, xb = XD, RNG.normal(size=(6, 2)).astype("float32")
    weight = np.array([1, 0, 2, 1, 0.5, 1], dtype="float32")
    w1, b1 = (_np(v) for v in model.get_layer("h").weights)
    w2, b2 = (_np(v) for v in model.get_layer("out").weights)
    hv = np.tanh(np.concatenate([xa, xb], axis=1) @ w1 + b1)
    out = hv @ w2 + b2
    expected = (weight[:, None] * 2 * (out - YD) / (3 * 6)) @ w2.T
    watched = resolve_layers(model, ["h"], [xa[:1], xb[:1]])
    pipeline = CheckPipeline(model, watched, stats_samples=6, draw=False, labels=(YD, weight))
    feed = [np.concatenate([xa, 50 * xa[:2]]), np.concatenate([xb, 50 * xb[:2]])]
    got = pipeline.run(feed).gradients["h"]
    assert got.rms == pytest.approx(float(np.sqrt(np.mean(expected**2))), rel=1e-4)
    np.testing.assert_allclose(got.filter_mean_abs, np.abs(expected).mean(axis=0), rtol=1e-4)


def test_a_failing_backward_pass_leaves_no_wrapper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure inside the gradient call (wrappers installed) leaves no instance `call`."""
    original = LossGradients.forward

    def broken(self: LossGradients, call: Any, x: Any, *labels: Any) -> Any:
        original(self, call, x, *labels)
        raise RuntimeError("after the forward pass")

    monkeypatch.setattr(LossGradients, "forward", broken)
    x, y = data(8)
    model = tiny_cnn()
    monitor = actwatch.ActivationMonitor(x[:2], tmp_path, stats_data=(x, y), images=False)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[monitor])
    assert monitor.last_stats and monitor.last_gradients == {}
    assert _instance_calls(model) == []


def _same_stats(a: Any, b: Any) -> None:
    for path in a:
        fa, fb = _fields(a[path]), _fields(b[path])
        for name, value in fa.items():
            if value is None or isinstance(value, (bool, int, str)):
                assert fb[name] == value, (path, name)
            else:
                np.testing.assert_allclose(
                    np.asarray(fb[name], dtype=float),
                    np.asarray(value, dtype=float),
                    rtol=1e-5,
                    atol=1e-6,
                    equal_nan=True,
                    err_msg=f"{path}.{name}",
                )


def test_careful_rerun_with_labels() -> None:
    """A check whose fast statistics are not `ok` (values ~1e37, whose squares overflow) is
    rerun carefully on the labelled pipeline's extractor (the whole model): the same
    statistics as without labels, and the gradient figures of the first call are there."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    h = L.Dense(5, name="h")(inputs)  # linear: huge inputs overflow to +-Inf
    model = keras.Model(inputs, L.Dense(3, name="out")(h))
    model.compile("sgd", "mse")
    x = XD.copy()
    x[0] *= 1e38
    watched = resolve_layers(model, ["h"], x[:1])
    feed = np.concatenate([x, XD[:2]])
    plain_pipeline = CheckPipeline(model, watched, stats_samples=6, draw=False)
    plain = plain_pipeline.run(feed)
    assert plain_pipeline._run_careful is not None  # huge values: not `ok`, rerun carefully
    labelled_pipeline = CheckPipeline(
        model, watched, stats_samples=6, draw=False, labels=(YD, None)
    )
    labelled = labelled_pipeline.run(feed)
    assert labelled_pipeline._run_careful is not None  # the careful path ran
    _same_stats(plain.stats, labelled.stats)
    assert "h" in labelled.gradients


def test_a_labelled_check_leaves_metrics_and_weights_alone() -> None:
    """The check's loss runs in a StatelessScope: metric variables (loss tracker, compiled
    metrics, per-output loss trackers) and weights are what they were."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    h = L.Dense(5, activation="tanh", name="h")(inputs)
    model = keras.Model(inputs, [L.Dense(3, name="o1")(h), L.Dense(3, name="o2")(h)])
    model.compile("sgd", ["mse", "mae"], metrics=[["mae"], ["mse"]])
    model.fit(XD, [YD, YD], epochs=1, verbose=0)
    before = [_np(v).copy() for v in model.metrics_variables + model.variables]
    watched = resolve_layers(model, ["h"], XD[:1])
    pipeline = CheckPipeline(model, watched, stats_samples=6, draw=False, labels=([YD, YD], None))
    result = pipeline.run(np.concatenate([XD, XD[:2]]))
    assert result.gradients["h"].rms > 0
    after = [_np(v) for v in model.metrics_variables + model.variables]
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(old, new)


def test_a_failing_check_is_not_reported_as_failing_gradients(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With labels, a failure of the check itself (here the statistics' reduction, which the
    rerun without gradients hits again) is said at WARNING as the check's failure, not as the
    gradients' (which had their own warn-once and would have spent the check's)."""
    import actwatch.check.pipeline

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("statistics broken")

    monkeypatch.setattr(actwatch.check.pipeline, "reduce_layer", broken)
    model = _dense_net()
    monitor = actwatch.ActivationMonitor(
        XD[:2], tmp_path, layers=["h"], stats_data=(XD, YD), images=False
    )
    with caplog.at_level("WARNING", logger="actwatch"):
        model.fit(XD, YD, batch_size=6, epochs=1, verbose=0, callbacks=[monitor])
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert monitor.last_stats == {}  # no check succeeded
    assert any("the check at step" in m for m in warned), warned


def test_labels_the_loss_refuses_fail_before_training(tmp_path: Path) -> None:
    """Labels whose shape the compiled loss refuses are a ValueError before training (one
    eager `compute_loss` on one sample in `on_train_begin`), not a failure at each check."""
    model = _dense_net()
    monitor = actwatch.ActivationMonitor(
        XD[:2], tmp_path, layers=["h"], stats_data=(XD, YD[:, :2]), images=False
    )
    with pytest.raises(ValueError, match="labels of `stats_data`"):
        model.fit(XD, YD, batch_size=6, epochs=1, verbose=0, callbacks=[monitor])
