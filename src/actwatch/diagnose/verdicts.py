"""Learning-rate verdicts: what update ratios out of bounds, with the evidence, say about the rate.

`RatioTracker` counts, per layer, the measurements in a row a ratio was above `high` or below
`low`; once layers have stayed there `patience` times it judges them, once, with the evidence
(`actwatch.diagnose.evidence`):

- **above `high`: too high.** Steps that move weights by a tenth of their size overshoot.
- **below `low`, the units died after large steps: too high.** Ratios of exactly 0 after a
  ratio above `high` earlier in the fit, or a watched layer with at least half its filters dead
  while the layers get no gradient (ratios or gradient RMS of 0, or, the loss known, Adam
  steps under 1% of their full size); unless the loss is converged or still falling.
- **below `low` while a schedule is still rising (a warmup), or at a rate of 0: nothing.**
- **below `low`, not limited by the rate: nothing.** The loss is converged (100x below where
  it started); the gradients fell 1000x since the fit's first check; or an Adam-family step is
  under 1% of its full size (its gradients are below epsilon or cancel out).
- **below `low`, weights that did not move at all: stuck** (no gradient reaches them), never
  "raise the rate", once the loss shows no progress.
- **below `low`, the loss still far from converged and not improving: too low**; worded as a
  cut when the rate is 10x or more below the highest of this fit (a schedule or a callback
  lowered it). Without a loss reading yet, the verdict waits for one (re-judged at the next
  check, `RatioTracker.rejudge`).

Advice moves the rate at most `MAX_MOVE` times in one go towards the geometric mean of the
bounds (the healthy ratio they imply), never the other way, and a raise stops at the top of
the optimizer family's usual range (`USUAL`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from actwatch.diagnose import alerts as wording
from actwatch.diagnose.alerts import Alert
from actwatch.diagnose.evidence import Family, LossHistory, LossTrend, adam_strength
from actwatch.diagnose.updates import DEFAULT_BOUNDS

__all__ = [
    "MAX_MOVE",
    "USUAL",
    "Evidence",
    "RateFacts",
    "RatioTracker",
    "advised_rate",
    "healthy_ratio",
]

#: Advice never moves the learning rate by more than this factor in one go.
MAX_MOVE = 10.0
#: The learning rates each family usually trains at: advice never raises past the top.
USUAL: dict[Family, tuple[str, float, float]] = {
    "adam": ("the Adam family", 1e-5, 3e-3),
    "sgd": ("SGD", 1e-4, 1.0),
}
#: A watched layer with this fraction of its filters dead (with no gradient) has died.
DEAD_FRACTION = 0.5
#: Gradients this far below the fit's first check's have vanished (or converged).
VANISHED = 1e-3
#: An Adam-family step below this fraction of its full size is not limited by the rate.
WEAK_ADAM_STEP = 1e-2
#: A rate this far below the fit's highest was cut (by a schedule or a callback).
CUT = 0.1
#: The sharpness at this share of what the rate bears (`SharpnessResult.ratio`) is at the edge
#: of stability: a higher rate would not train faster, so a small ratio is no "too low".
EDGE = 0.5

Verdict = Literal["high", "dead", "stuck", "low", "cut", "none", "wait"]


def healthy_ratio(low: float, high: float) -> float:
    """The healthy ratio the bounds imply: their geometric mean (1e-3 for the defaults)."""
    return math.sqrt(low * high) if low > 0 else high / 100.0


_NICE = (1.0, 2.0, 3.0, 5.0)


def advised_rate(rate: float, factor: float, family: Family = "other") -> float | None:
    """The rate to advise: `rate * factor` (`factor` > 1 raises, < 1 lowers) moved at most
    `MAX_MOVE` times, rounded to 1, 2, 3 or 5 times a power of ten on the near side, and a
    raise capped at the top of the family's usual range. None when no move in that direction
    is advisable (a raise from the top of the usual range)."""
    if not rate > 0 or not math.isfinite(rate) or math.isnan(factor) or factor == 1:
        return None
    raising = factor > 1
    move = min(factor if raising else 1 / max(factor, 1e-300), MAX_MOVE)
    wanted = rate * move if raising else rate / move
    if raising and family in USUAL:
        wanted = min(wanted, USUAL[family][2])
    exponent = math.floor(math.log10(wanted))
    candidates = sorted(n * 10.0**e for e in (exponent - 1, exponent, exponent + 1) for n in _NICE)
    if raising:
        below = [c for c in candidates if c <= wanted * 1.0001 and c > rate * 1.0001]
        return max(below) if below else None
    above = [c for c in candidates if c >= wanted * 0.9999 and c < rate * 0.9999]
    return min(above) if above else None


@dataclass(frozen=True)
class RateFacts:
    """What a learning-rate alert says, for `alerts.learning_rate` to word: bounds, the
    healthy ratio, the measured step's rate and the advised one (None: no figure), the family's
    `usual` range `(name, low, high)`, the loss trend, the largest ratio above `high` and its
    step, the deadest layer and its dead fraction, the fit's highest rate, the sharpness over
    its stability threshold, and the step measured when the alert comes at a later check."""

    measured: int
    low: float
    high: float
    healthy: float
    learning_rate: float | None
    target: float | None
    usual: tuple[str, float, float] | None = None
    loss: LossTrend | None = None
    largest: tuple[float, int] | None = None
    dead: tuple[str, float] | None = None
    top_rate: float | None = None
    edge: float | None = None
    measured_step: int | None = None


@dataclass(frozen=True)
class Evidence:
    """What a measurement's verdict weighs besides the ratios.

    Attributes:
        learning_rate: the rate of the measured step (read before it ran).
        rising: a schedule still rising (a warmup).
        family: the optimizer's family (`evidence.optimizer_family`).
        weight_rms: each measured layer's weight RMS at the snapshot.
        gradient_rms: each watched layer's gradient RMS at the last check (with labels).
        dead_fraction: each watched layer's fraction of dead (or dormant) filters at the
            last check.
        edge: the last check's sharpness over its stability threshold
            (`check.sharpness.SharpnessResult.ratio`), when measured: about 1 at the edge of
            stability (a higher rate will not train faster), far below 1 there is room.
    """

    learning_rate: float | None = None
    rising: bool = False
    family: Family = "other"
    weight_rms: Mapping[str, float] = field(default_factory=dict)
    gradient_rms: Mapping[str, float] = field(default_factory=dict)
    dead_fraction: Mapping[str, float] = field(default_factory=dict)
    edge: float | None = None


@dataclass
class _Pending:
    """A low finding waiting for a loss reading."""

    out: dict[str, float]
    measured: int
    step: int
    evidence: Evidence
    version: int  # the loss history's version when last judged


class RatioTracker:
    """Per layer, how many measurements in a row the ratio was above `high` or below `low`;
    one `learning_rate` alert per direction once layers have stayed there `patience` times
    and the evidence supports a verdict (see the module).

    An alert is not repeated while the same layers stay out of bounds; a layer that comes
    back within bounds can alert again.

    Args:
        low, high: the bounds (`update_ratio_bounds`).
        patience: measurements in a row out of bounds before a verdict.
        chance: the loss of uniform predictions (`evidence.chance_loss`), when known.
        spacing: batch-end losses are kept this many steps apart (`every_n_batches`).
    """

    def __init__(
        self,
        *,
        low: float = DEFAULT_BOUNDS[0],
        high: float = DEFAULT_BOUNDS[1],
        patience: int = 1,
        chance: float | None = None,
        spacing: int = 1,
    ) -> None:
        self.low, self.high, self.patience = low, high, patience
        self.healthy = healthy_ratio(low, high)
        self.losses = LossHistory(chance, spacing=spacing)
        self._streak: dict[tuple[str, str], int] = {}
        self._alerted: set[tuple[str, str]] = set()
        self._largest: tuple[float, int] | None = None  # the largest ratio above `high`, step
        self._top_rate = 0.0  # the highest learning rate measured in this fit
        self._first_gradients: dict[str, float] = {}
        self._pending: _Pending | None = None
        self.last_verdict: Verdict | None = None  # of the last judged low finding

    def observe_loss(
        self, step: int, logs: Mapping[str, Any] | None, *, epoch_end: bool = True
    ) -> None:
        """The training loss Keras reported (`logs`) at `step`, an epoch's end or a batch's."""
        self.losses.observe(step, logs, epoch_end=epoch_end)

    @property
    def waiting(self) -> bool:
        """A low finding waits for a loss reading, and one came since it was judged."""
        return self._pending is not None and self._pending.version != self.losses.version

    def update(
        self,
        ratios: Mapping[str, float],
        *,
        step: int,
        epoch: int | None,
        learning_rate: float | None = None,
        evidence: Evidence | None = None,
        revived: Collection[str] = (),
    ) -> list[Alert]:
        """This measurement's alerts. Layers in `revived` had filters re-initialised at the
        check (ReDo zeroes their outgoing weights, so their incoming weights get no gradient
        in the next step): they are not held to the low bound this time."""
        ev = evidence if evidence is not None else Evidence(learning_rate=learning_rate)
        for path, g in ev.gradient_rms.items():
            self._first_gradients.setdefault(path, g)
        alerts = []
        for direction in ("high", "low"):
            out = {
                path: r
                for path, r in ratios.items()
                if (r > self.high if direction == "high" else r < self.low and path not in revived)
            }
            for path in ratios:
                key = (direction, path)
                if path in out:
                    self._streak[key] = self._streak.get(key, 0) + 1
                else:
                    self._streak.pop(key, None)
                    self._alerted.discard(key)
            confirmed = {
                p: r for p, r in out.items() if self._streak[(direction, p)] >= self.patience
            }
            if direction == "low" and not confirmed:
                self._pending = None
            if not any((direction, p) not in self._alerted for p in confirmed):
                continue
            if direction == "high":
                alerts.append(self._alert("high", confirmed, len(ratios), step, epoch, ev))
                self._alerted.update(("high", p) for p in confirmed)
            else:
                self._pending = _Pending(dict(confirmed), len(ratios), step, ev, -1)
                alerts.extend(self._judge(step, epoch))
        if ratios and max(ratios.values()) > self.high:
            worst = max(ratios.values())
            if self._largest is None or worst > self._largest[0]:
                self._largest = (worst, step)
        if ev.learning_rate is not None and math.isfinite(ev.learning_rate):
            self._top_rate = max(self._top_rate, ev.learning_rate)
        return alerts

    def rejudge(self, *, step: int, epoch: int | None, evidence: Evidence) -> list[Alert]:
        """A low finding that waited for the loss, judged again once a new reading came
        (at a check, with that check's `evidence` of dead filters and gradients)."""
        pending = self._pending
        if pending is None or not self.waiting:
            return []
        pending.evidence = Evidence(
            learning_rate=pending.evidence.learning_rate,
            rising=pending.evidence.rising,
            family=pending.evidence.family,
            weight_rms=pending.evidence.weight_rms,
            gradient_rms=evidence.gradient_rms or pending.evidence.gradient_rms,
            dead_fraction=evidence.dead_fraction or pending.evidence.dead_fraction,
            edge=evidence.edge if evidence.edge is not None else pending.evidence.edge,
        )
        return self._judge(step, epoch)

    # The verdict ----------------------------------------------------------------------

    def _judge(self, step: int, epoch: int | None) -> list[Alert]:
        pending = self._pending
        assert pending is not None
        pending.version = self.losses.version
        verdict = self.verdict(pending.out, pending.evidence, self.losses.trend())
        self.last_verdict = verdict
        if verdict == "wait":
            return []
        self._pending = None
        if verdict == "none":  # judged again at the next measurement
            return []
        self._alerted.update(("low", p) for p in pending.out)
        return [
            self._alert(
                verdict, pending.out, pending.measured, step, epoch, pending.evidence, pending.step
            )
        ]

    def verdict(self, out: Mapping[str, float], ev: Evidence, loss: LossTrend | None) -> Verdict:
        """The verdict on layers whose ratios stayed below `low` (see the module)."""
        rate = ev.learning_rate
        if rate == 0:
            return "none"  # a step at rate 0 (a schedule's start or end): nothing moves
        zero = all(r == 0 for r in out.values())
        progressing = loss is not None and (loss.converged or loss.falling)
        no_gradient = bool(ev.gradient_rms) and all(ev.gradient_rms.get(p, 1) == 0 for p in out)
        weak = self._weak_adam(out, ev)
        dead_layer = max(ev.dead_fraction.values(), default=0.0) >= DEAD_FRACTION
        after_large = zero and self._largest is not None
        stopped = zero or no_gradient or (weak and loss is not None)
        if not progressing and (after_large or (dead_layer and stopped)):
            return "dead"
        if ev.rising:
            return "none"  # a warmup: a small rate now is the plan, not a problem
        if ev.edge is not None and ev.edge >= EDGE:
            return "none"  # at the edge of stability a higher rate will not train faster
        if progressing or weak or self._vanished(out, ev):
            return "none"
        if loss is None or not loss.stalled:
            return "wait" if loss is None or loss.previous is None else "none"
        if zero:
            return "stuck"
        if dead_layer:  # weights creeping (weight decay) in a half-dead network: no raise
            return "dead" if loss.at_chance else "stuck"
        cut = rate is not None and rate <= CUT * self._top_rate
        return "cut" if cut else "low"

    def _vanished(self, out: Mapping[str, float], ev: Evidence) -> bool:
        falls = [
            ev.gradient_rms[p] / self._first_gradients[p]
            for p in out
            if p in ev.gradient_rms and self._first_gradients.get(p, 0) > 0
        ]
        return bool(falls) and statistics.median(falls) < VANISHED

    def _weak_adam(self, out: Mapping[str, float], ev: Evidence) -> bool:
        if ev.family != "adam":
            return False
        strengths = [
            s
            for p, r in out.items()
            if (s := adam_strength(r, ev.weight_rms.get(p), ev.learning_rate)) is not None
        ]
        return bool(strengths) and statistics.median(strengths) < WEAK_ADAM_STEP

    # The alert --------------------------------------------------------------------------

    def _alert(
        self,
        verdict: Verdict,
        out: Mapping[str, float],
        measured: int,
        step: int,
        epoch: int | None,
        ev: Evidence,
        measured_step: int | None = None,
    ) -> Alert:
        typical = float(statistics.median(out.values()))
        rate = ev.learning_rate
        if verdict in ("high", "dead"):
            factor = 1 / MAX_MOVE if verdict == "dead" else self.healthy / max(typical, 1e-300)
        elif verdict == "cut":
            factor = min(self._top_rate / rate, self.healthy / max(typical, 1e-300)) if rate else 1
        else:
            factor = self.healthy / typical if typical > 0 else MAX_MOVE
        target = advised_rate(rate, factor, ev.family) if rate and verdict != "stuck" else None
        dead = max(ev.dead_fraction.items(), key=lambda kv: kv[1], default=None)
        return wording.learning_rate(
            verdict,  # type: ignore[arg-type]
            out,
            RateFacts(
                measured=measured,
                low=self.low,
                high=self.high,
                healthy=self.healthy,
                learning_rate=rate,
                target=target,
                usual=USUAL.get(ev.family),
                loss=self.losses.trend(),
                largest=self._largest,
                dead=dead if dead is not None and dead[1] >= DEAD_FRACTION else None,
                top_rate=self._top_rate or None,
                edge=ev.edge,
                measured_step=measured_step if measured_step != step else None,
            ),
            step=step,
            epoch=epoch,
        )
