"""Alerts: `patience`, `dead_alert_fraction`, revival and re-alerting.

First `AlertTracker` alone, fed hand-made `LayerStats` check after check; then the same
behaviours through `ActivationMonitor` in a real `fit`, on a model whose conv1 has filters that
cannot fire (bias -100, kernel frozen), as in tests/test_callback.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

import actwatch
from actwatch.check.stats import LayerStats
from actwatch.diagnose.alerts import Decision
from actwatch.diagnose.memory import AlertTracker

from .helpers import data
from .test_callback import dead_conv_model

FILTERS = 8


def layer(dead: Sequence[int], filters: int = FILTERS, nonnegative: bool = True) -> LayerStats:
    """A ReLU-like layer's statistics with exactly the filters `dead` dead."""
    mask = np.zeros(filters, dtype=bool)
    mask[list(dead)] = True
    return LayerStats(
        zero_fraction=0.5,
        mean=0.1,
        hoyer=0.3,
        nonfinite=0,
        values=filters * 100,
        nonnegative=nonnegative,
        dead=mask,
        dormant=mask.copy(),
    )


def feed(tracker: AlertTracker, checks: Sequence[Sequence[int]]) -> list[Decision]:
    """One check per item: the dead filters of layer 'conv' at steps 0, 10, 20, ..."""
    return [
        tracker.update(
            {"conv": layer(dead)},
            step=10 * i,
            epoch=None if i == 0 else i - 1,
            learning_rate=0.1,
        )
        for i, dead in enumerate(checks)
    ]


def alerted(decisions: Sequence[Decision]) -> list[tuple[int, tuple[int, ...]]]:
    """(step, filters) of every dead-filter alert, in order."""
    return [(a.step, a.filters) for d in decisions for a in d.alerts if a.kind == "dead"]


class TestFlicker:
    def test_flicker_is_not_an_event_but_a_jump_is(self) -> None:
        """After a layer's first alert, a few filters flickering in and out of "dead" raise no
        alert; 10% of its filters newly dead at once do."""
        tracker = AlertTracker()
        start = list(range(20))  # 20 of 64 dead (31%): the first alert
        checks = [start]
        for k in range(1, 9):  # each check, 3 of them revive and 3 others die
            checks.append([i for i in start if i not in range(3 * k, 3 * k + 3)] + [40 + k])
        checks.append([*range(20), *range(48, 55)])  # 7 of 64 (11%) die at once: a jump
        decisions = [
            tracker.update({"conv": layer(d, filters=64)}, step=10 * i, epoch=i, learning_rate=1.0)
            for i, d in enumerate(checks)
        ]
        steps = [a.step for d in decisions for a in d.alerts]
        assert steps == [0, 90]
        assert decisions[-1].alerts[0].filters[-7:] == tuple(range(48, 55))

    def test_a_low_dead_alert_fraction_is_the_share(self) -> None:
        """With dead_alert_fraction=0.05, 4 of 64 filters dead (6%) alert: that fraction, not
        the 10% re-alert share, decides."""
        decisions = feed(AlertTracker(dead_alert_fraction=0.05), [[]])
        tracker = AlertTracker(dead_alert_fraction=0.05)
        decision = tracker.update(
            {"conv": layer([0, 1, 2, 3], filters=64)}, step=0, epoch=None, learning_rate=None
        )
        assert decisions[0].alerts == () and [a.filters for a in decision.alerts] == [(0, 1, 2, 3)]


