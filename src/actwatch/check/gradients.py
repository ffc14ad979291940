"""Gradients of activations: the loss's gradient with respect to each watched layer's output.

The loss is the model's compiled loss (`model.compute_loss`, the loss given to `compile()`,
plus weight penalties; not activity regularizers or `add_loss` terms, which would count the
probes that share the call), on labelled data, in the pass training takes
(`capture.TrainingView`: BatchNormalization on the labelled samples' own statistics, no
dropout). Each watched layer's output gets a zero tensor added at its first call
(`capture.Perturb`), and the gradient is taken with respect to those zeros by the backend's
own machinery, in the same compiled call that reads the activations
(`extract.Extractor.make_gradient_runner`): one forward and one backward pass per check,
`jax.grad` over `stateless_call` under `jax.jit`, `tf.GradientTape` under `tf.function`,
torch autograd (eager). The loss is the mean over the labelled samples, so the gradients are
those of a batch mean, as in training. Nothing is written to the model or its metrics: the
loss is computed in a `keras.StatelessScope`.

Per layer, two figures come from the gradients (`GradientStats`):

- the gradient RMS, `sqrt(mean g^2)` over samples, positions and channels: vanishing (tiny)
  or exploding (huge) gradients, layer by layer;
- GraMa's gradient dormancy (Liu, Wu, Obando-Ceron, Castro, Courville, Pan, 2025, arXiv
  2505.24061): per filter the mean |g| over samples and positions, divided by the layer's
  mean of those; a filter scoring <= tau gets (almost) no learning signal, even when it fires.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

from actwatch.check.capture import Perturb, accepts, inference, trace
from actwatch.check.layers import WatchedLayer

__all__ = ["GradientStats", "LossGradients", "check_loss", "gradient_stats", "reduce_gradients"]


@dataclass(frozen=True)
class GradientStats:
    """The gradient figures of one watched layer at one check.

    Attributes:
        rms: root mean square of the loss gradient with respect to the layer's output.
        filter_mean_abs: per filter, mean |gradient| over samples and positions.
        scores: `filter_mean_abs / mean(filter_mean_abs)` (all zeros when the layer gets no
            gradient at all).
        dormant: per filter, `scores <= tau`: GraMa's gradient-dormant filters.
    """

    rms: float
    filter_mean_abs: np.ndarray
    scores: np.ndarray
    dormant: np.ndarray

    @classmethod
    def of(cls, raw: dict[str, np.ndarray], tau: float) -> GradientStats:
        mean_abs = np.asarray(raw["filter_mean_abs"], dtype=np.float64)
        layer_mean = float(mean_abs.mean()) if mean_abs.size else 0.0
        scores = mean_abs / layer_mean if layer_mean > 0 else np.zeros_like(mean_abs)
        return cls(
            rms=float(raw["rms"]),
            filter_mean_abs=mean_abs,
            scores=scores,
            dormant=scores <= tau,
        )

    @property
    def dormant_fraction(self) -> float:
        return float(self.dormant.mean()) if self.dormant.size else 0.0

    def scalars(self) -> dict[str, float]:
        """`{metric: value}` as in `tags.METRICS`."""
        return {
            "gradient_rms": self.rms,
            "gradient_dormant_fraction": self.dormant_fraction,
        }


def reduce_gradients(
    watched: Sequence[WatchedLayer],
) -> Callable[[list[Any]], list[dict[str, Any]]]:
    """The on-device reduction of the gradients to `GradientStats`' raw figures."""

    def reduce(grads: list[Any]) -> list[dict[str, Any]]:
        out = []
        for layer, g in zip(watched, grads, strict=True):
            g = ops.cast(g, "float32")
            if layer.rank > 2 and layer.channel_axis == 1:
                g = ops.moveaxis(g, 1, -1)
            flat = ops.reshape(ops.abs(g), (-1, layer.channels))
            out.append(
                {
                    "rms": ops.sqrt(ops.mean(ops.square(g))),
                    "filter_mean_abs": ops.mean(flat, axis=0),
                }
            )
        return out

    return reduce


