"""Alerts: memory across checks, one message per event, the stop decision.

A filter is *confirmed dead* once it has been dead (`max <= 0` over every probe or
statistics sample) at `patience` consecutive checks. A layer raises a dead-filter alert when
it has confirmed-dead filters not alerted before and its fraction of confirmed-dead filters
is at least `dead_alert_fraction`: a few dead filters are normal in a ReLU network, a large
share is the symptom. The alert names the newly dead filters; no later check repeats them
unless they revive and die again, and a later alert needs the layer's count of dead filters to
have grown by `REALERT_SHARE` (10%) of its filters since its last alert: flicker is not an
event, a jump is. Only layers whose outputs are non-negative (ReLU-like) raise dead-filter
alerts, and pooling layers raise none (they repeat their input's dead filters). Non-finite
activations raise one alert, for the first watched layer that has them, until they disappear.

One tracker lives as long as the model and layers it watches: across several `fit()` calls
it goes on remembering, so filters alerted in one fit are not alerted again in the next.
An alert says what is known of when filters died: since the previous check, since an earlier
check (when `patience` held the alert back, or the layer was below `dead_alert_fraction`),
already at the check before training, or unknown (the first check of a run resumed with
`initial_epoch`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from actwatch.check.stats import LayerStats

__all__ = ["Alert", "AlertTracker", "Decision"]

AlertKind = Literal["dead", "nonfinite", "learning_rate", "revived", "outlier"]

#: After its first alert, a layer alerts again only when its count of confirmed-dead filters
#: has grown by at least this share of its filters (one filter at least) since its last alert
#: (a count that falls, as filters revive, lowers that mark): a few filters flickering in and
#: out of "dead" around the threshold, as they do in the big layers of a healthy network judged
#: on a few probes, are not an event; a jump in the layer's dead filters is. With a
#: `dead_alert_fraction` below it, that fraction is the share.
REALERT_SHARE = 0.1


@dataclass(frozen=True)
class Alert:
    """One event worth a human's attention.

    Attributes:
        kind: `"dead"` (filters newly confirmed dead), `"nonfinite"` (NaN/Inf outputs),
            `"learning_rate"` (update-to-weight ratios out of bounds: `count` layers of
            `total`, `layer` the worst one) or `"revived"` (`filters` of `layer` re-initialised
            by `revive="redo"`).
        layer: the layer's path.
        step: the TensorBoard step of the check.
        epoch: the epoch (0-based, as Keras counts) of the check, or None before training.
        filters: indices of the filters this alert is about (the newly dead ones).
        dead_filters: indices of all filters of the layer that are dead at this check.
        died_since_last_check: those of `filters` that were alive at the previous check.
        count: for "dead", how many filters are dead now; for "nonfinite", how many values.
        total: the layer's number of filters; for "nonfinite", of values looked at.
        fraction: `count / total`.
        learning_rate: the optimizer's learning rate at the check, when known.
        message: the plain-text message logged at WARNING.
    """

    kind: AlertKind
    layer: str
    step: int
    epoch: int | None
    filters: tuple[int, ...]
    dead_filters: tuple[int, ...]
    died_since_last_check: tuple[int, ...]
    count: int
    total: int
    fraction: float
    learning_rate: float | None
    message: str

    def markdown(self) -> str:
        """The message as Markdown, for TensorBoard's text dashboard."""
        return self.message.replace(f"'{self.layer}'", f"`{self.layer}`")


@dataclass(frozen=True)
class Decision:
    """What one check decided: its alerts, and whether to stop training (and why)."""

    alerts: tuple[Alert, ...]
    stop_reason: str | None
    revived: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


def _indices(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.flatnonzero(mask))


def _short(indices: Sequence[int], limit: int = 16) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return f"[{shown}{', ...' if len(indices) > limit else ''}]"


def _when(step: int, epoch: int | None) -> str:
    return f"Step {step} (before training)" if epoch is None else f"Epoch {epoch + 1} (step {step})"


