"""Gradients of activations: the loss's gradient with respect to each watched layer's output.

The loss is the model's compiled loss (`model.compute_loss`, the loss given to `compile()`,
plus weight penalties), on labelled data, with the model in inference mode. Each watched
layer's output gets a zero tensor added at its first call (`capture.Perturb`), and the
gradient is taken with respect to those zeros by the backend's own machinery, compiled once:
`jax.grad` over `stateless_call` under `jax.jit`, `tf.GradientTape` under `tf.function`, torch
autograd (eager). The loss is the mean over the batch, so the gradients are those of a batch
mean, as in training. Nothing is written to the model or its metrics: the loss is computed in
a `keras.StatelessScope`.

Per layer, two figures come from the gradients (`GradientStats`):

- the gradient RMS, `sqrt(mean g^2)` over samples, positions and channels: vanishing (tiny)
  or exploding (huge) gradients, layer by layer;
- GraMa's gradient dormancy (Liu, Wu, Obando-Ceron, Castro, Courville, Pan, 2025, arXiv
  2505.24061): per filter the mean |g| over samples and positions, divided by the layer's
  mean of those; a filter scoring <= tau gets (almost) no learning signal, even when it fires.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import ops

from .capture import Perturb, takes_training, trace
from .layers import WatchedLayer

__all__ = ["GradientRunner", "GradientStats", "check_loss", "gradient_stats", "reduce_gradients"]


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


def _takes(function: Any, name: str) -> bool:
    """Whether `function` accepts the keyword `name` (by name or through `**kwargs`)."""
    parameters = inspect.signature(function).parameters.values()
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters)


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, (list, tuple)) else x


def _head(x: Any) -> Any:
    """One sample of the feed (an array, or a list of arrays)."""
    return [a[:1] for a in x] if isinstance(x, (list, tuple)) else x[:1]


class GradientRunner:
    """The loss's gradients with respect to the watched layers' outputs, compiled once.

    `run(x, y, sample_weight)` returns `reduce(gradients)` with numpy leaves, the gradients
    in the order of `watched`, each of its layer's output shape (the layer's own layout).

    Args:
        model: a compiled model (its loss is differentiated).
        watched: the layers whose outputs' gradients are wanted.
        reduce: what to compute on the device from the gradients; defaults to the gradients.
    """

    def __init__(
        self,
        model: keras.Model,
        watched: Sequence[WatchedLayer],
        reduce: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        check_loss(model)
        self.model = model
        self.watched = list(watched)
        self._reduce = reduce or (lambda grads: list(grads))
        self._perturb = Perturb([w.layer for w in self.watched])
        self._keys = [id(w.layer) for w in self.watched]
        self._specs: list[tuple[tuple[int, ...], str]] | None = None
        self._compiled: Callable[..., Any] | None = None

    def _shapes(self, x: Any) -> list[tuple[tuple[int, ...], str]]:
        """Each watched output's shape without the batch axis, and dtype (one eager call)."""
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
        return self._specs

    def _build_loss(self, x: Any, y: Any, sample_weight: Any) -> None:
        """Build the compiled loss eagerly on one sample (it creates its metrics the first
        time it runs, which a stateless scope or a trace cannot)."""
        loss = getattr(self.model, "_compile_loss", None)  # read only: has it been built?
        if loss is None or getattr(loss, "built", True):
            return
        head = _head(x)
        y_pred = self.model(head, training=False)
        weight = None if sample_weight is None else sample_weight[:1]
        self.model.compute_loss(x=head, y=_head(y), y_pred=y_pred, sample_weight=weight)

    def run(self, x: Any, y: Any, sample_weight: Any = None) -> Any:
        """`reduce(gradients)` for the batch `x` with labels `y` (numpy leaves)."""
        specs = self._shapes(x)
        self._build_loss(x, y, sample_weight)
        if self._compiled is None:
            self._compiled = self._compile(specs)
        try:
            with self._perturb.installed():
                result = self._compiled(x, y, sample_weight)
        finally:
            self._perturb.outputs.clear()
            self._perturb.deltas.clear()
        return keras.tree.map_structure(keras.ops.convert_to_numpy, result)

    def _compile(self, specs: list[tuple[tuple[int, ...], str]]) -> Callable[..., Any]:
        backend = keras.backend.backend()
        model = self.model
        perturb = self._perturb
        keys = self._keys
        reduce = self._reduce
        flags = {"training": False} if takes_training(model) else {}

        def zeros(x: Any) -> list[Any]:
            batch = _first(x).shape[0]
            return [ops.zeros((batch, *shape), dtype=dtype) for shape, dtype in specs]

        def arm(deltas: Sequence[Any]) -> None:
            perturb.outputs.clear()
            perturb.deltas.clear()
            perturb.deltas.update(zip(keys, deltas, strict=True))

        # An override of `compute_loss` written before Keras 3.3 has no `training` argument.
        kwargs = {"training": False} if _takes(model.compute_loss, "training") else {}

        def loss_of(x: Any, y: Any, sample_weight: Any, y_pred: Any) -> Any:
            with keras.StatelessScope():  # the loss's metrics are left as they are
                return model.compute_loss(
                    x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, **kwargs
                )

        if backend == "jax":
            import jax

            def loss_fn(deltas: list[Any], trainable: Any, non_trainable: Any, *data: Any) -> Any:
                x, y, sample_weight = data
                arm(deltas)
                y_pred, _ = model.stateless_call(trainable, non_trainable, x, **flags)
                return loss_of(x, y, sample_weight, y_pred)

            grad = jax.grad(loss_fn)

            def pure(trainable: Any, non_trainable: Any, x: Any, y: Any, sw: Any) -> Any:
                return reduce(list(grad(zeros(x), trainable, non_trainable, x, y, sw)))

            jitted = jax.jit(pure)

            def run_jax(x: Any, y: Any, sample_weight: Any) -> Any:
                return jitted(
                    [v.value for v in model.trainable_variables],
                    [v.value for v in model.non_trainable_variables],
                    x,
                    y,
                    sample_weight,
                )

            return run_jax

        if backend == "tensorflow":
            import tensorflow as tf

            def run_tf(x: Any, y: Any, sample_weight: Any) -> Any:
                deltas = zeros(x)
                with tf.GradientTape() as tape:
                    tape.watch(deltas)
                    arm(deltas)
                    y_pred = model(x, **flags)
                    loss = loss_of(x, y, sample_weight, y_pred)
                grads = tape.gradient(loss, deltas)
                return reduce(
                    [
                        tf.zeros_like(d) if g is None else g
                        for g, d in zip(grads, deltas, strict=True)
                    ]
                )

            compiled: Callable[..., Any] = tf.function(run_tf, reduce_retracing=True)
            return compiled

        if backend == "torch":
            import torch

            def run_torch(x: Any, y: Any, sample_weight: Any) -> Any:
                deltas = [d.requires_grad_() for d in zeros(x)]
                arm(deltas)
                with torch.enable_grad():
                    y_pred = model(x, **flags)
                    y_t = keras.tree.map_structure(ops.convert_to_tensor, y)
                    w_t = None if sample_weight is None else ops.convert_to_tensor(sample_weight)
                    loss = loss_of(x, y_t, w_t, y_pred)
                    grads = torch.autograd.grad(loss, deltas, allow_unused=True)
                with torch.no_grad():
                    return reduce(
                        [
                            torch.zeros_like(d) if g is None else g
                            for g, d in zip(grads, deltas, strict=True)
                        ]
                    )

            return run_torch

        raise NotImplementedError(
            f"Gradients of activations are computed on the JAX, TensorFlow and PyTorch backends; "
            f"this is {backend!r}."
        )


def gradient_stats(
    raw: list[dict[str, Any]], watched: Sequence[WatchedLayer], tau: float
) -> dict[str, GradientStats]:
    """`{path: GradientStats}` from what `reduce_gradients` brought back."""
    return {w.path: GradientStats.of(r, tau) for w, r in zip(watched, raw, strict=True)}
