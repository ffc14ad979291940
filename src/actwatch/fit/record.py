"""What a monitor keeps across fits (`Memory`), shows of the current fit (`FitRecord`), and
the warn-once loggers of what may fail at any check (`Failures`)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from actwatch._logging import WarnOnce
from actwatch.check.gradients import GradientStats
from actwatch.check.stats import LayerStats
from actwatch.diagnose.alerts import Alert
from actwatch.diagnose.memory import AlertTracker

__all__ = ["Failures", "FitRecord", "Memory"]


@dataclass
class Memory:
    """What a monitor keeps across `fit()` calls: the alert memory (while the model and the
    watched layers stay the same) and the step of its last check (steps never go back)."""

    tracker: AlertTracker | None = None
    tracked: tuple[weakref.ref[Any], tuple[str, ...]] | None = None
    last_step: int = -1
    run_dir: str | None = None  # where this monitor writes: claimed at its first fit


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


@dataclass
class Failures:
    """Warn-once loggers for what may fail at every check; reset at each fit."""

    check: WarnOnce = field(default_factory=lambda: WarnOnce("actwatch: a later check failed"))
    gradients: WarnOnce = field(
        default_factory=lambda: WarnOnce("actwatch: the gradients of activations failed")
    )
    hook: WarnOnce = field(default_factory=lambda: WarnOnce("actwatch: on_alert raised"))

    def reset(self) -> None:
        for warn in (self.check, self.gradients, self.hook):
            warn.reset()