class AlertTracker:
    """Remembers per-layer dead-filter streaks across checks and decides on alerts.

    Args:
        patience: checks in a row a filter must be dead before it counts as dead.
        dead_alert_fraction: a layer alerts once this fraction of its filters is dead.
        stop_on_dead_fraction: stop training once a layer's fraction of confirmed dead filters
            reaches this value; None never stops.
        pooling: paths of pooling layers (no dead-filter alerts of their own).
        outlier_ratio: a layer whose `max |a| / median |a|` passes this raises an `"outlier"`
            alert (`count` is the ratio rounded, `total` 1), once until it falls back to or
            below it; None never does.
    """

    def __init__(
        self,
        *,
        patience: int = 1,
        dead_alert_fraction: float = 0.25,
        stop_on_dead_fraction: float | None = None,
        pooling: Sequence[str] = (),
        outlier_ratio: float | None = None,
    ) -> None:
        self.patience = patience
        self.dead_alert_fraction = dead_alert_fraction
        self.stop_on_dead_fraction = stop_on_dead_fraction
        self.pooling = frozenset(pooling)
        self.outlier_ratio = outlier_ratio
        self.reset()

    def reset(self) -> None:
        """Forget everything (another model or other layers)."""
        self._streak: dict[str, np.ndarray] = {}
        self._alerted: dict[str, set[int]] = {}
        # Per layer: the step each filter's current dead streak began at (-1: alive), and the
        # layer's first check (step, epoch, initial_epoch of its fit), to say when filters died.
        self._dead_since: dict[str, np.ndarray] = {}
        self._first: dict[str, tuple[int, int | None, int]] = {}
        self._alert_mark: dict[str, int] = {}  # confirmed-dead count at the layer's last alert
        self._nonfinite_alerted = False
        self._outlying: set[str] = set()
        self._initial_epoch = 0

    def begin_fit(self, *, initial_epoch: int) -> None:
        """A `fit()` starts at epoch `initial_epoch` (0-based); the memory is kept.

        A run resumed with `initial_epoch > 0` has no check before its first batch, so for a
        layer first seen then, alerts say that when its filters died is unknown.
        """
        self._initial_epoch = initial_epoch

    def update(
        self,
        stats: Mapping[str, LayerStats],
        *,
        step: int,
        epoch: int | None,
        learning_rate: float | None,
    ) -> Decision:
        """Take one check's statistics; return its alerts and the stop decision."""
        alerts: list[Alert] = []
        revived: dict[str, tuple[int, ...]] = {}
        stop_reason: str | None = None
        for path, s in stats.items():
            if path in self.pooling:
                continue
            # For every layer, ReLU-like at this check or not: "died since" stays true.
            since = self._dead_since.get(path)
            if since is None or since.shape != s.dead.shape:
                since = np.full(s.dead.shape, -1, dtype=np.int64)
            since = np.where(s.dead, np.where(since >= 0, since, step), -1)
            self._dead_since[path] = since
            self._first.setdefault(path, (step, epoch, self._initial_epoch))
            if not s.nonnegative:
                continue
            streak = self._streak.get(path)
            if streak is None or streak.shape != s.dead.shape:
                streak = np.zeros(s.dead.shape, dtype=np.int64)
            streak = np.where(s.dead, streak + 1, 0)
            self._streak[path] = streak
            alerted = self._alerted.setdefault(path, set())
            back = sorted(i for i in alerted if not s.dead[i])
            if back:
                revived[path] = tuple(back)
                alerted.difference_update(back)
            confirmed = streak >= self.patience
            confirmed_fraction = float(confirmed.sum()) / max(s.filters, 1)
            new = tuple(i for i in _indices(confirmed) if i not in alerted)
            count = int(confirmed.sum())
            mark = min(self._alert_mark.get(path, 0), count)  # revivals lower the mark
            self._alert_mark[path] = mark
            share = min(REALERT_SHARE, self.dead_alert_fraction)
            enough = count - mark >= max(1, math.ceil(share * s.filters - 1e-9))
            if new and enough and confirmed_fraction >= self.dead_alert_fraction:
                alerted.update(new)
                self._alert_mark[path] = count
                alerts.append(
                    self._dead_alert(path, s, confirmed, new, since, step, epoch, learning_rate)
                )
            limit = self.stop_on_dead_fraction
            if limit is not None and stop_reason is None and confirmed_fraction >= limit:
                stop_reason = (
                    f"layer '{path}' has {confirmed_fraction:.1%} of its filters dead, at or "
                    f"above stop_on_dead_fraction={limit}"
                )
        alerts.extend(self._nonfinite(stats, step, epoch, learning_rate))
        alerts.extend(self._outliers(stats, step, epoch, learning_rate))
        return Decision(alerts=tuple(alerts), stop_reason=stop_reason, revived=revived)

    def _dead_alert(
        self,
        path: str,
        s: LayerStats,
        confirmed: np.ndarray,
        new: tuple[int, ...],
        since: np.ndarray,
        step: int,
        epoch: int | None,
        learning_rate: float | None,
    ) -> Alert:
        dead = _indices(confirmed)
        count = len(dead)
        fraction = count / max(s.filters, 1)
        history = self._history(path, new, since, step, learning_rate)
        died = tuple(i for i in new if since[i] == step and step != self._first[path][0])
        message = (
            f"{_when(step, epoch)}: {len(new)} filter(s) of layer '{path}' are dead: "
            f"{_short(new)}. The layer now has {count} of {s.filters} filters dead "
            f"({fraction:.1%}). A dead filter outputs <= 0 for every sample, so it gets no "
            f"gradient and stops learning. {history}"
        )
        return Alert(
            kind="dead",
            layer=path,
            step=step,
            epoch=epoch,
            filters=new,
            dead_filters=dead,
            died_since_last_check=died,
            count=count,
            total=s.filters,
            fraction=fraction,
            learning_rate=learning_rate,
            message=message,
        )

    def _history(
        self,
        path: str,
        new: tuple[int, ...],
        since: np.ndarray,
        step: int,
        learning_rate: float | None,
    ) -> str:
        """When the newly alerted filters died, as far as the checks tell, and the likely cause.

        Each filter is dead since the check its current streak began at: the layer's first
        check (nothing is known before it), this check (it died since the last one), or a check
        in between (dead for `patience` checks in a row, or dead while the layer was below
        `dead_alert_fraction`).
        """
        first_step, first_epoch, initial_epoch = self._first[path]
        at_first = [i for i in new if since[i] == first_step]
        now = [i for i in new if since[i] == step and step != first_step]
        earlier = [i for i in new if i not in at_first and i not in now]
        parts = []
        if now:
            parts.append(f"{len(now)} of them died since the last check")
        if earlier:
            steps = sorted({int(since[i]) for i in earlier})
            parts.append(
                f"{len(earlier)} had been dead since an earlier check (step "
                f"{', '.join(str(x) for x in steps[:4])}{', ...' if len(steps) > 4 else ''})"
            )
        sentences = []
        if parts:
            lr = (
                f" (current learning rate: {learning_rate:.4g})"
                if learning_rate is not None
                else ""
            )
            sentences.append(
                ", ".join(parts) + f". The usual cause is a learning rate that is too high{lr}."
            )
        if at_first:
            lead = "They" if not parts else f"The other {len(at_first)}"
            sentences.append(self._first_seen(first_epoch, initial_epoch, lead))
        text = " ".join(sentences)
        return text[0].upper() + text[1:]

    @staticmethod
    def _first_seen(epoch: int | None, initial_epoch: int, lead: str = "They") -> str:
        """What is known of when filters dead since a layer's first check died."""
        if epoch is None:
            return (
                f"{lead} were dead at the first check: before training, that points at the "
                "initialization or the scaling of the inputs rather than the learning rate."
            )
        if initial_epoch > 0:
            return (
                f"{lead} were already dead at the first check of this run, which resumed at "
                f"epoch {initial_epoch + 1} (initial_epoch={initial_epoch}) without "
                "a check before its first batch: when and why they died is not known from "
                "this run; the alerts of the run before it may tell."
            )
        return (
            f"{lead} were already dead at the first check of this layer that succeeded (the "
            "earlier ones failed): when they died is not known."
        )

    def _outliers(
        self,
        stats: Mapping[str, LayerStats],
        step: int,
        epoch: int | None,
        learning_rate: float | None,
    ) -> list[Alert]:
        """Layers whose outlier ratio newly passed `outlier_ratio` (Sun et al. 2024)."""
        limit = self.outlier_ratio
        if limit is None:
            return []
        out = []
        for path, s in stats.items():
            ratio = s.outlier_ratio
            if ratio is None or ratio <= limit:
                self._outlying.discard(path)
                continue
            if path in self._outlying:
                continue
            self._outlying.add(path)
            message = (
                f"{_when(step, epoch)}: layer '{path}' has a massive activation: max |a| = "
                f"{s.max_abs:.4g} is {ratio:.0f}x its median |a| (outlier_ratio={limit:g}). "
                "Massive activations (Sun et al. 2024) act as fixed biases and can destabilise "
                "training; look for a learning rate that is too high or unnormalised inputs."
            )
            out.append(
                Alert(
                    kind="outlier",
                    layer=path,
                    step=step,
                    epoch=epoch,
                    filters=(),
                    dead_filters=_indices(s.dead),
                    died_since_last_check=(),
                    count=round(ratio),
                    total=1,
                    fraction=0.0,
                    learning_rate=learning_rate,
                    message=message,
                )
            )
        return out

    def _nonfinite(
        self,
        stats: Mapping[str, LayerStats],
        step: int,
        epoch: int | None,
        learning_rate: float | None,
    ) -> list[Alert]:
        bad = [(path, s) for path, s in stats.items() if s.nonfinite > 0]
        if not bad:
            self._nonfinite_alerted = False
            return []
        if self._nonfinite_alerted:
            return []
        self._nonfinite_alerted = True
        path, s = bad[0]
        later = len(bad) - 1
        lr = f" (current learning rate: {learning_rate:.4g})" if learning_rate is not None else ""
        message = (
            f"{_when(step, epoch)}: layer '{path}' produced {s.nonfinite} non-finite (NaN or Inf) "
            f"values{f'; {later} later watched layers too' if later else ''}. Training has "
            f"probably diverged: lower the learning rate{lr} or check the inputs."
        )
        return [
            Alert(
                kind="nonfinite",
                layer=path,
                step=step,
                epoch=epoch,
                filters=(),
                dead_filters=_indices(s.dead),
                died_since_last_check=(),
                count=s.nonfinite,
                total=s.values,
                fraction=s.nonfinite / max(s.values, 1),
                learning_rate=learning_rate,
                message=message,
            )
        ]
