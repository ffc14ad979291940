"""What a monitor keeps across fits (`Memory`), shows of the current fit (`FitRecord`), and
the warn-once loggers of what may fail at any check (`Failures`)."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import keras

from actwatch._logging import WarnOnce
from actwatch.check.gradients import GradientStats
from actwatch.check.layers import WatchedLayer
from actwatch.check.stability import SharpnessResult
from actwatch.check.stats import LayerStats
from actwatch.diagnose.alerts import Alert
from actwatch.diagnose.memory import AlertTracker
from actwatch.fit.args import Settings

__all__ = ["Failures", "FitRecord", "Memory"]


@dataclass
class Memory:
    """What a monitor keeps across `fit()` calls: the alert memory (while the model and the
    watched layers stay the same) and the step of its last check (steps never go back)."""

    tracker: AlertTracker | None = None
    tracked: tuple[weakref.ref[Any], tuple[str, ...]] | None = None
    last_step: int = -1
    run_dir: str | None = None  # where this monitor writes: claimed at its first fit

    def remember(self, model: keras.Model, watched: Sequence[WatchedLayer], s: Settings) -> bool:
        """Keep the alert memory when the model and the watched layers are the same."""
        memory = self
        paths = tuple(w.path for w in watched)
        same = memory.tracked is not None and memory.tracked[0]() is model
        if memory.tracker is not None and same and memory.tracked[1] == paths:  # type: ignore[index]
            return True
        memory.tracker = AlertTracker(
            patience=s.patience,
            dead_alert_fraction=s.dead_alert_fraction,
            stop_on_dead_fraction=s.stop_on_dead_fraction,
            pooling=[w.path for w in watched if w.pooling],
            outlier_ratio=s.outlier_ratio,
        )
        memory.tracked = (weakref.ref(model), paths)
        return False


@dataclass
class FitRecord:
    """What the monitor shows about the current (or last) fit."""

    alerts: list[Alert] = field(default_factory=list)
    last_stats: dict[str, LayerStats] = field(default_factory=dict)
    last_gradients: dict[str, GradientStats] = field(default_factory=dict)
    last_update_ratios: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)  # for `logs`
    run_dir: str | None = None  # `Memory.run_dir`, shown as `monitor.run_dir`
    last_sharpness: SharpnessResult | None = None  # with `sharpness=True`


@dataclass
class Failures:
    """Warn-once loggers for what may fail at every check; reset at each fit."""

    check: WarnOnce = field(default_factory=lambda: WarnOnce("actwatch: a later check failed"))
    gradients: WarnOnce = field(
        default_factory=lambda: WarnOnce("actwatch: the gradients of activations failed")
    )
    hook: WarnOnce = field(default_factory=lambda: WarnOnce("actwatch: on_alert raised"))
    sharpness: WarnOnce = field(default_factory=lambda: WarnOnce("actwatch: the sharpness failed"))

    def reset(self) -> None:
        for warn in (self.check, self.gradients, self.hook, self.sharpness):
            warn.reset()
