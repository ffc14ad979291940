"""Update-to-weight ratios: how far one optimizer step moves each watched layer's weights.

For a layer with trainable weights W (kernel and bias taken as one vector), the ratio is
`||W_after - W_before|| / ||W_before||` over one real training step: the weights are copied
on the device at a check (`UpdateRatios.snapshot`) and compared with the weights once the
next training batch has run (`UpdateRatios.measure`, called from a batch-begin hook, which
keeps Keras' asynchronous batch dispatch on). With `steps_per_execution=k` one "step" is the
k optimizer steps of one execution. The comparison waits for the optimizer to have applied
an update (its step counter moved: a `LossScaleOptimizer` step skipped for non-finite
gradients, or a gradient-accumulation step, leaves the weights as they were and would read
as a ratio of 0), and is dropped when more than one execution ran in between. A layer whose
weights were all zero at the snapshot and moved has no ratio (it would be infinite).
A watched activation without weights of its own (conv -> BN -> ReLU, a residual block's
convs -> BN -> Add -> ReLU, where the default watches the ReLU only) gets the ratio of the
linear convolutions that make its filters, their weights taken as one vector.

A ratio near 1e-3 is healthy (CS231n notes, "Ratio of weights:updates"); `RatioTracker`
alerts when a layer stays above `high` (the learning rate is too high) or below `low` while
trainable (too low, or the layer is stuck) for `patience` measurements in a row.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from actwatch._logging import logger
from actwatch.check.layers import WatchedLayer
from actwatch.diagnose.alerts import Alert

__all__ = ["DEFAULT_BOUNDS", "HEALTHY_RATIO", "MAX_SNAPSHOT_BYTES", "RatioTracker", "UpdateRatios"]

#: The healthy update-to-weight ratio (CS231n notes).
HEALTHY_RATIO = 1e-3
#: Default bounds: two orders of magnitude either side of `HEALTHY_RATIO`.
DEFAULT_BOUNDS = (1e-5, 1e-1)


#: At most this many bytes of weights are copied for the update ratio at a check (in network
#: order; layers beyond get no ratio): ResNet50's watched convolutions hold 90 MB, MobileNetV2's
#: 8 MB; a billion-parameter model would otherwise hold a second copy of itself.
MAX_SNAPSHOT_BYTES = 256 * 2**20


def _nbytes(variable: Any) -> int:
    """Bytes of a variable: its dtype's name ends in its width (`float32`, `bfloat16`)."""
    bits = "".join(c for c in str(variable.dtype) if c.isdigit()) or "8"
    return int(np.prod(variable.shape)) * max(1, int(bits) // 8)


def _squared_sums(before: list[list[Any]], now: list[list[Any]]) -> Any:
    """Per layer `(||now - before||^2, ||before||^2)` over its weights as one vector: `(L, 2)`."""
    rows = []
    for olds, news in zip(before, now, strict=True):
        delta = ops.zeros(())
        norm = ops.zeros(())
        for old, new in zip(olds, news, strict=True):
            old = ops.cast(old, "float32")
            delta = delta + ops.sum(ops.square(ops.cast(new, "float32") - old))
            norm = norm + ops.sum(ops.square(old))
        rows.append(ops.stack([delta, norm]))
    return ops.stack(rows)


def _compile(function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` compiled by the backend's compiler (one call instead of a few eager ops per
    weight: ResNet50's 106 weights took 98 ms eagerly on TensorFlow); torch runs it eagerly."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function, reduce_retracing=True)  # type: ignore[no-any-return]
    if backend == "jax":
        import jax

        return jax.jit(function)  # type: ignore[no-any-return]
    return function


def _no_grad() -> contextlib.AbstractContextManager[Any]:
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def _weights(layer: Any) -> list[Any]:
    return list(layer.trainable_weights) if layer.trainable else []


class UpdateRatios:
    """Device copies of the watched layers' weights at a check, compared after one step.

    Args:
        watched: the watched layers; those with trainable weights are measured (a layer
            reachable twice, as a pooling layer's input is not, is measured once per path).
        sources: for watched layers without weights of their own (an activation after a
            linear convolution and BatchNormalization), the layers whose weights stand for
            theirs (`layers.weight_sources`), taken as one vector.
    """

    def __init__(
        self,
        watched: Sequence[WatchedLayer],
        sources: Mapping[str, Sequence[Any]] | None = None,
        max_bytes: int = MAX_SNAPSHOT_BYTES,
    ) -> None:
        self.layers: dict[str, list[Any]] = {}
        self.left_out: list[str] = []  # watched layers with weights beyond `max_bytes`
        total = 0
        for w in watched:
            own = [w.layer] if _weights(w.layer) else []
            found = own or [layer for layer in (sources or {}).get(w.path, ()) if _weights(layer)]
            if not found:
                continue
            size = sum(_nbytes(v) for layer in found for v in _weights(layer))
            if total + size > max_bytes:
                self.left_out.append(w.path)
                continue
            total += size
            self.layers[w.path] = found
        self.bytes = total  # what one snapshot holds
        self._sums: Callable[[list[list[Any]], list[list[Any]]], Any] | None = None
        if self.left_out:
            logger.info(
                "actwatch: the update ratio copies at most %.0f MB of weights a check; %d "
                "watched layer(s) beyond that get no ratio (first: %r).",
                max_bytes / 2**20,
                len(self.left_out),
                self.left_out[0],
            )
        self._before: dict[str, list[Any]] | None = None
        self.step: int | None = None  # the step of the snapshot
        self.updates: int | None = None  # the optimizer updates applied at the snapshot

    @property
    def pending(self) -> bool:
        return self._before is not None

    def snapshot(self, step: int, updates: int | None = None) -> None:
        """Copy the weights now (on the device), before the batch after step `step` runs;
        `updates` is how many optimizer updates were applied so far, when known."""
        if not self.layers:
            return
        self._before = {
            path: [ops.copy(v.value) for layer in layers for v in _weights(layer)]
            for path, layers in self.layers.items()
        }
        self.step = step
        self.updates = updates

    def due(self, step: int, applied: int | None, per_execution: int) -> bool:
        """Whether the weights now are one training step after the snapshot: measure then.

        `step` is the step now, `applied` the optimizer's updates applied so far (None when
        unknown), `per_execution` the batches a batch hook stands for. Not yet while no update
        was applied since the snapshot (a skipped or gradient-accumulation step); never (the
        snapshot is dropped) when more than one execution ran since.
        """
        if self._before is None or self.step is None or step <= self.step:
            return False
        if applied is not None and self.updates is not None:
            moved = applied - self.updates
            if moved <= 0:  # a skipped or gradient-accumulation step: wait for an update
                return False
            if moved <= per_execution:
                return True
        elif step - self.step <= per_execution:
            return True
        self.cancel()  # more than one execution, or batches ran without a batch hook
        return False

    def cancel(self) -> None:
        self._before = None
        self.step = None
        self.updates = None

    def measure(self) -> dict[str, float]:
        """`{path: ratio}` of the weights now against the snapshot; clears the snapshot.

        A layer whose weights were all zero (and moved) or not finite at the snapshot has
        no ratio; a step that made finite weights non-finite has an infinite one."""
        before = self._before
        self.cancel()
        if before is None:
            return {}
        now = [
            [v.value for layer in layers for v in _weights(layer)]
            for layers in self.layers.values()
        ]
        if self._sums is None:
            self._sums = _compile(_squared_sums)
        with _no_grad():
            sums = np.asarray(keras.ops.convert_to_numpy(self._sums(list(before.values()), now)))
        ratios = {}
        for path, (d, n) in zip(self.layers, sums.astype(np.float64).tolist(), strict=True):
            if n == 0 and d == 0:
                ratios[path] = 0.0  # all zero and not moving: stuck
            elif n > 0 and math.isfinite(n):
                ratios[path] = math.sqrt(d) / math.sqrt(n) if math.isfinite(d) else math.inf
        return ratios


def _times(factor: float) -> str:
    """A factor as people say it: `5000x`, `20x`, `1.5x`."""
    return f"{factor:.0f}x" if factor >= 10 else f"{factor:.2g}x"


def _round_power(value: float) -> float:
    """`value` rounded to a power of ten (in log scale)."""
    return float(10.0 ** round(math.log10(value))) if value > 0 else 0.0


class RatioTracker:
    """Per layer, how many measurements in a row the ratio was above `high` or below `low`;
    one `learning_rate` alert per direction once layers have stayed there `patience` times.

    An alert is not repeated while the same layers stay out of bounds; a layer that comes
    back within bounds can alert again.
    """

    def __init__(
        self, *, low: float = DEFAULT_BOUNDS[0], high: float = DEFAULT_BOUNDS[1], patience: int = 1
    ) -> None:
        self.low = low
        self.high = high
        self.patience = patience
        self._streak: dict[tuple[str, str], int] = {}
        self._alerted: set[tuple[str, str]] = set()
        self._was_high = False  # a "too high" alert came before

    def update(
        self,
        ratios: Mapping[str, float],
        *,
        step: int,
        epoch: int | None,
        learning_rate: float | None,
        revived: Collection[str] = (),
    ) -> list[Alert]:
        """This measurement's alerts. Layers in `revived` had filters re-initialised at the
        check (ReDo zeroes their outgoing weights, so their incoming weights get no gradient
        in the next step): they are not held to the low bound this time."""
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
            new = [p for p in confirmed if (direction, p) not in self._alerted]
            if not new:
                continue
            self._alerted.update((direction, p) for p in confirmed)
            alerts.append(
                self._alert(direction, confirmed, len(ratios), step, epoch, learning_rate)
            )
            self._was_high = self._was_high or direction == "high"
        return alerts

    def _alert(
        self,
        direction: str,
        out: Mapping[str, float],
        measured: int,
        step: int,
        epoch: int | None,
        learning_rate: float | None,
    ) -> Alert:
        worst = (
            max(out, key=out.__getitem__) if direction == "high" else min(out, key=out.__getitem__)
        )
        typical = float(np.median(list(out.values())))
        names = ", ".join(f"'{p}' {r:.3g}" for p, r in list(out.items())[:8])
        more = ", ..." if len(out) > 8 else ""
        lr = f"{learning_rate:.4g}" if learning_rate is not None else "unknown"
        when = f"Epoch {epoch + 1} (step {step})" if epoch is not None else f"Step {step}"
        if direction == "high":
            factor = typical / HEALTHY_RATIO
            if learning_rate:
                target = _round_power(learning_rate / factor)
                move = f"lower it about {_times(learning_rate / target)}, to about {target:g}"
            else:
                move = f"lower it about {_times(_round_power(factor))}"
            advice = f"The learning rate is too high (current: {lr}): {move}."
            bound = f"above {self.high:g}"
        elif self._was_high:
            advice = (
                "The weights have (almost) stopped moving after steps that were too large (an "
                "earlier alert): the units are probably dead or saturated, which a higher "
                "learning rate will not fix. Restart from before the jump with a lower "
                f"learning rate (current: {lr})."
            )
            bound = f"below {self.low:g}"
        else:
            factor = HEALTHY_RATIO / typical if typical > 0 else math.inf
            if math.isfinite(factor) and learning_rate:
                target = _round_power(learning_rate * factor)
                move = f"raise it about {_times(target / learning_rate)}, to about {target:g}"
            else:
                move = "their weights did not move at all; check that they get a gradient"
            advice = (
                f"The learning rate is too low (current: {lr}) or the layers are stuck "
                f"(frozen by hand, dead filters, vanishing gradients): {move}."
            )
            bound = f"below {self.low:g}"
        message = (
            f"{when}: the update-to-weight ratio ||dW||/||W|| of one training step is {bound} "
            f"in {len(out)} of {measured} layers with weights ({names}{more}); about "
            f"{HEALTHY_RATIO:g} is healthy. {advice}"
        )
        return Alert(
            kind="learning_rate",
            layer=worst,
            step=step,
            epoch=epoch,
            filters=(),
            dead_filters=(),
            died_since_last_check=(),
            count=len(out),
            total=measured,
            fraction=len(out) / max(measured, 1),
            learning_rate=learning_rate,
            message=message,
        )
