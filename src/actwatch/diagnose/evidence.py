"""What a learning-rate verdict weighs besides the update ratios, read from the fit and model.

A small update-to-weight ratio alone says nothing about the learning rate: a converged model
takes tiny steps because its gradients are tiny, and a network whose units died after steps
that were too large takes none at all. So a verdict also weighs:

- the training loss Keras reports in `logs` (`LossHistory`): still far from its floor and
  not falling, or converged (100x below where it started, or below chance for a classifier);
- the optimizer (`optimizer_family`, `step_rate`): the rate of the step that was measured, read
  before it runs, and for a `LearningRateSchedule` the highest rate it reaches a few steps
  ahead (a warmup is still rising: a small rate now is the plan, not a problem);
- for the Adam family, the size of its step relative to its largest (`adam_strength`): Adam
  moves each weight by about the learning rate while the gradients agree, and by far less once
  they are below its epsilon or cancel out, as at convergence.

`chance_loss` is the loss of a classifier that predicts uniform probabilities: a loss still
there after an epoch has learnt nothing.
"""

from __future__ import annotations

import math
import weakref
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import keras
import numpy as np

__all__ = [
    "CONVERGED",
    "SLOW",
    "Family",
    "LossHistory",
    "LossTrend",
    "StepRate",
    "adam_strength",
    "chance_loss",
    "optimizer_family",
    "step_rate",
]

#: The loss is converged at or below this fraction of its reference (its first reading, or
#: chance for a classifier, whichever is larger): small steps are then expected.
CONVERGED = 1e-2
#: A loss falling by less than this fraction from one reading to the next is falling slowly.
SLOW = 0.05
#: A classifier's loss at or above this fraction of chance has learnt (next to) nothing.
AT_CHANCE = 0.9
#: How far ahead a schedule is evaluated to see whether it is still rising (a warmup).
LOOKAHEAD = (1, 4, 16, 64, 256, 1024)
#: A schedule whose rate ahead is this much above the rate now is still rising.
RISING = 1.5

Family = Literal["adam", "sgd", "other"]
_ADAM = ("Adam", "AdamW", "Adamax", "Nadam")


@dataclass(frozen=True)
class LossTrend:
    """The training loss as a verdict reads it.

    Attributes:
        latest: the last loss Keras reported.
        previous: the reading before it (None with one reading).
        first: the first reading of this fit.
        chance: the loss of uniform predictions for a classifier, else None.
    """

    latest: float
    previous: float | None
    first: float
    chance: float | None

    @property
    def reference(self) -> float:
        """Where the loss started: its first reading, or chance when that is larger."""
        return max(self.first, self.chance or 0.0)

    @property
    def converged(self) -> bool:
        """Far below where it started: the model is done, small steps are expected."""
        return math.isfinite(self.latest) and self.latest <= CONVERGED * self.reference

    @property
    def at_chance(self) -> bool:
        """A classifier's loss no better than uniform predictions."""
        return self.chance is not None and self.latest >= AT_CHANCE * self.chance

    @property
    def falling(self) -> bool:
        """Down by at least `SLOW` of itself since the reading before."""
        if self.previous is None or not math.isfinite(self.latest):
            return False
        return self.previous - self.latest >= SLOW * abs(self.previous)

    @property
    def stalled(self) -> bool:
        """Not converged and not improving: at chance, or falling slowly (needs two readings
        without a chance level)."""
        if self.converged or not math.isfinite(self.latest):
            return False
        return self.at_chance or (self.previous is not None and not self.falling)


class LossHistory:
    """The training losses Keras reported in this fit (`logs["loss"]` at epoch ends, and at
    batch ends when batch hooks run), the last few kept.

    A batch's loss is the mean over its epoch so far: consecutive batches' barely differ even
    while the loss falls fast, so batch-end readings are kept `spacing` steps apart at least
    (the batch checks' spacing); every epoch's end is kept."""

    def __init__(self, chance: float | None = None, keep: int = 8, spacing: int = 1) -> None:
        self.chance = chance
        self.spacing = max(int(spacing), 1)
        self.readings: deque[tuple[int, float]] = deque(maxlen=keep)
        self.first: float | None = None
        self.version = 0  # bumped at each reading

    def observe(self, step: int, logs: Mapping[str, Any] | None, *, epoch_end: bool = True) -> None:
        """Record `logs["loss"]` at `step` (an epoch's end, or a batch's); logs without a
        number for it are ignored."""
        try:
            value = float((logs or {})["loss"])
        except (KeyError, TypeError, ValueError):
            return
        if not epoch_end and self.readings and step - self.readings[-1][0] < self.spacing:
            return
        if self.readings and self.readings[-1][0] == step:
            self.readings.pop()  # a batch end and the epoch end at the same step: the latter
        self.readings.append((step, value))
        if self.first is None:
            self.first = value
        self.version += 1

    def trend(self) -> LossTrend | None:
        """The trend so far; None before the first reading."""
        if not self.readings or self.first is None:
            return None
        previous = self.readings[-2][1] if len(self.readings) > 1 else None
        return LossTrend(
            latest=self.readings[-1][1], previous=previous, first=self.first, chance=self.chance
        )


