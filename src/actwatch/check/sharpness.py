"""Sharpness: the top eigenvalue of the loss Hessian, against what the learning rate can bear.

Full-batch gradient descent at rate `lr` is stable on a quadratic only while the Hessian's
largest eigenvalue (the *sharpness*) stays below `2 / lr`; in neural network training the
sharpness rises until it reaches that value and then hovers there, the *edge of stability*
(Cohen, Kaur, Li, Kolter, Talwalkar, ICLR 2021). Adaptive methods do the same with the
*preconditioned* sharpness, the top eigenvalue of `P^-1 H` for Adam's `P = diag(sqrt(v_hat) +
eps)`, which settles at `(2 + 2 beta_1) / ((1 - beta_1) lr)`, `38 / lr` for `beta_1 = 0.9`
(Cohen et al., "Adaptive Gradient Methods at the Edge of Stability", 2022).

`Sharpness` measures both on the labelled rows of the statistics data, by power iteration on
Hessian-vector products. Each step of the iteration (the product, the Rayleigh quotient, the
residual and the next unit vector) is one compiled call, the same function for both
iterations: `jax.jvp` of `jax.grad` over `model.stateless_call` under `jax.jit` (forward over
reverse); two nested `tf.GradientTape`s (reverse over reverse) inside a `tf.function`; torch
autograd's double backward (one graph of the gradient a check, built with
`create_graph=True`, differentiated again at each step). The loop runs on the host, which
reads two scalars a step: XLA on CPU runs a product inside a `while_loop` 10-20 times slower
than the same product called alone (measured on the demo CNN), and a step costs far more
than a host round trip. Each power iteration starts from the previous check's vector, so a
few products usually suffice; it stops after `iterations` products or once the residual
`|H v - value v|` of its unit vector `v` is at most `tolerance` times the value, which puts an
eigenvalue within `tolerance` (relative) of the value; near the top one the error is about
`tolerance^2 * value / gap`, far less.

The loss is the model's compiled loss (`model.compute_loss`: the loss given to `compile()`,
with the sample weights, plus weight penalties; activity regularizers and `add_loss` terms are
left out, as for the gradients of activations), the mean over the labelled samples, with the
model called through `stateless_call`: nothing is written to the model, its metrics, its
optimizer or any random state (a dropout mask drawn with `training=True` is the same for every
product and every check).

The thresholds it is compared with are in `actwatch.check.stability`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from actwatch.check.capture import accepts, inference, takes_training
from actwatch.check.power import power_step
from actwatch.check.stability import (
    SharpnessResult,
    preconditioner_scale,
    stability_threshold,
    unwrap,
)

__all__ = ["Sharpness", "SharpnessResult", "stability_threshold"]  # re-exported


class Sharpness:
    """The sharpness of the loss on labelled samples, measured when asked (see the module).

    Checks the model, the labels and the loss at once (`ValueError`/`TypeError`), compiles
    the power iteration's step at the first `measure`, and keeps each power iteration's last vector
    as the next one's start. When the model's trainable variables change (a layer frozen or
    unfrozen), the next `measure` starts afresh.

    On JAX during `fit`, Keras holds the weights outside the model during an epoch: a
    measurement in the middle of one reads the weights of the last sync
    (`model.jax_state_sync()` first brings them up to date).

    Args:
        model: a built model compiled with a loss.
        x: the samples (an array, or the list or dict of arrays the model takes); only the
            first `len(y)` are used.
        y: their labels, as `fit` takes them for this model.
        sample_weight: per-sample weights of the loss, or `None`. Defaults to `None`.
        iterations: Hessian-vector products per power iteration, at most. Defaults to 20.
        tolerance: stop a power iteration once its residual is at most this fraction of
            its value (see the module); `iterations_run < iterations` tells that it did.
            Defaults to 1e-3; 0 runs all `iterations`.
        training: the mode the model is called in (dropout, batch statistics); nothing is
            updated either way. Defaults to `False`.
        seed: seed of the first start vector (a generator of its own). Defaults to 0.

    Example:

    ```python
    sharpness = Sharpness(model, x_val[:256], y_val[:256])
    result = sharpness.measure()
    print(result.sharpness, result.threshold, result.ratio)
    ```
    """

    def __init__(
        self,
        model: keras.Model,
        x: Any,
        y: Any,
        sample_weight: Any = None,
        *,
        iterations: int = 20,
        tolerance: float = 1e-3,
        training: bool = False,
        seed: int = 0,
    ) -> None:
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(
                "Invalid value for argument `iterations`. Expected a positive integer. "
                f"Received: iterations={iterations!r}"
            )
        if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
            raise ValueError(
                "Invalid value for argument `tolerance`. Expected a number >= 0. "
                f"Received: tolerance={tolerance!r}"
            )
        if not isinstance(model, keras.Model):
            raise TypeError(
                "Sharpness is measured on a `keras.Model`. "
                f"Received: model of type {type(model).__name__}"
            )
        if not model.built:
            raise ValueError(
                f"Model {model.name!r} is not built, so it has no weights to take the "
                "Hessian by. Build it first (`model.build(input_shape)`, or call it on data)."
            )
        overridden = type(model).compute_loss is not keras.Model.compute_loss
        if getattr(model, "loss", None) is None and not overridden:
            raise ValueError(
                f"Sharpness needs the model's loss, but model {model.name!r} was not "
                "compiled with one. Call `model.compile(loss=...)` first."
            )
        if y is None:
            raise ValueError(
                "Sharpness needs labels: the Hessian is that of the loss on labelled "
                "samples. Give them as `stats_data=(x, y)` or `(x, y, sample_weight)`. "
                "Received: y=None"
            )
        for name, value in (("x", x), ("y", y), ("sample_weight", sample_weight)):
            leaves = [] if value is None else keras.tree.flatten(value)
            if value is not None and (not leaves or not all(hasattr(a, "shape") for a in leaves)):
                raise TypeError(
                    f"`{name}` must be an array (or a list or dict of arrays) of samples; "
                    f"got {type(value).__name__}. Datasets and generators are not taken: "
                    "give the samples themselves."
                )
        rows = int(keras.tree.flatten(y)[0].shape[0])
        available = int(keras.tree.flatten(x)[0].shape[0])
        if rows < 1 or available < rows:
            raise ValueError(
                f"`y` labels the first {rows} samples of `x`, so `x` needs at least that many "
                f"and at least one; it has {available}."
            )
        if sample_weight is not None and int(sample_weight.shape[0]) != rows:
            raise ValueError(
                f"`sample_weight` must have one weight per label ({rows}); it has "
                f"{int(sample_weight.shape[0])}."
            )
        if not model.trainable_variables:
            raise ValueError(
                f"Model {model.name!r} has no trainable weights, so its loss has no Hessian."
            )
        self.model = model
        self.iterations = iterations
        self.tolerance = float(tolerance)
        self.training = training
        self._rng = np.random.default_rng(seed)
        convert = ops.convert_to_tensor
        self._x = keras.tree.map_structure(lambda a: convert(a[:rows]), x)
        self._y = keras.tree.map_structure(convert, y)
        self._weight = None if sample_weight is None else convert(sample_weight)
        self._call_flags = {"training": training} if takes_training(model) else {}
        self._loss_flags = {"training": training} if accepts(model.compute_loss, "training") else {}
        self._start: Callable[[], Callable[[list[Any], list[Any]], Any]] | None = None
        self._variables: list[Any] = []
        self._vectors: list[list[Any]] = []
        self._ones: list[Any] = []
        self._reset()
        self._check_labels()

    # -- setup ---------------------------------------------------------------------------

    def _reset(self) -> None:
        """Start afresh on the model's current trainable variables."""
        self._variables = list(self.model.trainable_variables)
        self._start = None
        self._vectors = [self._random_vector(), self._random_vector()]
        self._ones = [ops.ones(v.shape, "float32") for v in self._variables]

    def _random_vector(self) -> list[Any]:
        return [
            ops.convert_to_tensor(self._rng.standard_normal(v.shape).astype("float32"))
            for v in self._variables
        ]

    def _check_labels(self) -> None:
        """Build the compiled loss (eagerly: it creates its metrics the first time) and try
        the labels on all the labelled samples (on fewer, a loss may broadcast labels of the
        wrong size): `ValueError` when the loss refuses them. One eager forward pass."""
        model = self.model
        compile_loss = getattr(model, "_compile_loss", None)  # read only: is it built?
        try:
            with inference():
                if compile_loss is not None and not getattr(compile_loss, "built", True):
                    first = keras.tree.map_structure(lambda a: a[:1], (self._x, self._y))
                    compile_loss.build(first[1], model(first[0], training=False))
                self._loss(
                    [v.value for v in self._variables],
                    [v.value for v in model.non_trainable_variables],
                    self._x,
                    self._y,
                    self._weight,
                )
        except Exception as exc:
            raise ValueError(
                f"The labels given for the sharpness do not go into the compiled loss of "
                f"model {model.name!r} ({type(exc).__name__}: {exc}). Give them as `fit` "
                "takes them for this model: `(x, y)` or `(x, y, sample_weight)`, with `y` "
                "shaped as the loss given to `compile()` expects."
            ) from exc

    def _loss(
        self, trainable: Sequence[Any], non_trainable: Sequence[Any], x: Any, y: Any, weight: Any
    ) -> Any:
        """The compiled loss at the given weights, without side effects (float32)."""
        model = self.model
        y_pred, _ = model.stateless_call(trainable, non_trainable, x, **self._call_flags)
        mapping = list(zip(self._variables, trainable, strict=True))
        mapping += list(zip(model.non_trainable_variables, non_trainable, strict=True))
        # Weight penalties read the weights given; the loss's metrics are left as they are.
        with keras.StatelessScope(state_mapping=mapping):
            value = model.compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=weight, **self._loss_flags
            )
        return ops.cast(value, "float32")

    def _compile(self) -> Callable[[], Callable[[list[Any], list[Any]], Any]]:
        """`start()`, called once a check, returns the check's `step(vector, scale)`, one
        compiled call of `power_step` at the model's current weights."""
        backend = keras.backend.backend()
        dtypes = [str(v.dtype) for v in self._variables]
        variables = self._variables
        others = self.model.non_trainable_variables
        loss = self._loss
        data = (self._x, self._y, self._weight)

        if backend == "jax":
            import jax

            def step_jax(state: Any, data: Any, vector: list[Any], scale: list[Any]) -> Any:
                trainable, non_trainable = state
                # The data are arguments, not constants folded into the compiled program.
                x, y, weight = data

                def gradient(w: list[Any]) -> Any:
                    return jax.grad(lambda w: loss(w, non_trainable, x, y, weight))(w)

                def hvp(u: list[Any]) -> list[Any]:
                    return list(jax.jvp(gradient, (trainable,), (u,))[1])

                return power_step(hvp, vector, scale, dtypes)

            jitted = jax.jit(step_jax)

            def start_jax() -> Callable[[list[Any], list[Any]], Any]:
                state = ([v.value for v in variables], [v.value for v in others])
                return lambda vector, scale: jitted(state, data, vector, scale)

            return start_jax
        if backend == "tensorflow":
            import tensorflow as tf

            zero = tf.UnconnectedGradients.ZERO

            def step_tf(vector: list[Any], scale: list[Any]) -> Any:
                trainable = [tf.identity(v.value) for v in variables]
                non_trainable = [tf.identity(v.value) for v in others]

                def hvp(u: list[Any]) -> list[Any]:
                    with tf.GradientTape(watch_accessed_variables=False) as outer:
                        outer.watch(trainable)
                        with tf.GradientTape(watch_accessed_variables=False) as inner:
                            inner.watch(trainable)
                            value = loss(trainable, non_trainable, *data)
                        g = inner.gradient(value, trainable, unconnected_gradients=zero)
                    return list(
                        outer.gradient(g, trainable, output_gradients=u, unconnected_gradients=zero)
                    )

                return power_step(hvp, vector, scale, dtypes)

            compiled = tf.function(step_tf)
            return lambda: compiled
        if backend == "torch":
            import torch

            def start_torch() -> Callable[[list[Any], list[Any]], Any]:
                # One graph of the gradient a check, differentiated again at each step.
                trainable = [v.value.detach().requires_grad_() for v in variables]
                non_trainable = [v.value.detach() for v in others]
                with torch.enable_grad():
                    value = loss(trainable, non_trainable, *data)
                    g = torch.autograd.grad(value, trainable, create_graph=True, allow_unused=True)
                # Gradients that do not depend on the weights add nothing to H v.
                live = [i for i, gi in enumerate(g) if gi is not None and gi.requires_grad]

                def hvp(u: list[Any]) -> list[Any]:
                    hu: list[Any] = [None] * len(trainable)
                    if live:
                        hu = list(
                            torch.autograd.grad(
                                [g[i] for i in live],
                                trainable,
                                grad_outputs=[u[i] for i in live],
                                retain_graph=True,
                                allow_unused=True,
                            )
                        )
                    return [
                        torch.zeros_like(w) if h is None else h
                        for h, w in zip(hu, trainable, strict=True)
                    ]

                return lambda vector, scale: power_step(hvp, vector, scale, dtypes)

            return start_torch
        raise NotImplementedError(
            "Sharpness is measured on the JAX, TensorFlow and PyTorch backends; this is "
            f"{backend!r}."
        )

    def _power(
        self, step: Callable[[list[Any], list[Any]], Any], index: int, scale: list[Any]
    ) -> tuple[int, float]:
        """Power iteration from the kept vector `index`: `(steps run, value)`; keeps the
        last vector (a fresh random one after a value that is not finite)."""
        vector, value = self._vectors[index], math.nan
        for count in range(1, self.iterations + 1):
            value_t, residual_t, vector = step(vector, scale)
            value, residual = (
                float(ops.convert_to_numpy(value_t)),
                float(ops.convert_to_numpy(residual_t)),
            )
            if not math.isfinite(value):
                self._vectors[index] = self._random_vector()
                return count, value
            self._vectors[index] = vector
            if residual <= self.tolerance * abs(value):
                break
        return count, value

    # -- the check -----------------------------------------------------------------------

    def measure(self, learning_rate: float | None = None) -> SharpnessResult:
        """Measure the sharpness now (see the class).

        Args:
            learning_rate: the rate of the next steps, for `threshold` and `sharpness_x_lr`.
                Defaults to the optimizer's current rate (its schedule's, at its step).
        """
        start = time.perf_counter()
        model = self.model
        optimizer = getattr(model, "optimizer", None)
        if learning_rate is None:
            if optimizer is None:
                raise ValueError(
                    f"Model {model.name!r} has no optimizer to read the learning rate from: "
                    "pass `learning_rate`."
                )
            learning_rate = float(ops.convert_to_numpy(unwrap(optimizer).learning_rate))
        lr = float(learning_rate)
        if [id(v) for v in model.trainable_variables] != [id(v) for v in self._variables]:
            self._reset()
        if self._start is None:
            self._start = self._compile()
        scale = None if optimizer is None else preconditioner_scale(optimizer, self._variables)
        with inference():
            step = self._start()
            count, sharpness = self._power(step, 0, self._ones)
            pre_count, preconditioned = (
                (0, math.nan) if scale is None else self._power(step, 1, scale)
            )
        threshold = None if optimizer is None else stability_threshold(optimizer, lr)
        of = None
        if threshold is not None:
            sgd = isinstance(unwrap(optimizer), keras.optimizers.SGD)
            of = "sharpness" if sgd else "preconditioned"
        return SharpnessResult(
            sharpness=sharpness,
            preconditioned=None if scale is None else preconditioned,
            threshold=threshold,
            threshold_of=of,
            sharpness_x_lr=sharpness * lr,
            iterations_run=count,
            preconditioned_iterations_run=pre_count,
            seconds=time.perf_counter() - start,
        )
