"""Learning-rate verdicts: a small update ratio is not a low learning rate (issue 19).

The verdict's rules are pinned on `RatioTracker` with made-up evidence (fast, every backend);
fits pin what reaches it: the rate of the step measured (schedules, callbacks), the loss Keras
reports, and the dead filters of a network a too-high rate killed. The fits of the 5-block CNN
train for ~100 steps and run on TensorFlow only (the fastest backend for it here).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

import actwatch
from actwatch.demo import build_model, seed_everything
from actwatch.diagnose.verdicts import MAX_MOVE, USUAL, Evidence, RatioTracker, advised_rate

from .helpers import data, tiny_cnn

X, Y = data(32)


def _lr_alerts(monitor: actwatch.ActivationMonitor) -> list[actwatch.Alert]:
    return [a for a in monitor.alerts if a.kind == "learning_rate"]


def _tracker(
    losses: tuple[float, ...] = (), chance: float | None = math.log(5), **kwargs: Any
) -> RatioTracker:
    tracker = RatioTracker(chance=chance, **kwargs)
    for i, loss in enumerate(losses):
        tracker.observe_loss(10 * (i + 1), {"loss": loss})
    return tracker


def _adam(rate: float, **kwargs: Any) -> Evidence:
    """Evidence of an Adam step at `rate` over weights of RMS 0.1."""
    return Evidence(learning_rate=rate, family="adam", weight_rms={"a": 0.1, "b": 0.1}, **kwargs)


# Advice ---------------------------------------------------------------------------------


def test_advice_moves_at_most_10x_and_never_the_other_way() -> None:
    """Over rates and factors from 1e-9 to 1e9: a raise lands in (rate, 10 rate], a lowering
    in [rate / 10, rate)."""
    for rate in np.logspace(-9, 1, 23):
        for factor in np.logspace(-9, 9, 37):
            target = advised_rate(float(rate), float(factor))
            if factor > 1:
                assert target is not None and rate < target <= rate * MAX_MOVE * 1.0001
            elif factor < 1:
                assert target is not None and rate / MAX_MOVE / 1.0001 <= target < rate


def test_adam_advice_stays_in_its_usual_range() -> None:
    """A raise for Adam stops at the top of its usual range, and none is advised from there."""
    top = USUAL["adam"][2]
    assert advised_rate(1e-3, 1000.0, "adam") == pytest.approx(top)
    assert advised_rate(top, 1000.0, "adam") is None
    assert advised_rate(1e-7, 1000.0, "adam") == pytest.approx(1e-6)


def test_custom_bounds_advise_towards_their_own_healthy_ratio() -> None:
    """Bounds (0.5, 0.6) and a ratio of 0.00726: the healthy figure is their geometric mean,
    and the advice raises the rate (issue 19 advised "raise it about 0.1x, to about 0.0001")."""
    tracker = _tracker((1.62, 1.61), low=0.5, high=0.6)
    [alert] = tracker.update(
        {"a": 0.00726}, step=2, epoch=0, evidence=Evidence(learning_rate=1e-3, family="sgd")
    )
    assert "below 0.5" in alert.message and "about 0.55 is healthy" in alert.message
    assert "too low (current: 0.001)" in alert.message
    assert "raise it 10x, to about 0.01," in alert.message and "lower" not in alert.message


# Low ratios that are not a low rate -------------------------------------------------------


def test_a_converged_loss_is_not_a_low_rate() -> None:
    """Tiny ratios while the loss fell from chance to 1e-6: the model is done, no alert."""
    tracker = _tracker((0.2, 1e-6))
    assert tracker.update({"a": 2e-6, "b": 3e-6}, step=30, epoch=2, evidence=_adam(1e-3)) == []
    assert tracker.last_verdict == "none"
    tracker = _tracker((3.5e-4, 3.4e-4))  # a converged model fine-tuned with SGD
    sgd = Evidence(learning_rate=0.01, family="sgd")
    assert tracker.update({"a": 0.0, "b": 1e-7}, step=30, epoch=2, evidence=sgd) == []


def test_a_weak_adam_step_is_not_a_low_rate() -> None:
    """An Adam step far below its full size (ratio * rms / rate = 2e-3): the gradients are
    below epsilon, not the rate too small; even before any loss is known."""
    tracker = _tracker()
    assert tracker.update({"a": 2e-6, "b": 2e-6}, step=1, epoch=0, evidence=_adam(1e-4)) == []
    assert tracker.last_verdict == "none"


def test_vanished_gradients_are_not_a_low_rate() -> None:
    """Gradients 1e4 times smaller than at the fit's first check: not the rate's fault."""
    tracker = _tracker((1.6, 1.6))
    first = Evidence(learning_rate=1e-2, family="sgd", gradient_rms={"a": 1e-4})
    tracker.update({"a": 1e-3}, step=1, epoch=0, evidence=first)
    now = Evidence(learning_rate=1e-2, family="sgd", gradient_rms={"a": 1e-8})
    assert tracker.update({"a": 1e-7}, step=20, epoch=1, evidence=now) == []
    assert tracker.last_verdict == "none"


def test_a_warmup_and_a_zero_rate_raise_nothing() -> None:
    """A schedule still rising, or a step at rate 0: small ratios are the plan."""
    for evidence in (_adam(1e-7, rising=True), _adam(0.0)):
        tracker = _tracker((1.61, 1.61))
        assert tracker.update({"a": 0.0, "b": 1e-9}, step=1, epoch=0, evidence=evidence) == []


# Too low, and when it waits --------------------------------------------------------------


def test_too_low_waits_for_the_loss() -> None:
    """Full-size Adam steps at 1e-7 and no loss yet: no verdict; the epoch's loss at chance
    comes, and the finding is judged again: too low, advised 10x up."""
    tracker = _tracker()
    ratios = {"a": 9e-7, "b": 1.2e-6}
    assert tracker.update(ratios, step=1, epoch=0, evidence=_adam(1e-7)) == []
    assert tracker.last_verdict == "wait" and not tracker.waiting
    tracker.observe_loss(10, {"loss": 1.611})
    assert tracker.waiting
    [alert] = tracker.rejudge(step=10, epoch=0, evidence=Evidence())
    assert alert.step == 10 and alert.learning_rate == 1e-7 and alert.count == 2
    assert "too low (current: 1e-07)" in alert.message
    assert "(measured at step 1)" in alert.message
    assert "the loss 1.611 is no better than chance (1.609)" in alert.message
    assert "raise it 10x, to about 1e-06" in alert.message
    assert tracker.rejudge(step=11, epoch=0, evidence=Evidence()) == []  # said once


def test_a_falling_loss_is_not_held_back() -> None:
    """Small SGD steps while the loss falls 30% a reading: no verdict of too low."""
    tracker = _tracker((1.0, 0.7), chance=None)
    sgd = Evidence(learning_rate=0.05, family="sgd")
    assert tracker.update({"a": 5e-6}, step=20, epoch=1, evidence=sgd) == []


def test_a_rate_cut_is_worded_as_a_cut() -> None:
    """After steps at 1e-3, a rate cut to 1e-8: the message says the rate was lowered, not
    that units are dead or saturated (issue 19)."""
    tracker = _tracker((1.61, 1.61))
    tracker.update({"a": 3e-3, "b": 4e-3}, step=1, epoch=0, evidence=_adam(1e-3))
    [alert] = tracker.update({"a": 5e-8, "b": 6e-8}, step=21, epoch=2, evidence=_adam(1e-8))
    assert "the learning rate is now 1e-08, below the 0.001 of earlier" in alert.message
    assert "dead" not in alert.message and "raise it 10x, to about 1e-07" in alert.message


def test_weights_that_do_not_move_are_stuck_not_slow() -> None:
    """Ratios of exactly 0 at SGD 0.1 with no large step or dead filters before: no gradient
    reaches them; never "raise the rate"."""
    tracker = _tracker((1.61, 1.61))
    [alert] = tracker.update(
        {"a": 0.0}, step=20, epoch=1, evidence=Evidence(learning_rate=0.1, family="sgd")
    )
    assert "No gradient reaches these layers" in alert.message and "raise" not in alert.message


# Too high after all -----------------------------------------------------------------------


def test_stopped_after_large_steps_is_too_high() -> None:
    """Ratios of 0 after a ratio above `high`: the units died; never told to raise."""
    tracker = _tracker()
    kwargs: dict[str, Any] = {"evidence": Evidence(learning_rate=0.5, family="sgd")}
    [high] = tracker.update({"a": 5.0}, step=1, epoch=0, **kwargs)
    assert "too high (current: 0.5)" in high.message
    assert "lower it 10x, to about 0.05," in high.message
    [alert] = tracker.update({"a": 0.0}, step=2, epoch=1, **kwargs)
    assert "was too high (current: 0.5) and the units died" in alert.message
    assert "a ratio of 5 at step 1" in alert.message and "raise" not in alert.message


def test_dead_filters_and_no_gradient_are_too_high() -> None:
    """No ratio above `high` ever, but 89% of a layer dead, ratios 0 and the loss at chance
    (the CNN that SGD 2.0 killed): too high, not too low."""
    tracker = _tracker((1.63,))
    evidence = Evidence(
        learning_rate=2.0, family="sgd", dead_fraction={"a": 0.31, "b": 0.89}, gradient_rms={}
    )
    [alert] = tracker.update({"a": 0.0, "b": 0.0}, step=64, epoch=1, evidence=evidence)
    assert "was too high (current: 2)" in alert.message and "too low" not in alert.message
    assert "89% of 'b' dead" in alert.message and "lower it 10x, to about 0.2" in alert.message


def test_patience_and_no_repeat() -> None:
    """With patience 2, the second high measurement alerts; a third does not repeat it."""
    tracker = RatioTracker(patience=2)
    kwargs: dict[str, Any] = {"epoch": 0, "learning_rate": 0.5}
    assert tracker.update({"a": 5.0}, step=1, **kwargs) == []
    [alert] = tracker.update({"a": 5.0}, step=2, **kwargs)
    assert "lower it 10x, to about 0.05," in alert.message
    assert tracker.update({"a": 5.0}, step=3, **kwargs) == []


# Fits: what reaches the verdict -------------------------------------------------------------


def test_adam_at_1e_7_is_too_low(tmp_path: Path) -> None:
    """A tiny CNN at Adam 1e-7: too low, once the first epoch's loss shows no progress."""
    model = tiny_cnn(lr=1e-7)
    monitor = actwatch.ActivationMonitor(X[:2], tmp_path, images=False)
    model.fit(X, Y, batch_size=16, epochs=2, verbose=0, callbacks=[monitor])
    [alert] = _lr_alerts(monitor)
    assert alert.step == 2 and alert.learning_rate == pytest.approx(1e-7)
    assert "too low (current: 1e-07)" in alert.message
    assert "raise it 10x, to about 1e-06" in alert.message


