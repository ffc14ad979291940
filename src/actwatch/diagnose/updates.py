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

A ratio near 1e-3 is healthy (CS231n notes, "Ratio of weights:updates"). What a ratio out of
bounds means for the learning rate is decided in `actwatch.diagnose.verdicts`: a small ratio
alone is not a low learning rate (a converged model takes tiny steps too).

The comparison is one call compiled by the backend's compiler (`jax.jit`, `tf.function`),
shared by every monitor in the process whose layers have the same weight shapes: a
`tf.function` made per monitor would be traced once per monitor, and TensorFlow warns about
retracing from the fifth.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from actwatch._logging import logger
from actwatch.check.layers import WatchedLayer

__all__ = ["DEFAULT_BOUNDS", "HEALTHY_RATIO", "MAX_SNAPSHOT_BYTES", "UpdateRatios"]

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
    """Per layer `(||now - before||^2, ||before||^2, m)` over its weights as one vector, both
    norms of the weights divided by `m`, their largest |value| before (1 when that is 0 or not
    finite): `(L, 3)`. Weights a too-high rate blew up to 1e20 would overflow float32 squared."""
    rows = []
    for olds, news in zip(before, now, strict=True):
        scale = ops.zeros(())
        for old in olds:
            if int(np.prod(old.shape)):
                scale = ops.maximum(scale, ops.max(ops.abs(ops.cast(old, "float32"))))
        scale = ops.where(ops.logical_and(ops.isfinite(scale), scale > 0), scale, 1.0)
        delta = ops.zeros(())
        norm = ops.zeros(())
        for old, new in zip(olds, news, strict=True):
            old = ops.cast(old, "float32") / scale
            delta = delta + ops.sum(ops.square(ops.cast(new, "float32") / scale - old))
            norm = norm + ops.sum(ops.square(old))
        rows.append(ops.stack([delta, norm, scale]))
    return ops.stack(rows)


#: The compiled comparison, per backend and weight shapes (see the module docstring).
_COMPILED: dict[tuple[Any, ...], Callable[..., Any]] = {}
#: At most this many are kept (the oldest is dropped): one per model structure in a process.
MAX_COMPILED = 16


def _copies(values: list[list[Any]]) -> list[list[Any]]:
    return [[ops.copy(v) for v in layer] for layer in values]


def _compiled(signature: tuple[Any, ...], copy: bool = False) -> Callable[..., Any]:
    """`_squared_sums` compiled by the backend's compiler (one call instead of a few eager ops
    per weight: ResNet50's 106 weights took 98 ms eagerly on TensorFlow), one per `signature`
    (the weights' shapes and dtypes) in the process; torch runs it eagerly. With `copy`,
    `_copies` instead, the snapshot's copy (one call: 162 eager copies of a ViT's weights
    took 110 ms on JAX's CPU, mostly dispatch).

    Each signature gets a function object of its own, so TensorFlow traces each one once and
    its retracing detector (keyed by the Python function) never sees one function traced for
    five structures."""
    backend = keras.backend.backend()
    if backend not in ("tensorflow", "jax"):
        return _copies if copy else _squared_sums
    key = (backend, signature, copy)
    found = _COMPILED.get(key)
    if found is not None:
        return found

    def sums(*args: list[list[Any]]) -> Any:
        return _copies(*args) if copy else _squared_sums(*args)

    if backend == "tensorflow":
        import tensorflow as tf

        found = tf.function(sums, reduce_retracing=True)
    else:
        import jax

        found = jax.jit(sums)
    if len(_COMPILED) >= MAX_COMPILED:
        del _COMPILED[next(iter(_COMPILED))]
    _COMPILED[key] = found
    return found


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
        self.sizes = {  # weights per measured layer
            path: sum(int(np.prod(v.shape)) for layer in layers for v in _weights(layer))
            for path, layers in self.layers.items()
        }
        #: The RMS of each layer's weights at the last measured snapshot (`ratio * rms / lr`
        #: is the size of an Adam step relative to its largest, see `diagnose.verdicts`).
        self.weight_rms: dict[str, float] = {}
        #: The layers whose weights were not finite at the last measured snapshot.
        self.diverged: list[str] = []
        self._signature = tuple(
            tuple((tuple(v.shape), str(v.dtype)) for layer in layers for v in _weights(layer))
            for layers in self.layers.values()
        )
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
        values = [
            [v.value for layer in layers for v in _weights(layer)]
            for layers in self.layers.values()
        ]
        with _no_grad():
            copies = _compiled(self._signature, copy=True)(values)
        self._before = dict(zip(self.layers, copies, strict=True))
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
        no ratio (the latter are listed in `diverged`); a step that made finite weights
        non-finite has an infinite one."""
        before = self._before
        self.cancel()
        if before is None:
            return {}
        now = [
            [v.value for layer in layers for v in _weights(layer)]
            for layers in self.layers.values()
        ]
        with _no_grad():
            compiled = _compiled(self._signature)
            sums = np.asarray(keras.ops.convert_to_numpy(compiled(list(before.values()), now)))
        ratios = {}
        self.weight_rms, self.diverged = {}, []
        for path, (d, n, m) in zip(self.layers, sums.astype(np.float64).tolist(), strict=True):
            if math.isfinite(n) and self.sizes[path]:
                self.weight_rms[path] = m * math.sqrt(n / self.sizes[path])
            if not math.isfinite(n):
                self.diverged.append(path)
            elif n == 0 and d == 0:
                ratios[path] = 0.0  # all zero and not moving: stuck
            elif n > 0 and math.isfinite(n):
                ratios[path] = math.sqrt(d) / math.sqrt(n) if math.isfinite(d) else math.inf
        return ratios
