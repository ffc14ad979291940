"""The sharpness of each check of a fit (opt-in): measured after the check's device call, its
scalars added to the check's, and a failure costing the sharpness, never the check."""

from __future__ import annotations

from typing import Any

import keras

from actwatch.check.sharpness import Sharpness
from actwatch.check.stability import SharpnessResult
from actwatch.fit.record import Failures, FitRecord

__all__ = ["CurvatureWatch"]


class CurvatureWatch:
    """One `Sharpness` for one fit, on the labelled rows of the check's batch.

    Args:
        model: the model being trained.
        feed: the check's batch (the labelled statistics samples first).
        labels: `(y, sample_weight)` of those samples.
        record: where the last result is kept (`FitRecord.last_sharpness`, which the
            learning-rate verdicts read).
        failures: the fit's warn-once loggers.
    """

    def __init__(
        self,
        model: keras.Model,
        feed: Any,
        labels: tuple[Any, Any],
        record: FitRecord,
        failures: Failures,
    ) -> None:
        y, weight = labels
        self.sharpness: Sharpness | None = Sharpness(model, feed, y, weight)
        self.record, self.failures = record, failures

    def measure(self, step: int, learning_rate: float | None) -> dict[str, float]:
        """The network scalars of the sharpness now (`sharpness`, `sharpness_x_lr`, ...);
        none once it failed in this fit (said once, the checks go on)."""
        self.record.last_sharpness = None  # never an earlier check's figures
        if self.sharpness is None:
            return {}
        try:
            result: SharpnessResult = self.sharpness.measure(learning_rate)
        except Exception as exc:
            self.sharpness = None
            self.failures.sharpness(
                "actwatch: the sharpness at step %d failed (%s: %s); this fit goes on without it.",
                step,
                type(exc).__name__,
                exc,
                exc=exc,
            )
            return {}
        self.record.last_sharpness = result
        return result.scalars()
