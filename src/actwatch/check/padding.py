"""Which tokens of a text batch are real and which are padding, on the device.

A text model's probes (and statistics samples) are padded to one length. The padded positions
are no tokens of any sentence: their attention rows, norms and activations would pull every
figure of `attention` and `tokens` toward whatever the model does with filler. Where the
batch says which positions are real, the figures leave the others out:

- an input named `padding_mask` (KerasHub's BERT, Gemma, Llama... take
  `{"token_ids", "padding_mask"}`): its non-zero positions;
- else, for a model holding an `Embedding(mask_zero=True)` (whose Keras mask hides id 0
  from the layers after it), the token ids that are not 0: the input that feeds that Embedding
  in a Functional model, else the input named `token_ids`, else the first 2-D integer input.

`validity_rule(model)` reads the model's inputs once, before any call; the rule it returns
runs inside the check's compiled call on the batch as fed (an array, a list in the order of
`model.inputs`, or a dict by input name) and gives a `(batch, tokens)` bool tensor, or None.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
from keras import ops

from actwatch.check.tree import descendants

__all__ = ["Validity", "query_validity", "validity_rule"]

#: The batch as fed -> `(batch, tokens)` bool tensor of the real tokens, or None.
Validity = Callable[[Any], Any]


def _names(model: Any) -> list[str]:
    """The model's input names, in the order a list feed follows (none for a subclass)."""
    try:
        inputs = list(model.inputs or [])
    except (AttributeError, ValueError):
        return []
    return [str(getattr(t, "name", "")).split("/")[-1] for t in inputs]


def _pick(x: Any, names: Sequence[str], wanted: str, ids: bool) -> Any:
    """The input named `wanted*` (a dict's key, or by position in `names`); with `ids`, else
    the first 2-D integer one; None when there is none."""
    if isinstance(x, Mapping):
        items = [(str(k).split("/")[-1], v) for k, v in x.items()]
    elif isinstance(x, (list, tuple)):
        items = list(zip([*names, *[""] * len(x)], x, strict=False))
    else:
        items = [(names[0] if names else "", x)]
    for name, value in items:
        if name.startswith(wanted) and len(getattr(value, "shape", ())) == 2:
            return value
    if ids:
        for _, value in items:
            shape, dtype = getattr(value, "shape", ()), str(getattr(value, "dtype", ""))
            if len(shape) == 2 and "int" in dtype:
                return value
    return None


def _masked_ids(model: Any, names: Sequence[str]) -> str | None:
    """The name of the model input that feeds an `Embedding(mask_zero=True)` directly (a
    Functional model's), else `"token_ids"`; None when no Embedding masks id 0."""
    masked = [
        layer
        for layer in [model, *descendants(model)]
        if isinstance(layer, keras.layers.Embedding) and getattr(layer, "mask_zero", False)
    ]
    if not masked:
        return None
    for layer in masked:
        try:
            fed = str(getattr(layer.input, "name", "")).split("/")[-1]
        except (AttributeError, ValueError):  # a subclass's layer, never called on an Input
            continue
        if fed in names:
            return fed
    return "token_ids"


def validity_rule(model: Any) -> Validity:
    """The rule for `model`'s batches (module docstring); it gives None when nothing says
    which tokens are padding (a vision model, a text model without padding_mask or
    mask_zero)."""
    names = _names(model)
    ids = _masked_ids(model, names)
    masked = ids is not None

    def rule(x: Any) -> Any:
        mask = _pick(x, names, "padding_mask", ids=False)
        if mask is not None:
            return ops.not_equal(ops.convert_to_tensor(mask), 0)
        if masked:
            tokens = _pick(x, names, ids or "token_ids", ids=True)
            if tokens is not None:
                return ops.not_equal(ops.convert_to_tensor(tokens), 0)
        return None

    return rule


def query_validity(valid: Any, batch: int, tokens: int) -> Any:
    """`valid` `(batch, tokens)` as bool when it fits a layer's `batch` and `tokens`; None
    when it does not (a layer whose tokens are not the input's: a vision model's, say)."""
    if valid is None:
        return None
    shape = tuple(int(d) for d in valid.shape)
    if shape != (batch, tokens):
        return None
    return ops.cast(valid, "bool")