def test_a_warmup_raises_nothing(tmp_path: Path) -> None:
    """CosineDecay from 0 with a warmup: the first step runs at 0, the next ones rise; no
    learning-rate alert (issue 19: "too low (current: 6.25e-05) ... did not move at all")."""
    model = tiny_cnn()
    schedule = keras.optimizers.schedules.CosineDecay(0.0, 100, warmup_target=1e-3, warmup_steps=16)
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy")
    first: list[dict[str, float]] = []
    monitor = actwatch.ActivationMonitor(X[:2], tmp_path, images=False)
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: first.append(dict(monitor.last_update_ratios))
    )
    model.fit(X, Y, batch_size=16, epochs=2, verbose=0, callbacks=[monitor, record])
    assert set(first[0].values()) == {0.0}  # the step measured ran at rate 0
    assert _lr_alerts(monitor) == []


def test_the_rate_quoted_is_the_measured_steps(tmp_path: Path) -> None:
    """SGD with ExponentialDecay(0.5, 8, 0.001): the first step runs at 0.5 (the schedule at
    step 1 gives 0.21, which issue 19 quoted); its alert quotes 0.5 and advises from it."""
    model = tiny_cnn()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.5, 8, 0.001)
    model.compile(keras.optimizers.SGD(schedule), "sparse_categorical_crossentropy")
    monitor = actwatch.ActivationMonitor(
        X[:2], tmp_path, images=False, update_ratio_bounds=(1e-5, 1e-2)
    )
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0, callbacks=[monitor])
    [alert] = _lr_alerts(monitor)
    assert alert.step == 1 and alert.learning_rate == pytest.approx(0.5)
    assert "too high (current: 0.5)" in alert.message
    assert "lower it 10x, to about 0.05" in alert.message


