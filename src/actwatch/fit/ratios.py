"""The update-ratio protocol of one fit: copy at a check, measure after one step, judge the rate.

`FitSession` copies the weights at each check, after any revival (`snapshot`), and asks for
the measurement at each batch's begin hook and at the next check (`measure`, for loops
without batch hooks). The learning rate quoted and used for advice is the one of the step
measured, read before it runs: once at the snapshot, and again at the begin hook of that step,
after any callback set the rate at the epoch's begin (`LearningRateScheduler` does) and while
the optimizer's counter is where a `LearningRateSchedule` will read it. The verdict weighs the
loss Keras reports (`observe_loss`) and the last check's dead filters and gradients
(`actwatch.diagnose.verdicts`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import keras
import numpy as np

from actwatch.check.layers import WatchedLayer, weight_sources
from actwatch.diagnose.alerts import Alert
from actwatch.diagnose.evidence import StepRate, chance_loss, optimizer_family, step_rate
from actwatch.diagnose.updates import DEFAULT_BOUNDS, UpdateRatios
from actwatch.diagnose.verdicts import Evidence, RatioTracker
from actwatch.fit.args import Settings
from actwatch.fit.record import FitRecord
from actwatch.fit.steps import StepCounter

__all__ = ["UpdateWatch"]


class UpdateWatch:
    """The update ratios of one fit and their verdicts (see the module).

    Args:
        model: the model being trained.
        settings: the monitor's arguments (`update_ratio_bounds`, `patience`).
        watched: the watched layers (those with weights, or their linear convolutions').
        record: the fit's record: the last check's statistics and gradients are read from
            it, the ratios and the measurement's time written to it.
        steps: the fit's step counter.
        applied: reads the optimizer's updates applied so far (None when unknown).
    """

    def __init__(
        self,
        model: keras.Model,
        settings: Settings,
        watched: Sequence[WatchedLayer],
        record: FitRecord,
        steps: StepCounter,
        applied: Callable[[], int | None],
    ) -> None:
        self.model, self.record, self.steps, self.applied = model, record, steps, applied
        bounds = settings.update_ratio_bounds
        self.updates = (
            UpdateRatios(watched, weight_sources(model, watched))
            if bounds is not None
            else UpdateRatios([])
        )
        low, high = bounds or DEFAULT_BOUNDS
        self.ratios = RatioTracker(
            low=low,
            high=high,
            patience=settings.patience,
            chance=chance_loss(model),
            spacing=settings.every_n_batches or 1,
        )
        self.step_rate = StepRate(None)  # the learning rate of the step after the snapshot
        self._rate_read: int | None = None  # the snapshot whose next step's rate was read

    def off(self) -> None:
        """No update ratio for the rest of this fit (the copy failed)."""
        self.updates = UpdateRatios([])

    def snapshot(self, step: int, applied: int | None) -> None:
        """Copy the weights at the check at `step` (`applied` optimizer updates so far)."""
        if self.updates.layers:
            self.updates.snapshot(step, applied)
            self.step_rate = step_rate(self.model.optimizer)

    def measure(
        self, epoch: int | None, revived: Collection[str], *, begin: bool
    ) -> tuple[dict[str, float], list[Alert]] | None:
        """The ratios and alerts of the step after the snapshot once it ran; or a low finding
        judged again once the loss has a new reading (no ratios); None when there is nothing.
        `revived`: layers revived at the snapshot's check; `begin`: called from a batch's
        begin hook, before that batch runs."""
        step = self.steps.current
        if not self.updates.pending:
            if not self.ratios.waiting:
                return None
            return {}, self.ratios.rejudge(step=step, epoch=epoch, evidence=self.evidence())
        if hasattr(self.model, "jax_state_sync"):
            self.model.jax_state_sync()  # JAX keeps weights outside the model mid-epoch
        if begin and step == self.updates.step and self._rate_read != step:
            self.step_rate, self._rate_read = step_rate(self.model.optimizer), step
        if not self.updates.due(step, self.applied(), self.steps.per_execution):
            return None
        start = time.perf_counter()
        ratios = self.updates.measure()
        # The last check's timings gain the measurement, taken at the batch after it.
        self.record.timings["update_ratio"] = time.perf_counter() - start
        self.record.last_update_ratios = ratios
        # Weights no longer finite are judged as an infinite step (training diverged).
        judged = {**ratios, **dict.fromkeys(self.updates.diverged, math.inf)}
        alerts = self.ratios.update(
            judged, step=step, epoch=epoch, evidence=self.evidence(), revived=revived
        )
        return ratios, alerts

    def observe_loss(self, step: int, logs: Mapping[str, Any] | None, *, epoch_end: bool) -> None:
        """The training loss Keras reported in `logs` at `step` (at an epoch's end, or a
        batch's)."""
        self.ratios.observe_loss(step, logs, epoch_end=epoch_end)

    def evidence(self) -> Evidence:
        """What the verdict weighs besides the ratios: the rate of the step measured, the
        optimizer, the weights' RMS, and the last check's gradients and dead filters."""
        stats = self.record.last_stats
        # The sharpness hook: a check that keeps its `check.sharpness.SharpnessResult` as
        # `FitRecord.last_sharpness` gives the verdict its distance to the stability edge.
        sharpness = getattr(self.record, "last_sharpness", None)
        return Evidence(
            learning_rate=self.step_rate.rate,
            rising=self.step_rate.rising,
            family=optimizer_family(getattr(self.model, "optimizer", None)),
            weight_rms=dict(self.updates.weight_rms),
            gradient_rms={p: g.rms for p, g in self.record.last_gradients.items()},
            dead_fraction={
                p: float(np.mean(s.dead if s.nonnegative else s.dormant))
                for p, s in stats.items()
                if s.filters
            },
            edge=getattr(sharpness, "ratio", None),
        )
