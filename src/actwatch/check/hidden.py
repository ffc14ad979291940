"""The hidden units of a gated MLP: watched at the input of its down projection.

Gemma's and Llama's decoder blocks compute their MLP as `down(act(gate(x)) * up(x))` with
the activation (GELU, SiLU) a function inside `call`: no layer outputs the hidden units.
The down projection's *input* is them. `transformers.roles` marks that Dense
(`watch_input`); `capture.Capture` then keeps, for a marked layer, the input of its first
call instead of its output (and `capture.Perturb` adds its delta to that input: the loss's
gradient with respect to the hidden units). The mark lasts as long as the layer; a layer
is marked only where roles give it `role="mlp"`, so every watch of it reads the same values.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["input_wrapper", "reads_input", "watch_input"]

#: `id(layer)` -> layer, for the layers whose watched value is their input.
_MARKED: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()


def watch_input(layer: Any) -> None:
    """Watch `layer` at its input from now on (a gated MLP's down projection)."""
    _MARKED[id(layer)] = layer


def reads_input(key: int) -> bool:
    """Whether the layer of `id` `key` is watched at its input."""
    return key in _MARKED


def input_wrapper(
    key: int,
    original: Callable[..., Any],
    outputs: dict[int, Any],
    first_call: Callable[[int, Any], Any],
) -> Callable[..., Any]:
    """`original` (a layer's `call`) keeping its first call's input in `outputs[key]` and
    calling it on `first_call(key, input)` (`Capture._first_call`: the input as it is, or
    plus a delta)."""

    @functools.wraps(original)
    def call(*args: Any, **kwargs: Any) -> Any:
        if key in outputs:  # a layer called twice is watched at its first call
            return original(*args, **kwargs)
        if args:
            outputs[key] = args[0]
            return original(first_call(key, args[0]), *args[1:], **kwargs)
        outputs[key] = kwargs["inputs"]
        return original(**{**kwargs, "inputs": first_call(key, kwargs["inputs"])})

    return call