def check_loss(model: keras.Model) -> None:
    """Raise a clear error when `model` has no compiled loss to differentiate."""
    overridden = type(model).compute_loss is not keras.Model.compute_loss
    if getattr(model, "loss", None) is None and not overridden:
        raise ValueError(
            f"Gradients of activations need the model's loss, but model {model.name!r} was "
            "not compiled with one. Call `model.compile(loss=...)` first (labels are given "
            "as `stats_data=(x, y)` or to `get_gradients(model, x, y)`)."
        )


def _loss_flags(model: keras.Model) -> dict[str, Any]:
    # An override of `compute_loss` written before Keras 3.3 has no `training` argument.
    return {"training": False} if accepts(model.compute_loss, "training") else {}


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, (list, tuple)) else x


def _rows(x: Any, rows: int) -> Any:
    """The first `rows` samples of the feed (an array, or a list of arrays)."""
    return [a[:rows] for a in x] if isinstance(x, (list, tuple)) else x[:rows]


def _head(x: Any) -> Any:
    """One sample of the feed (an array, or a list of arrays)."""
    return _rows(x, 1)


class LossGradients:
    """The compiled loss's gradients with respect to the watched layers' outputs, taken in the
    forward pass that also reads those outputs (`extract.Extractor`'s gradient runner).

    `perturb` is the capture to install around the call: it keeps each watched layer's
    output of its first call and adds a zero tensor to it, the tensor the gradient is taken
    by. `forward(call, x, y, sample_weight)` runs `call(x)` (the model's prediction) once,
    under the backend's autodiff, and returns the captured outputs (`{id(layer): tensor}`)
    and the gradients in the order of `watched`, of the labelled rows only: `y` labels the
    leading samples of `x` (all of them, or the statistics samples before the probes), the
    loss is computed on those rows alone, and the gradient of each watched output is cut to
    them. The call is the training view (`capture.TrainingView`), whose BatchNormalizations
    take their mean and variance from the labelled rows (the extractor's `batch_rows`), as
    `fit` takes them from its batch, and the gradients flow through them as in `fit`; no
    other layer mixes samples, so the rows after the labelled ones change nothing.

    Args:
        model: a compiled model (its loss is differentiated).
        watched: the layers whose outputs' gradients are wanted.
    """

    def __init__(self, model: keras.Model, watched: Sequence[WatchedLayer]) -> None:
        check_loss(model)
        self.model = model
        self.watched = list(watched)
        self.perturb = Perturb([w.layer for w in self.watched])
        self._keys = [id(w.layer) for w in self.watched]
        self._specs: list[tuple[tuple[int, ...], str]] | None = None
        self._ready = False  # the loss built and the labels checked

    def prepare(self, x: Any, y: Any, sample_weight: Any) -> None:
        """The eager work before the first (compiled) call: the watched outputs' shapes, the
        compiled loss built on one sample (it creates its metrics the first time it runs,
        which a stateless scope or a trace cannot), and the labels tried on that sample:
        `ValueError` when a watched layer is not called or the loss refuses the labels."""
        if self._specs is None:
            specs = trace(self.model, [w.layer for w in self.watched], _head(x))
            missing = [w.path for w in self.watched if id(w.layer) not in specs]
            if missing:
                raise ValueError(
                    f"Layers {missing} of model {self.model.name!r} are not called on this "
                    "batch, so they have no output to differentiate the loss by."
                )
            self._specs = [
                (tuple(int(d) for d in specs[k].shape[1:]), str(specs[k].dtype)) for k in self._keys
            ]
        if self._ready:
            return
        head = _head(x)
        y_head = keras.tree.map_structure(lambda a: a[:1], y)
        weight = None if sample_weight is None else sample_weight[:1]
        loss = getattr(self.model, "_compile_loss", None)  # read only: has it been built?
        with inference():
            with keras.StatelessScope():  # a layer drawing random numbers moves no seed
                y_pred = self.model(head, training=False)
            # The labels as the compiled call will use them, on one sample: labels the loss
            # refuses are an error now, before training, not a failure at every check.
            state = [(v, v.value) for v in self.model.trainable_variables]
            try:
                if loss is not None and not getattr(loss, "built", True):
                    self.model.compute_loss(x=head, y=y_head, y_pred=y_pred, sample_weight=weight)
                with keras.StatelessScope(state_mapping=state):
                    self.model.compute_loss(
                        x=head,
                        y=y_head,
                        y_pred=y_pred,
                        sample_weight=weight,
                        **_loss_flags(self.model),
                    )
            except Exception as exc:
                raise ValueError(
                    f"The labels of `stats_data` (or `get_gradients`' `y`) do not go into the "
                    f"compiled loss of model {self.model.name!r} ({type(exc).__name__}: {exc}). "
                    "Give them as `fit` takes them for this model: `stats_data=(x, y)` or "
                    "`(x, y, sample_weight)`, with `y` shaped as the loss given to `compile()` "
                    "expects."
                ) from exc
        self._ready = True

    def forward(
        self,
        call: Callable[[Any], Any],
        x: Any,
        y: Any,
        sample_weight: Any,
        *,
        state: Sequence[tuple[Any, Any]] | None = None,
    ) -> tuple[dict[int, Any], list[Any]]:
        """`(captured outputs, gradients)` of one forward pass `call(x)` (see the class).

        `state` pairs the model's trainable variables with the values the loss reads them at
        (its weight penalties): under `jax.jit` the traced values `stateless_call` ran with;
        by default the variables' own values."""
        assert self._specs is not None, "prepare() first"
        model = self.model
        if state is None:
            state = [(v, v.value) for v in model.trainable_variables]
        perturb = self.perturb
        rows = int(keras.tree.flatten(y)[0].shape[0])
        batch = int(_first(x).shape[0])
        deltas = [ops.zeros((batch, *shape), dtype=dtype) for shape, dtype in self._specs]
        kwargs = _loss_flags(model)

        def loss_of(deltas: Sequence[Any]) -> Any:
            perturb.outputs.clear()
            perturb.deltas.clear()
            perturb.deltas.update(zip(self._keys, deltas, strict=True))
            y_pred = keras.tree.map_structure(lambda t: t[:rows], call(x))
            # The loss's metrics are left as they are; weight penalties read `state`.
            with keras.StatelessScope(state_mapping=state):
                return model.compute_loss(
                    x=_rows(x, rows), y=y, y_pred=y_pred, sample_weight=sample_weight, **kwargs
                )

        backend = keras.backend.backend()
        if backend == "jax":
            import jax

            def differentiated(deltas: list[Any]) -> tuple[Any, dict[int, Any]]:
                return loss_of(deltas), dict(perturb.outputs)

            grads, outputs = jax.grad(differentiated, has_aux=True)(deltas)
        elif backend == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                tape.watch(deltas)
                loss = loss_of(deltas)
            outputs = dict(perturb.outputs)
            grads = tape.gradient(loss, deltas)
        elif backend == "torch":
            import torch

            deltas = [d.requires_grad_() for d in deltas]
            y = keras.tree.map_structure(ops.convert_to_tensor, y)
            if sample_weight is not None:
                sample_weight = ops.convert_to_tensor(sample_weight)
            with torch.enable_grad():
                loss = loss_of(deltas)
                grads = torch.autograd.grad(loss, deltas, allow_unused=True)
            outputs = {k: v.detach() for k, v in perturb.outputs.items()}
        else:
            raise NotImplementedError(
                "Gradients of activations are computed on the JAX, TensorFlow and PyTorch "
                f"backends; this is {backend!r}."
            )
        grads = [
            ops.zeros_like(d[:rows]) if g is None else g[:rows]
            for g, d in zip(grads, deltas, strict=True)
        ]
        return outputs, grads


def gradient_stats(
    raw: list[dict[str, Any]], watched: Sequence[WatchedLayer], tau: float
) -> dict[str, GradientStats]:
    """`{path: GradientStats}` from what `reduce_gradients` brought back."""
    return {w.path: GradientStats.of(r, tau) for w, r in zip(watched, raw, strict=True)}