class TestPatience:
    def test_message_says_when_filters_held_back_by_patience_died(self) -> None:
        """patience=2: the alert tells dead-before-training from died-at-an-earlier-check."""
        decisions = feed(AlertTracker(patience=2), [[0, 1, 2], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]])
        first = decisions[1].alerts[0]  # filters 0-2, dead since the check before training
        assert first.filters == (0, 1, 2) and first.died_since_last_check == ()
        assert "dead at the first check: before training" in first.message
        assert "learning rate that is too high" not in first.message
        second = decisions[2].alerts[0]  # filters 3-4 died at step 10, confirmed at step 20
        assert second.filters == (3, 4) and second.died_since_last_check == ()
        assert "2 had been dead since an earlier check (step 10)" in second.message
        assert "learning rate that is too high (current learning rate: 0.1)" in second.message

    def test_one_dead_check_is_not_enough(self) -> None:
        """patience=2: filters dead at one check only raise no alert."""
        decisions = feed(AlertTracker(patience=2), [[0, 1, 2], [], [0, 1, 2]])
        assert alerted(decisions) == []

    def test_two_dead_checks_in_a_row_alert(self) -> None:
        """patience=2: filters dead at two checks in a row alert at the second check."""
        decisions = feed(AlertTracker(patience=2), [[], [0, 1, 2], [0, 1, 2], [0, 1, 2]])
        assert alerted(decisions) == [(20, (0, 1, 2))]
        alert = decisions[2].alerts[0]
        assert (alert.count, alert.total, alert.dead_filters) == (3, FILTERS, (0, 1, 2))

    def test_a_flicker_resets_the_streak(self) -> None:
        """patience=3: dead, dead, alive, dead, dead is no alert; a third dead check in a row is."""
        tracker = AlertTracker(patience=3)
        decisions = feed(tracker, [[0, 1], [0, 1], [], [0, 1], [0, 1], [0, 1]])
        assert alerted(decisions) == [(50, (0, 1))]

    def test_only_confirmed_filters_count_towards_the_fraction(self) -> None:
        """patience=2: 2 filters dead twice and 2 newly dead are 2 of 8 confirmed, under 0.3."""
        tracker = AlertTracker(patience=2, dead_alert_fraction=0.3)
        decisions = feed(tracker, [[0, 1], [0, 1, 2, 3], [0, 1, 2, 3]])
        assert alerted(decisions) == [(20, (0, 1, 2, 3))]

    def test_patience_delays_the_stop_too(self) -> None:
        """patience=2 with stop_on_dead_fraction: the stop comes at the second dead check."""
        tracker = AlertTracker(patience=2, stop_on_dead_fraction=0.5)
        decisions = feed(tracker, [[0, 1, 2, 3], [0, 1, 2, 3]])
        assert [d.stop_reason is not None for d in decisions] == [False, True]


class TestDeadAlertFraction:
    @pytest.mark.parametrize(
        ("fraction", "dead", "alerts"),
        [
            (0.5, [0, 1, 2], False),  # 3 of 8 = 0.375 < 0.5
            (0.5, [0, 1, 2, 3], True),  # 4 of 8 = 0.5: at the fraction
            (0.25, [0], False),  # the default: 1 of 8 dead is normal
            (0.25, [0, 1], True),  # 2 of 8 = 0.25
            (1.0, list(range(FILTERS)), True),
        ],
    )
    def test_alert_at_the_fraction_not_below(
        self, fraction: float, dead: list[int], alerts: bool
    ) -> None:
        """A layer alerts once its dead fraction reaches dead_alert_fraction, not below."""
        decisions = feed(AlertTracker(dead_alert_fraction=fraction), [dead])
        assert alerted(decisions) == ([(0, tuple(dead))] if alerts else [])

    def test_filters_dead_below_the_fraction_are_named_when_it_is_reached(self) -> None:
        """Filters dead while the layer was under the fraction are in the alert that fires."""
        decisions = feed(AlertTracker(dead_alert_fraction=0.5), [[0, 1], [0, 1, 2], [0, 1, 2, 3]])
        assert alerted(decisions) == [(20, (0, 1, 2, 3))]
        alert = decisions[2].alerts[0]
        assert alert.died_since_last_check == (3,)
        assert alert.fraction == pytest.approx(0.5)


class TestRevival:
    def test_dead_filters_are_reported_once(self) -> None:
        """Filters that stay dead are not alerted again at later checks."""
        decisions = feed(AlertTracker(), [[0, 1, 2]] * 4)
        assert alerted(decisions) == [(0, (0, 1, 2))]
        assert all(d.revived == {} for d in decisions)

    def test_revived_filters_are_reported(self) -> None:
        """Alerted filters that fire again are reported as revived, once, at that check."""
        decisions = feed(AlertTracker(), [[0, 1, 2], [1, 2], [1, 2]])
        assert [dict(d.revived) for d in decisions] == [{}, {"conv": (0,)}, {}]
        assert alerted(decisions) == [(0, (0, 1, 2))]

    def test_a_revived_filter_that_dies_again_is_alerted_again(self) -> None:
        """A revived filter dying again is a new alert, naming it alone, as died since the last
        check; the filters that stayed dead are not repeated."""
        decisions = feed(AlertTracker(), [[0, 1, 2], [1, 2], [0, 1, 2]])
        assert alerted(decisions) == [(0, (0, 1, 2)), (20, (0,))]
        alert = decisions[2].alerts[0]
        assert alert.died_since_last_check == (0,)
        assert alert.dead_filters == (0, 1, 2) and alert.count == 3

    def test_filters_never_alerted_are_not_reported_as_revived(self) -> None:
        """Under the fraction nothing was alerted, so nothing revives."""
        decisions = feed(AlertTracker(dead_alert_fraction=0.5), [[0, 1], []])
        assert all(d.revived == {} for d in decisions)


