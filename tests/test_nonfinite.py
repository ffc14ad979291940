"""Non-finite and huge activations: never counted as dead, no numpy warning, the right alert."""

from __future__ import annotations

import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

import actwatch
from actwatch.check.stats import LayerStats, reduce_layer, summarize

from . import reference as ref
from .helpers import data, read_events

X, Y = data(32, size=8)
X = X + 0.5  # inputs in [0, 1)


def _stats(a: np.ndarray, tau: float = 0.025) -> LayerStats:
    reduced = reduce_layer(ops.convert_to_tensor(a.astype(np.float32)))
    return summarize({k: ops.convert_to_numpy(v) for k, v in reduced.items()}, tau)


def _agree_with_reference(stats: LayerStats, a: np.ndarray, tau: float = 0.025) -> None:
    npc = ref.to_npc(a)
    assert stats.dead.tolist() == ref.dead(npc).tolist()
    assert stats.dormant.tolist() == ref.dormant(npc, tau).tolist()
    assert stats.nonnegative == ref.nonnegative(npc)
    assert stats.nonfinite == ref.nonfinite(npc)
    assert stats.mean == pytest.approx(ref.mean(npc), rel=1e-5)
    assert stats.hoyer == pytest.approx(ref.hoyer(npc), rel=1e-4, abs=1e-6)


def test_a_filter_without_finite_values_is_not_dead() -> None:
    """All-NaN and all-Inf filters are neither dead nor dormant; finite ones judged as usual."""
    a = np.ones((2, 5, 5), np.float32)
    a[..., 0] = np.nan  # no finite value
    a[..., 1] = -1.0  # dead
    a[..., 2] = np.inf  # no finite value either
    a[:, :3, 3] = -np.inf  # finite part <= 0: dead
    a[:, 3:, 3] = -2.0
    stats = _stats(a)
    assert stats.dead.tolist() == [False, True, False, True, False]
    assert stats.dormant.tolist() == [False, False, False, False, False]
    _agree_with_reference(stats, a)


def test_a_layer_without_finite_values_is_not_nonnegative() -> None:
    """A layer of NaN and Inf only: no dead filter, not ReLU-like, everything counted as such."""
    a = np.where(np.arange(4) % 2 == 0, np.nan, np.inf) * np.ones((3, 6, 4), np.float32)
    stats = _stats(a)
    assert (stats.dead_count, stats.nonnegative, stats.nonfinite) == (0, False, 72)
    assert not stats.dormant.any()
    _agree_with_reference(stats, a)


def test_huge_finite_values_do_not_overflow_or_warn() -> None:
    """Finite values near float32's limit: sums do not overflow, numpy does not warn."""
    rng = np.random.default_rng(0)
    a = (rng.random((4, 300, 6)) * 3e37).astype(np.float32)  # sums of 1200 values overflow
    a[..., 5] = 1e-3  # a filter tiny next to the others: dormant
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        stats = _stats(a)
    assert np.isfinite(stats.mean) and stats.dormant.tolist() == [False] * 5 + [True]
    _agree_with_reference(stats, a)


def _linear_model(kernel_value: float) -> keras.Model:
    """A frozen linear conv1 whose kernel is `kernel_value` everywhere, then a small head."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    conv = model.get_layer("conv1")
    kernel, bias = conv.get_weights()
    conv.set_weights([np.full_like(kernel, kernel_value), np.zeros_like(bias)])
    conv.trainable = False
    model.compile(keras.optimizers.SGD(1e-3), "sparse_categorical_crossentropy")
    return model


def _fit_recording_warnings(
    model: keras.Model, monitor: actwatch.ActivationMonitor
) -> list[warnings.WarningMessage]:
    """Fit two epochs; return the warnings raised from actwatch's own files."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(X, Y, epochs=2, batch_size=8, verbose=0, callbacks=[monitor])
    return [w for w in caught if from_actwatch(w.filename)]


PACKAGE = Path(actwatch.__file__).resolve().parent


def from_actwatch(filename: str) -> bool:
    """Whether a warning was raised in actwatch's own source: inside the installed package,
    not anywhere whose path has a part named "actwatch" (the checkout folder that `git
    clone` makes is named so, and so is every file of the .venv inside it)."""
    return Path(filename).resolve().is_relative_to(PACKAGE)


def test_warnings_of_other_packages_in_a_folder_named_actwatch_are_not_ours() -> None:
    """A Keras file under `<checkout named actwatch>/.venv` is not actwatch's; ours is."""
    venv_keras = "/home/me/actwatch/.venv/lib/python3.11/site-packages/keras/src/ops/core.py"
    assert not from_actwatch(venv_keras)
    assert from_actwatch(str(PACKAGE / "check" / "stats.py"))


def test_all_nonfinite_linear_layer_raises_only_the_nonfinite_alert(tmp_path: Path) -> None:
    """conv1 all +Inf: no dead filter and no dead figure at any check (no finite output is
    not ReLU-like), one nonfinite alert, no dead alert."""
    model = _linear_model(3e38)  # 27 products of >= 3e38 * 0.x overflow: every output is Inf
    alerts: list[actwatch.Alert] = []
    monitor = actwatch.ActivationMonitor(
        X[:2], str(tmp_path), stats_data=X, on_alert=alerts.append, images=False
    )
    assert _fit_recording_warnings(model, monitor) == []
    events = read_events(tmp_path)
    values = 32 * 8 * 8 * 4
    assert [v for _, v in events.scalars["nonfinite/conv1"]] == [values] * 3
    assert "dead_filters/conv1" not in events.scalars
    assert "dead_fraction/conv1" not in events.scalars
    assert [v for _, v in events.scalars["network/dead_filters"]] == [0.0] * 3
    assert monitor.last_stats["conv1"].dead_count == 0
    assert [(a.kind, a.layer, a.step) for a in alerts] == [("nonfinite", "conv1", 0)]
    assert monitor.last_stats["conv1"].nonnegative is False


def test_huge_finite_activations_in_a_fit_match_the_reference(tmp_path: Path) -> None:
    """conv1 outputs ~1e36 on 32 samples: finite statistics equal to numpy's, no warning."""
    model = _linear_model(4e34)
    monitor = actwatch.ActivationMonitor(X[:2], str(tmp_path), stats_data=X, images=False)
    conv1 = actwatch.get_activations(model, X, ["conv1"])["conv1"]
    with np.errstate(over="ignore"):  # the point: a float32 sum of them overflows
        assert np.isfinite(conv1).all() and np.abs(conv1).sum(dtype=np.float32) == np.inf
    assert _fit_recording_warnings(model, monitor) == []
    npc = ref.to_npc(conv1)
    first = {m: read_events(tmp_path).scalars[f"{m}/conv1"][0] for m in ("mean", "hoyer")}
    assert first["mean"] == (0, pytest.approx(ref.mean(npc), rel=1e-4))
    assert first["hoyer"] == (0, pytest.approx(ref.hoyer(npc), rel=1e-3, abs=1e-5))
    assert monitor.alerts == []