def test_a_warmup_to_a_high_rate_is_not_called_too_low(tmp_path: Path) -> None:
    """Adam with CosineDecay(1e-9, warmup_target=0.5): the first step at 1e-9 is not "too
    low" (issue 19 said "raise it about 320000x, to about 10000")."""
    model = tiny_cnn()
    schedule = keras.optimizers.schedules.CosineDecay(1e-9, 100, warmup_target=0.5, warmup_steps=16)
    model.compile(keras.optimizers.Adam(schedule), "sparse_categorical_crossentropy")
    monitor = actwatch.ActivationMonitor(X[:2], tmp_path, images=False)
    model.fit(X, Y, batch_size=16, epochs=1, verbose=0, callbacks=[monitor])
    assert max(monitor.last_update_ratios.values()) < 1e-5  # the step at 1e-9 was measured
    assert not [a for a in _lr_alerts(monitor) if "too low" in a.message]


def test_a_rate_a_callback_sets_is_the_one_quoted(tmp_path: Path) -> None:
    """LearningRateScheduler cuts Adam from 1e-3 to 1e-8 at the second epoch's begin (after
    the epoch-end check's copy): the alert quotes 1e-8 and calls it a cut."""
    model = tiny_cnn()
    cut = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 1e-3 if epoch < 1 else 1e-8)
    monitor = actwatch.ActivationMonitor(X[:2], tmp_path, images=False)
    model.fit(X, Y, batch_size=16, epochs=3, verbose=0, callbacks=[monitor, cut])
    [alert] = _lr_alerts(monitor)
    assert alert.learning_rate == pytest.approx(1e-8, rel=1e-6)
    assert "the learning rate is now 1e-08, below the 0.001 of earlier" in alert.message
    assert "dead" not in alert.message