# Through ActivationMonitor, in a real fit ---------------------------------------------------

X, Y = data()  # 64 samples: 4 batches of 16 per epoch


def fit(
    model: keras.Model, monitor: actwatch.ActivationMonitor, epochs: int, **kwargs: Any
) -> None:
    callbacks = [*kwargs.pop("callbacks", []), monitor]
    model.fit(X, Y, epochs=epochs, batch_size=16, callbacks=callbacks, verbose=0, **kwargs)


def test_patience_in_a_fit(tmp_path: Path) -> None:
    """patience=2: 3 filters dead from the start alert at the second check (step 4), once."""
    model = dead_conv_model(3)
    monitor = actwatch.ActivationMonitor(
        X[:2], tmp_path, layers=["conv1"], patience=2, images=False
    )
    fit(model, monitor, epochs=3)
    assert [(a.layer, a.step, a.epoch, a.filters) for a in monitor.alerts] == [
        ("conv1", 4, 0, (0, 1, 2))
    ]
    assert monitor.alerts[0].died_since_last_check == ()  # dead at the check before


def test_patience_longer_than_the_run_never_alerts(tmp_path: Path) -> None:
    """patience=4 with 3 checks (before training and two epochs): no alert."""
    model = dead_conv_model(3)
    monitor = actwatch.ActivationMonitor(
        X[:2], tmp_path, layers=["conv1"], patience=4, images=False
    )
    fit(model, monitor, epochs=2)
    assert monitor.alerts == []


@pytest.mark.parametrize(("fraction", "alerts"), [(0.375, 1), (0.5, 0)])
def test_dead_alert_fraction_in_a_fit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, fraction: float, alerts: int
) -> None:
    """3 of 8 filters dead: dead_alert_fraction=0.375 alerts once, 0.5 never (no warning)."""
    model = dead_conv_model(3)
    monitor = actwatch.ActivationMonitor(
        X[:2], tmp_path, layers=["conv1"], dead_alert_fraction=fraction, images=False
    )
    with caplog.at_level(logging.WARNING, logger="actwatch"):
        fit(model, monitor, epochs=2)
    assert [a.filters for a in monitor.alerts] == [(0, 1, 2)] * alerts
    assert len([r for r in caplog.records if "are dead" in r.getMessage()]) == alerts
    assert monitor.last_stats["conv1"].dead_count == 3  # the filters were dead all along


class SetConv1Bias(keras.callbacks.Callback):  # type: ignore[misc]
    """At the end of the given epochs, sets conv1's bias of filters 0-2 (before the monitor's
    check of that epoch: place it first)."""

    def __init__(self, values: dict[int, float]) -> None:
        super().__init__()
        self.values = values

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch in self.values:
            bias = self.model.get_layer("conv1").bias
            new = keras.ops.convert_to_numpy(bias).copy()
            new[:3] = self.values[epoch]
            bias.assign(new)


def test_revival_is_logged_and_a_second_death_alerted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Filters alerted at step 0, revived at step 4 ('filters [0, 1, 2] revived' at INFO),
    dead again at step 8: a second alert naming them as died since the last check."""
    model = dead_conv_model(3)
    monitor = actwatch.ActivationMonitor(X[:2], tmp_path, layers=["conv1"], images=False)
    revive_then_kill = SetConv1Bias({0: 0.0, 1: -100.0})
    with caplog.at_level(logging.INFO, logger="actwatch"):
        fit(model, monitor, epochs=3, callbacks=[revive_then_kill])
    assert [(a.step, a.filters, a.died_since_last_check) for a in monitor.alerts] == [
        (0, (0, 1, 2), ()),
        (8, (0, 1, 2), (0, 1, 2)),
    ]
    revived = [r for r in caplog.records if "revived" in r.getMessage()]
    assert [(r.name, r.levelno) for r in revived] == [("actwatch", logging.INFO)]
    assert "layer 'conv1': filters [0, 1, 2] revived" in revived[0].getMessage()