def _inner(optimizer: Any) -> Any:
    """The optimizer doing the steps (inside a `LossScaleOptimizer`)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def optimizer_family(optimizer: Any) -> Family:
    """`"adam"` for the Adam family (Adam, AdamW, Adamax, Nadam: steps of about the learning
    rate per weight), `"sgd"` for SGD (steps of the rate times the gradient), else `"other"`."""
    for cls in type(_inner(optimizer)).__mro__:
        if cls.__module__.startswith("keras") and cls.__name__ in _ADAM:
            return "adam"
        if cls.__module__.startswith("keras") and cls.__name__ == "SGD":
            return "sgd"
    return "other"


def _number(value: Any) -> float:
    return float(np.asarray(keras.ops.convert_to_numpy(value)))


@dataclass(frozen=True)
class StepRate:
    """The learning rate of the step about to run, and where its schedule goes next.

    Attributes:
        rate: the learning rate of the step about to run (`optimizer.learning_rate` before
            it: a schedule evaluated at the step counter then).
        ahead: the highest rate the schedule reaches within the next `LOOKAHEAD` steps, when
            the rate is a `LearningRateSchedule`; else None.
    """

    rate: float | None
    ahead: float | None = None

    @property
    def rising(self) -> bool:
        """The schedule is still rising (a warmup): it will soon be well above `rate`."""
        if self.ahead is None or self.rate is None:
            return False
        return self.ahead > RISING * self.rate


#: Where a schedule is evaluated: the step about to run, then `LOOKAHEAD` steps later.
_OFFSETS = (0, *LOOKAHEAD)
#: Per schedule on JAX, its values at `_OFFSETS` in one compiled call (False: it cannot be
#: traced). Eagerly, a schedule with `ops.cond` (a warmup) costs ~45 ms a call on JAX (the
#: branches are traced each time), 2-3 ms on TensorFlow, under 1 ms on PyTorch.
_COMPILED: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _schedule_values(schedule: Any, step: int) -> list[float]:
    """`schedule` at `step + k` for each k of `_OFFSETS`."""
    if keras.backend.backend() == "jax" and _COMPILED.get(schedule) is not False:
        import jax
        import jax.numpy as jnp

        if schedule not in _COMPILED:
            offsets = _OFFSETS
            _COMPILED[schedule] = jax.jit(
                lambda s: jnp.stack([jnp.asarray(schedule(s + k), "float32") for k in offsets])
            )
        try:
            return [float(v) for v in np.asarray(_COMPILED[schedule](step))]
        except Exception:  # Python control flow on the step: evaluate it eagerly from now on
            _COMPILED[schedule] = False
    return [_number(schedule(step + k)) for k in _OFFSETS]


def step_rate(optimizer: Any) -> StepRate:
    """The learning rate of the step about to run; read it before that step (after the
    previous one), when the optimizer's counter is where that step will read it. A
    `LearningRateSchedule` is evaluated at the optimizer's raw step counter, as Keras does."""
    inner = _inner(optimizer)
    schedule = getattr(inner, "_learning_rate", None)
    try:
        if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            return StepRate(_number(optimizer.learning_rate))
        counter = getattr(inner, "_iterations", None)
        values = _schedule_values(
            schedule, int(_number(inner.iterations if counter is None else counter))
        )
    except Exception:  # no optimizer, a rate that is not a number, a schedule that fails
        return StepRate(None)
    return StepRate(values[0], max(values[1:]))


def adam_strength(ratio: float, weight_rms: float | None, rate: float | None) -> float | None:
    """The RMS of an Adam-family step divided by the learning rate, from one layer's
    update-to-weight ratio: about 0.3-1 while the gradients agree, far below once they are
    below epsilon or cancel out (a converged model). None without the figures."""
    if not rate or weight_rms is None or not math.isfinite(ratio):
        return None
    return ratio * weight_rms / rate


_CROSS_ENTROPY = ("sparse_categorical_crossentropy", "categorical_crossentropy")


def chance_loss(model: Any) -> float | None:
    """The loss of uniform predictions, `log(classes)`, for a single-output model compiled
    with a cross-entropy loss (`log(2)` for binary cross-entropy); else None."""
    loss = getattr(model, "loss", None)
    name = loss if isinstance(loss, str) else getattr(loss, "name", None)
    name = name or getattr(loss, "__name__", None)
    try:
        outputs = list(model.outputs)
        classes = int(outputs[0].shape[-1]) if len(outputs) == 1 else 0
    except Exception:  # a subclassed model without symbolic outputs
        classes = 0
    if name in _CROSS_ENTROPY and classes >= 2:
        return math.log(classes)
    if name == "binary_crossentropy" and classes == 1:
        return math.log(2.0)
    return None