# The 5-block CNN of issue 19 ----------------------------------------------------------------

tensorflow_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="~100 training steps of the 5-block CNN: one backend; the verdict's rules above "
    "run on every backend",
)


def _patches(n: int = 320, size: int = 32, classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Noise images whose class is the column of a bright patch."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, n)
    x = (rng.random((n, size, size, 3)) * 0.3).astype("float32")
    side = size // classes
    for i, c in enumerate(y):
        top = rng.integers(0, size - side)
        x[i, top : top + side, c * side : (c + 1) * side] = 1.0
    return x, y.astype("int64")


def _cnn_fit(
    tmp_path: Path, optimizer: keras.optimizers.Optimizer, epochs: int
) -> actwatch.ActivationMonitor:
    seed_everything(0)
    x, y = _patches()
    model = build_model(32)
    model.compile(optimizer, "sparse_categorical_crossentropy")
    monitor = actwatch.ActivationMonitor(x[:4], tmp_path, images=False, histograms=False)
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, callbacks=[monitor])
    return monitor


@tensorflow_only
def test_a_converged_cnn_gets_no_learning_rate_alert(tmp_path: Path) -> None:
    """Adam 1e-3 until the loss is ~1e-6 and the ratios fall below 1e-5: the model is done
    (issue 19: "raise it about 1000x, to about 1")."""
    monitor = _cnn_fit(tmp_path, keras.optimizers.Adam(1e-3), epochs=12)
    assert min(monitor.last_update_ratios.values()) < 1e-5
    assert _lr_alerts(monitor) == []


@tensorflow_only
def test_a_cnn_killed_by_sgd_2_is_too_high_never_too_low(tmp_path: Path) -> None:
    """SGD 2.0 kills the CNN (every ratio 0, the loss at chance): too high, never too low."""
    monitor = _cnn_fit(tmp_path, keras.optimizers.SGD(2.0), epochs=6)
    assert set(monitor.last_update_ratios.values()) == {0.0}
    alerts = _lr_alerts(monitor)
    assert [a for a in alerts if "too high" in a.message]
    assert not [a for a in alerts if "too low" in a.message or "raise it" in a.message]


def test_batch_losses_are_kept_a_check_apart() -> None:
    """With checks every 5 batches, batch-end losses closer than 5 steps are not kept (each
    is the epoch's running mean); an epoch's end always is."""
    tracker = RatioTracker(spacing=5)
    for step, loss in [(1, 1.6), (2, 1.5), (6, 1.2), (7, 1.1), (8, 1.0)]:
        tracker.observe_loss(step, {"loss": loss}, epoch_end=False)
    tracker.observe_loss(8, {"loss": 0.9})
    assert list(tracker.losses.readings) == [(1, 1.6), (6, 1.2), (8, 0.9)]
    trend = tracker.losses.trend()
    assert trend is not None and trend.falling and trend.previous == 1.2


def test_the_stability_edge_words_the_advice() -> None:
    """With the sharpness measured (`Evidence.edge`): near the edge of stability a higher rate
    would not train faster, so a small ratio raises nothing; far below it, there is room."""
    messages = []
    for edge in (0.9, 0.02):
        tracker = _tracker((1.61, 1.61))
        evidence = Evidence(learning_rate=1e-4, family="sgd", edge=edge)
        messages.append(
            [a.message for a in tracker.update({"a": 1e-7}, step=20, epoch=1, evidence=evidence)]
        )
    assert messages[0] == []
    [far] = messages[1]
    messages[1] = far
    assert "the sharpness is at 2% of what the rate bears: raise it 10x" in messages[1]


def test_a_half_dead_network_whose_weights_creep_is_never_told_to_raise() -> None:
    """Weight decay moves a dead network's weights a little (ratios ~1e-6, not 0): with a
    layer 90% dead and the loss at chance it is "too high: the units died", never a raise."""
    tracker = _tracker((1.61, 1.61))
    evidence = Evidence(learning_rate=0.5, family="sgd", dead_fraction={"a": 0.9})
    [alert] = tracker.update({"a": 1e-6, "b": 2e-6}, step=20, epoch=1, evidence=evidence)
    assert "the units died" in alert.message and "raise" not in alert.message
