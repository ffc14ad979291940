"""Alert memory: dead-filter streaks across checks, and each check's alerts and stop decision.

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
`initial_epoch`). The words of every alert are in `actwatch.diagnose.alerts`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TypedDict

import numpy as np

from actwatch.check.stats import LayerStats
from actwatch.diagnose import alerts as wording
from actwatch.diagnose.alerts import Alert, Decision, indices
from actwatch.diagnose.attention import LogitWatch

__all__ = ["REALERT_SHARE", "AlertTracker"]


class _At(TypedDict):
    """The check an alert is about, as the wording functions take it."""

    step: int
    epoch: int | None
    learning_rate: float | None


#: After its first alert, a layer alerts again only when its count of confirmed-dead filters
#: has grown by at least this share of its filters (one filter at least) since its last alert
#: (a count that falls, as filters revive, lowers that mark): a few filters flickering in and
#: out of "dead" around the threshold, as they do in the big layers of a healthy network judged
#: on a few probes, are not an event; a jump in the layer's dead filters is. With a
#: `dead_alert_fraction` below it, that fraction is the share.
REALERT_SHARE = 0.1


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
        self._logits = LogitWatch()  # attention-logit growth (transformers)
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
        at = _At(step=step, epoch=epoch, learning_rate=learning_rate)
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
            new = tuple(i for i in indices(confirmed) if i not in alerted)
            count = int(confirmed.sum())
            mark = min(self._alert_mark.get(path, 0), count)  # revivals lower the mark
            self._alert_mark[path] = mark
            share = min(REALERT_SHARE, self.dead_alert_fraction)
            enough = count - mark >= max(1, math.ceil(share * s.filters - 1e-9))
            if new and enough and confirmed_fraction >= self.dead_alert_fraction:
                alerted.update(new)
                self._alert_mark[path] = count
                alerts.append(self._dead_alert(path, s, confirmed, new, since, at))
            limit = self.stop_on_dead_fraction
            if limit is not None and stop_reason is None and confirmed_fraction >= limit:
                stop_reason = (
                    f"layer '{path}' has {confirmed_fraction:.1%} of its filters dead, at or "
                    f"above stop_on_dead_fraction={limit}"
                )
        alerts.extend(self._nonfinite(stats, at))
        alerts.extend(self._outliers(stats, at))
        alerts.extend(self._logits.update(stats, **at))
        return Decision(alerts=tuple(alerts), stop_reason=stop_reason, revived=revived)

    def _dead_alert(
        self,
        path: str,
        s: LayerStats,
        confirmed: np.ndarray,
        new: tuple[int, ...],
        since: np.ndarray,
        at: _At,
    ) -> Alert:
        """The alert of `new` filters confirmed dead, with what is known of when they died:
        since the layer's first check (nothing is known before it), since this check (died
        since the last one), or since a check in between (held back by `patience`, or dead
        while the layer was below `dead_alert_fraction`)."""
        first_step, first_epoch, initial_epoch = self._first[path]
        step = at["step"]
        now = tuple(i for i in new if since[i] == step and step != first_step)
        at_first = [i for i in new if since[i] == first_step]
        earlier = sorted({int(since[i]) for i in new if i not in at_first and i not in now})
        return wording.dead(
            path,
            s.filters,
            dead=indices(confirmed),
            new=new,
            died_now=now,
            earlier_steps=earlier,
            earlier_count=len(new) - len(now) - len(at_first),
            at_first=len(at_first),
            first_epoch=first_epoch,
            initial_epoch=initial_epoch,
            **at,
        )

    def _outliers(self, stats: Mapping[str, LayerStats], at: _At) -> list[Alert]:
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
            out.append(
                wording.outlier(
                    path,
                    max_abs=float(s.max_abs or 0.0),
                    ratio=ratio,
                    limit=limit,
                    dead=indices(s.dead),
                    **at,
                )
            )
        return out

    def _nonfinite(self, stats: Mapping[str, LayerStats], at: _At) -> list[Alert]:
        """One alert for the first layer with NaN/Inf outputs, until they disappear."""
        bad = [(path, s) for path, s in stats.items() if s.nonfinite > 0]
        if not bad:
            self._nonfinite_alerted = False
            return []
        if self._nonfinite_alerted:
            return []
        self._nonfinite_alerted = True
        path, s = bad[0]
        return [
            wording.nonfinite(
                path,
                count=s.nonfinite,
                values=s.values,
                later_layers=len(bad) - 1,
                dead=indices(s.dead),
                **at,
            )
        ]
