"""Capturing the outputs of layers run inside a custom layer's or subclassed model's `call`.

Such a layer has no tensor in any graph. For the duration of each of actwatch's own calls
(never during `fit`'s train step), `layer.call` is set on the instance to a wrapper that keeps
what the layer returns, inside the compiler's trace (`tf.function`, `jax.jit`), and the
captured tensors are returned from the compiled function; the instance attribute is removed
afterwards, so the model is left exactly as it was (saving and loading are unaffected). A
wrapper set after Keras compiled its own train step would capture nothing, which is why the
wrappers live only around actwatch's own calls.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import keras
import numpy as np

__all__ = ["Capture", "Perturb", "inference", "takes_training", "trace"]

_MISSING = object()


class Capture:
    """Capturing wrappers on layers' `call`, set on the instances only while a call runs.

    `installed()` sets `layer.call` on each instance to a wrapper that keeps the layer's
    output of its first call in `outputs` (keyed by `id(layer)`: layers without weights may
    have no `path`), and restores the instance as it was on exit, whatever happened. Inside
    a trace (`tf.function`, `jax.jit`) the outputs are the trace's tensors, to be returned
    from it. A wrapper set after Keras compiled its own train step captures nothing, which
    is why the wrappers live only around actwatch's own calls.
    """

    def __init__(self, layers: Sequence[Any]) -> None:
        self.layers = list({id(layer): layer for layer in layers}.values())
        self.outputs: dict[int, Any] = {}

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        saved: list[tuple[Any, Any]] = []
        try:
            for layer in self.layers:
                saved.append((layer, vars(layer).get("call", _MISSING)))
                layer.call = self._wrapper(id(layer), layer.call)
            yield
        finally:
            for layer, previous in reversed(saved):
                if previous is _MISSING:
                    del layer.call
                else:
                    layer.call = previous

    def _wrapper(self, key: int, original: Callable[..., Any]) -> Callable[..., Any]:
        outputs = self.outputs

        @functools.wraps(original)
        def call(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            if key not in outputs:  # a layer called twice is watched at its first call
                outputs[key] = out
            return out

        return call


class Perturb(Capture):
    """Like `Capture`, and adds a given tensor to each layer's output at its first call.

    With `deltas` (`{id(layer): tensor}` of the outputs' shapes, zeros), the layers' outputs
    become `output + delta` for the rest of the forward pass: the loss's gradient with
    respect to a delta is its gradient with respect to that layer's output, on every backend
    and inside every compiler's trace, in graph and subclassed models alike (the gradients of
    activations). `outputs` keeps the outputs as the layers returned them.
    """

    def __init__(self, layers: Sequence[Any]) -> None:
        super().__init__(layers)
        self.deltas: dict[int, Any] = {}

    def _wrapper(self, key: int, original: Callable[..., Any]) -> Callable[..., Any]:
        outputs = self.outputs
        deltas = self.deltas

        @functools.wraps(original)
        def call(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            if key not in outputs:  # a layer called twice is perturbed at its first call
                outputs[key] = out
                if key in deltas:
                    out = out + deltas[key]
            return out

        return call


@contextlib.contextmanager
def inference() -> Iterator[None]:
    """No autograd bookkeeping for an eager call on PyTorch; nothing elsewhere."""
    if keras.backend.backend() == "torch":
        import torch

        with torch.no_grad():
            yield
    else:
        yield


def takes_training(model: Any) -> bool:
    """Whether `model.call` accepts `training=` (by name or through `**kwargs`)."""
    parameters = inspect.signature(model.call).parameters.values()
    return any(p.name == "training" or p.kind is p.VAR_KEYWORD for p in parameters)


def _spec(value: Any) -> Any:
    """A captured tensor as a `KerasTensor` of its shape and dtype; anything else as is."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        shape = tuple(None if d is None else int(d) for d in value.shape)
        return keras.KerasTensor(shape, dtype=keras.backend.standardize_dtype(value.dtype))
    return value


def trace(model: keras.Model, layers: Sequence[Any], sample: Any = None) -> dict[int, Any]:
    """Run `model` once, eagerly, on `sample` (or a zero sample) with `layers` captured.

    Returns `{id(layer): KerasTensor spec of its first output}` for the layers that were
    called, in the order their calls returned. Without `sample`, the input is one zero
    sample of the shape in `model.inputs` or, for a subclassed model, of the shape Keras
    built it with (unknown sizes other than the batch are 32).
    """
    if sample is None:
        from actwatch.check.probes import model_inputs

        try:
            inputs = model_inputs(model)
        except ValueError:
            inputs = None
        if inputs is None or not inputs.shapes:
            raise ValueError(
                f"Model {model.name!r} ({type(model).__name__}) has not been built with a "
                "known input shape, so actwatch cannot find which layers its `call` runs. "
                "Call `model.build(input_shape)` first, or pass probes as arrays."
            )
        feed = [
            np.zeros((1, *(32 if d is None else d for d in shape[1:])), dtype=dtype)
            for shape, dtype in zip(inputs.shapes, inputs.dtypes, strict=True)
        ]
        sample = feed[0] if len(feed) == 1 else feed
    capture = Capture(layers)
    with capture.installed(), inference():
        model(sample, training=False)
    return {key: _spec(value) for key, value in capture.outputs.items()}
