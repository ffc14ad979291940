"""Alert memory across checks and fits: which filters are alerted, when, and what is said."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

import actwatch

from .helpers import data, read_events, tiny_cnn

X, Y = data(32)
X = X + 0.5  # inputs in [0, 1): a positive kernel with bias 0 always fires
STEPS = 8  # batch size 4
DEAD = (0, 1, 2, 3, 4, 5)


def _dead_model(seed: int = 0) -> keras.Model:
    """conv1's filters 0-5 of 8 never fire (bias -100), frozen; the others always fire."""
    model = tiny_cnn(filters=(8, 4), seed=seed)
    conv = model.get_layer("conv1")
    kernel, bias = conv.get_weights()
    bias[list(DEAD)] = -100.0
    conv.set_weights([np.abs(kernel) + 0.01, bias])
    conv.trainable = False
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    return model


def _fit(model: keras.Model, monitor: actwatch.ActivationMonitor, **kwargs: Any) -> None:
    callbacks = [*kwargs.pop("before", []), monitor]
    model.fit(X, Y, batch_size=4, verbose=0, callbacks=callbacks, **kwargs)


def _monitor(log_dir: Path) -> actwatch.ActivationMonitor:
    return actwatch.ActivationMonitor(X[:2], str(log_dir), layers="conv1", images=False)


def test_reused_monitor_does_not_realert_at_the_next_fit(tmp_path: Path) -> None:
    """Two fits of one monitor on one model: the dead filters are alerted once, in the first."""
    model = _dead_model()
    monitor = _monitor(tmp_path)
    _fit(model, monitor, epochs=2)
    assert [(a.step, a.filters) for a in monitor.alerts] == [(0, DEAD)]
    _fit(model, monitor, epochs=2)
    assert monitor.alerts == [], "alerts holds this fit's alerts: none, the filters were known"
    assert [s for s, _ in read_events(tmp_path).texts["alerts"]] == [0]


def test_another_model_starts_a_fresh_memory(tmp_path: Path) -> None:
    """The same monitor on another model: its dead filters are alerted, before its training."""
    monitor = _monitor(tmp_path)
    _fit(_dead_model(), monitor, epochs=1)
    _fit(_dead_model(seed=1), monitor, epochs=1)
    (alert,) = monitor.alerts
    assert (alert.step, alert.epoch, alert.filters) == (STEPS + 1, None, DEAD)
    assert "before training" in alert.message


def test_resumed_run_says_when_the_filters_died_is_unknown(tmp_path: Path) -> None:
    """A new monitor resuming at initial_epoch=1 does not claim a check before training."""
    model = _dead_model()
    _fit(model, _monitor(tmp_path / "first"), epochs=1)
    monitor = _monitor(tmp_path / "resumed")
    _fit(model, monitor, epochs=2, initial_epoch=1)
    (alert,) = monitor.alerts
    assert (alert.step, alert.epoch, alert.filters) == (2 * STEPS, 1, DEAD)
    assert alert.died_since_last_check == ()
    assert "before training" not in alert.message
    assert "resumed at epoch 2 (initial_epoch=1)" in alert.message
    assert "when and why they died is not known" in alert.message


class _SetBias(keras.callbacks.Callback):  # type: ignore[misc]
    """At the end of each epoch, sets conv1's bias of filters 0-5 to the epoch's value."""

    def __init__(self, values: list[float]) -> None:
        super().__init__()
        self.values = values

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        conv = self.model.get_layer("conv1")
        kernel, bias = conv.get_weights()
        bias[list(DEAD)] = self.values[epoch]
        conv.set_weights([kernel, bias])


def test_filters_that_revive_and_die_again_are_alerted_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Dead, revived, dead again, still dead: alerts at the first and the third check only."""
    model = _dead_model()
    monitor = _monitor(tmp_path)
    with caplog.at_level(logging.INFO, logger="actwatch"):
        _fit(model, monitor, epochs=3, before=[_SetBias([0.0, -100.0, -100.0])])
    assert [(a.step, a.filters) for a in monitor.alerts] == [(0, DEAD), (2 * STEPS, DEAD)]
    again = monitor.alerts[1]
    assert again.died_since_last_check == DEAD
    assert "6 of them died since the last check" in again.message
    revived = [r.getMessage() for r in caplog.records if "revived" in r.getMessage()]
    assert revived == [f"actwatch: layer 'conv1': filters {list(DEAD)} revived."]
    dead = [v for _, v in read_events(tmp_path).scalars["dead_filters/conv1"]]
    assert dead == [6.0, 0.0, 6.0, 6.0]
