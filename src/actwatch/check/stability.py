"""What an optimizer's step can bear: stability thresholds, the Adam family's preconditioner,
and one check's sharpness figures.

The stability threshold (`stability_threshold`) is that of the quadratic model of the loss
under the optimizer's own update rule, in its steady state (bias corrections faded, after the
first ~100 steps), for the quantity the optimizer's step sees:

- `SGD`: `2 / lr`; with heavy-ball momentum `beta`, `(2 + 2 beta) / lr`; with Nesterov
  momentum (Keras' form), `(2 + 2 beta) / ((1 + 2 beta) lr)`: both of the sharpness;
- `Adam`, `AdamW`, `Adamax`: `(2 + 2 beta_1) / ((1 - beta_1) lr)`, of the preconditioned
  sharpness (`P` = Adam's `(sqrt(v) + eps) / sqrt(1 - beta_2^t)`, which is `sqrt(v_hat) +
  eps / sqrt(1 - beta_2^t)`: Keras puts epsilon outside the bias correction; Adamax's `u +
  eps`; AMSGrad's `v_hat` when it is on);
- `Nadam`: `(2 + 2 beta_1) / ((1 + 2 beta_1)(1 - beta_1) lr)` (its Nesterov form), of the
  preconditioned sharpness (`P = sqrt(v_hat) + eps`);
- any other optimizer (RMSprop, Adagrad, Lion, ...): none.

Decoupled weight decay (AdamW's, or SGD's `weight_decay`) adds its small rate to the
curvature the step sees and is left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
from keras import ops

from actwatch.check.capture import inference

__all__ = ["SharpnessResult", "preconditioner_scale", "stability_threshold", "unwrap"]


@dataclass(frozen=True)
class SharpnessResult:
    """One check's sharpness figures.

    Attributes:
        sharpness: the largest eigenvalue of the loss Hessian with respect to the trainable
            weights (the dominant one, largest in magnitude: in training, the top positive
            one).
        preconditioned: the largest eigenvalue of `P^-1 H` for the Adam family's
            preconditioner `P` (see the module), or `None` for other optimizers and before
            the optimizer's first step.
        threshold: the stability threshold of the optimizer at this learning rate (see
            `stability_threshold`), or `None` for an optimizer without one.
        threshold_of: the figure `threshold` bounds: `"preconditioned"` in the Adam family,
            `"sharpness"` for SGD, `None` without a threshold.
        sharpness_x_lr: `sharpness * learning_rate` (2 at plain gradient descent's edge).
        iterations_run: the Hessian-vector products of the sharpness' power iteration.
        preconditioned_iterations_run: those of the preconditioned one (0 without it).
        seconds: the wall time of the check, host copies included.
    """

    sharpness: float
    preconditioned: float | None
    threshold: float | None
    threshold_of: str | None
    sharpness_x_lr: float
    iterations_run: int
    preconditioned_iterations_run: int
    seconds: float

    @property
    def ratio(self) -> float | None:
        """The figure named by `threshold_of` over `threshold`: about 1 at the edge of
        stability, above 1 unstable; `None` when either is missing."""
        compared = self.preconditioned if self.threshold_of == "preconditioned" else self.sharpness
        if self.threshold is None or compared is None:
            return None
        return compared / self.threshold

    def scalars(self) -> dict[str, float]:
        """`{name: value}` of the figures measured (names under `network/`)."""
        out = {"sharpness": self.sharpness, "sharpness_x_lr": self.sharpness_x_lr}
        if self.preconditioned is not None:
            out["preconditioned_sharpness"] = self.preconditioned
        if self.threshold is not None:
            out["sharpness_threshold"] = self.threshold
        return out


def unwrap(optimizer: Any) -> Any:
    """The optimizer doing the steps (inside a `LossScaleOptimizer`)."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def _is_adam_like(optimizer: Any) -> bool:
    """Adam, AdamW (a subclass), Adamax: an EMA momentum and a diagonal preconditioner."""
    return isinstance(optimizer, (keras.optimizers.Adam, keras.optimizers.Adamax))


def stability_threshold(optimizer: Any, learning_rate: float) -> float | None:
    """The largest curvature the optimizer's step is stable at, at `learning_rate`.

    For the quadratic model of the loss under the optimizer's update rule in its steady
    state (see the module): of the sharpness for SGD, of the preconditioned sharpness for
    the Adam family; `None` for other optimizers or a rate that is not positive.

    Args:
        optimizer: a Keras optimizer (a `LossScaleOptimizer` is looked through).
        learning_rate: the rate of the next steps.

    Example:

    >>> stability_threshold(keras.optimizers.SGD(0.1), 0.1)
    20.0
    """
    optimizer = unwrap(optimizer)
    lr = float(learning_rate)
    if not lr > 0:
        return None
    if isinstance(optimizer, keras.optimizers.SGD):
        beta = float(optimizer.momentum)
        if optimizer.nesterov and beta:
            return (2 + 2 * beta) / ((1 + 2 * beta) * lr)
        return (2 + 2 * beta) / lr
    if isinstance(optimizer, keras.optimizers.Nadam):
        beta = float(optimizer.beta_1)
        return (2 + 2 * beta) / ((1 + 2 * beta) * (1 - beta) * lr)
    if _is_adam_like(optimizer):
        beta = float(optimizer.beta_1)
        return (2 + 2 * beta) / ((1 - beta) * lr)
    return None


def preconditioner_scale(optimizer: Any, variables: Sequence[Any]) -> list[Any] | None:
    """`P^-1/2` per variable (float32) from the Adam family's second-moment state, or `None`
    for another optimizer, before its first step, or a variable it does not update."""
    optimizer = unwrap(optimizer)
    adam_like = _is_adam_like(optimizer)
    if not (adam_like or isinstance(optimizer, keras.optimizers.Nadam)):
        return None
    steps = int(ops.convert_to_numpy(optimizer.iterations))
    if steps < 1 or not optimizer.built:
        return None
    eps = float(optimizer.epsilon)
    try:
        index = [optimizer._get_variable_index(v) for v in variables]
    except KeyError:  # trainable now, not when the optimizer was built
        return None
    if isinstance(optimizer, keras.optimizers.Adamax):
        moments, root, correction = optimizer._u, False, 1.0
    else:
        amsgrad = getattr(optimizer, "amsgrad", False)
        moments = optimizer._velocity_hats if amsgrad else optimizer._velocities
        root, correction = True, math.sqrt(1 - float(optimizer.beta_2) ** steps)
    nadam = isinstance(optimizer, keras.optimizers.Nadam)
    scales = []
    with inference():
        for i in index:
            v = ops.cast(moments[i].value, "float32")
            p = ops.sqrt(v) if root else v
            # Adam: (sqrt(v) + eps) / c; Nadam: sqrt(v) / c + eps; Adamax: u + eps.
            p = p / correction + eps if nadam else (p + eps) / correction
            scales.append(ops.rsqrt(p))
    return scales
