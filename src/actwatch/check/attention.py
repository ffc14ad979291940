"""Attention statistics, taken where each attention layer computes its softmax.

For one check's forward pass (actwatch's own compiled call, never `fit`'s train step) each
watched attention layer (`transformers.is_attention`) is set up so that its softmax runs as a
layer and is seen:

- the `keras.layers.Softmax` it holds gets a wrapper on its `call` (on the instance) that
  keeps the softmax's input, the logits as the layer computes them (after any scaling,
  QK-normalisation or soft-capping of its own), its mask and its output, and reduces them on
  the device at once (`reduce_attention`): only a few numbers per layer, and for drawn
  layers the probes' attention, leave the call;
- the fused (flash) path, which has no softmax to see, is turned off for that call:
  `MultiHeadAttention._compute_attention` is called with `return_attention_scores=True` (or,
  for a subclass whose own `_compute_attention` does not name it, with a dropout rate of
  1e-30, whose Dropout is called with `training=False`: the identity) and
  `_flash_attention=False` (the explicit path Keras takes for dropout), a layer's own
  `_use_fused_attention_op` (KerasHub's Gemma) answers False, and a module-level
  `fused_attention_op_available` of the layer's module (KerasHub's Llama) too.

Everything is put back when the call ends, whatever happened (`AttentionHooks.installed`).

With `A` the post-softmax attention `(B, H, T, S)`, `Z` its logits and `valid` the keys a
query may attend (its mask; all when there is none), over the queries with at least two
valid keys that are real tokens (a padded query, `padding.validity_rule`, counts nowhere,
even where its mask lets it attend the sentence, as KerasHub's key-padding masks do):

- `attention_entropy`: mean over samples, heads and queries of
  `-sum_{valid j} A_ij log A_ij / log(#valid keys)`, in [0, 1] (Zhai et al., ICML 2023,
  "Stabilizing Transformer Training by Preventing Attention Entropy Collapse");
  `attention_entropy_min`: the lowest head's mean;
- `attention_logit_max`: max |Z| over the valid (sample, head, query, key): the attention-logit
  growth of Dehghani et al. 2023 and Wortsman et al. 2023 (arXiv 2309.14322);
- `attention_sink`: mean over samples, heads and queries of `A_i0`, the mass on the first key
  (Gu et al., ICLR 2025, "When Attention Sink Emerges in Language Models").
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from actwatch.check.padding import query_validity, validity_rule

__all__ = [
    "MAX_TEXT_TOKENS",
    "VALID",
    "AttentionHooks",
    "attention_picture",
    "attention_scalars",
    "reduce_attention",
]

#: Text attention pictures hold at most this many queries and keys (the first ones).
MAX_TEXT_TOKENS = 64

_MISSING = object()
#: What `reduce_attention` returns, in the order of their keys in a store.
_FIGURES = ("entropy", "entropy_min", "head_entropy", "logit_max", "sink", "probs")
#: The `AttentionHooks.unpack` key of the batch's real tokens `(B, T)` (None: all real).
VALID = ""
#: A dropout rate that makes `MultiHeadAttention._compute_attention` take its explicit path.
_NO_DROPOUT = 1e-30


def _softmax_of(layer: Any) -> Any:
    """The `keras.layers.Softmax` an attention layer holds itself, or None."""
    values = dict(vars(layer))
    if keras.backend.backend() == "torch":
        values.update(layer.named_children())
    preferred = values.get("_softmax")
    if isinstance(preferred, keras.layers.Softmax):
        return preferred
    for value in values.values():
        if isinstance(value, keras.layers.Softmax):
            return value
    return None


def _as_heads(t: Any) -> Any:
    """`(B, ..., T, S)` -> `(B, H, T, S)`, the axes between batch and queries merged."""
    shape = tuple(int(d) for d in t.shape)
    if len(shape) == 3:
        return ops.expand_dims(t, 1)
    heads = int(np.prod(shape[1:-2]))
    return ops.reshape(t, (shape[0], heads, shape[-2], shape[-1]))


def reduce_attention(
    logits: Any, mask: Any, probs: Any, rows: int, queries: Any = None
) -> dict[str, Any]:
    """The statistics of one attention call, on the device (see the module docstring).

    `logits` and `probs` are the softmax's input and output `(B, ..., T, S)`, `mask` what the
    softmax was given (None, or broadcastable to the logits; True or > 0.5 where a key may be
    attended), `queries` the real tokens `(B, T)` (None, or a shape that is not the
    queries': all count). The statistics are over the `rows` leading samples (0: all).
    Returns scalars `entropy`, `entropy_min`, `logit_max`, `sink`, the per-head mean entropy
    `head_entropy` `(H,)`, and `probs`, the probes' attention `(B - rows, H, T, S)` for
    pictures (dropped by the compiler unless drawn).
    """
    z = _as_heads(ops.cast(logits, "float32"))
    p = _as_heads(ops.cast(probs, "float32"))
    if mask is None:  # every key: no all-true tensor to build and read (perf)
        valid = None
    else:
        m = mask if str(mask.dtype) == "bool" else ops.greater(mask, 0.5)
        valid = _as_heads(ops.broadcast_to(ops.cast(m, "bool"), tuple(logits.shape)))
    real = query_validity(queries, int(z.shape[0]), int(z.shape[2]))
    if real is not None:  # a padded query's row counts nowhere
        every = ops.ones(z.shape, dtype="bool") if valid is None else valid
        valid = ops.logical_and(every, real[:, None, :, None])
    probes = p[rows:] if rows else p
    if rows:
        z, p, valid = z[:rows], p[:rows], None if valid is None else valid[:rows]
    if valid is None:
        n_valid = ops.full_like(p[..., 0], float(p.shape[-1]))  # (B, H, T)
        live = p > 0.0
    else:
        n_valid = ops.sum(ops.cast(valid, "float32"), axis=-1)  # (B, H, T)
        live = ops.logical_and(valid, p > 0.0)
    counted = ops.cast(n_valid >= 2.0, "float32")
    # Scalars, not full-size ones and zeros: on PyTorch, eager, each is a pass (perf).
    safe = ops.where(live, p, 1.0)
    plogp = ops.sum(ops.where(live, p * ops.log(safe), 0.0), axis=-1)
    entropy = -plogp / ops.log(ops.maximum(n_valid, 2.0)) * counted
    per_head = ops.sum(counted, axis=(0, 2))
    head_entropy = ops.sum(entropy, axis=(0, 2)) / ops.maximum(per_head, 1.0)
    total = ops.maximum(ops.sum(counted), 1.0)
    sink = ops.sum(p[..., 0] * counted) / total
    masked_abs = ops.abs(z) if valid is None else ops.where(valid, ops.abs(z), 0.0)
    return {
        "entropy": ops.sum(entropy) / total,
        "entropy_min": ops.min(ops.where(per_head > 0.0, head_entropy, ops.ones_like(per_head))),
        "head_entropy": head_entropy,
        "logit_max": ops.max(masked_abs),
        "sink": sink,
        "probs": probes,
    }


def attention_picture(probs: Any, query: str) -> Any:
    """What is drawn of the probes' attention `(P, H, T, S)` (device): `"class"` the first
    query's row `(P, H, S)`, `"mean"` the mean over queries `(P, H, S)`, `"all"` the first
    `MAX_TEXT_TOKENS` queries and keys `(P, H, q, k)`."""
    if query == "class":
        return probs[:, :, 0, :]
    if query == "mean":
        return ops.mean(probs, axis=2)
    return probs[:, :, :MAX_TEXT_TOKENS, :MAX_TEXT_TOKENS]


def attention_scalars(device: Mapping[str, Any]) -> dict[str, float]:
    """`reduce_attention`'s figures (numpy) as `{metric: value}` scalars."""
    return {
        "attention_entropy": float(device["entropy"]),
        "attention_entropy_min": float(device["entropy_min"]),
        "attention_logit_max": float(device["logit_max"]),
        "attention_sink": float(device["sink"]),
    }


class AttentionHooks:
    """The attention layers' softmaxes seen during actwatch's own calls (module docstring).

    `installed(store)` sets the wrappers; the first call of each layer's softmax puts
    `reduce_attention`'s tensors in `store`, each under a negative int key (apart from the
    layer ids `capture.Capture` keys its outputs by, and one tensor per key, as the
    gradients' pass hands the store around); `unpack(store)` gives them back by path, and
    under `VALID` the batch's real tokens. `begin(x)`, inside the compiled call before the
    model runs, reads them from the batch `x` (`padding.validity_rule`).

    Args:
        layers: `(path, attention layer)` pairs.
        rows: the statistics samples, leading the batch (0: all samples).
        model: the model whose batches `begin` reads the padding of (None: no padding).
    """

    def __init__(self, layers: Sequence[tuple[str, Any]], rows: int = 0, model: Any = None) -> None:
        self.layers = [(path, layer, _softmax_of(layer)) for path, layer in layers]
        self.rows = rows
        self.keys = {path: -(i + 1) * len(_FIGURES) for i, (path, _, _) in enumerate(self.layers)}
        self._rule = None if model is None else validity_rule(model)
        #: The current call's real tokens `(B, T)` (a tensor of its trace), or None.
        self.valid: Any = None

    def begin(self, x: Any) -> None:
        """Read the real tokens of the batch `x`, as fed to the model, for this call."""
        self.valid = None if self._rule is None else self._rule(x)

    def unpack(self, store: Mapping[int, Any]) -> dict[str, Any]:
        """`{path: reduce_attention's dict}` for the layers whose softmax ran, and `VALID`."""
        found: dict[str, Any] = {
            path: {name: store[key - j] for j, name in enumerate(_FIGURES)}
            for path, key in self.keys.items()
            if key in store
        }
        found[VALID] = self.valid
        return found

    @contextlib.contextmanager
    def installed(self, store: dict[int, Any]) -> Iterator[None]:
        undo: list[Callable[[], None]] = []
        try:
            for path, layer, softmax in self.layers:
                if softmax is None:
                    continue
                _set(undo, softmax, "call", self._wrapper(self.keys[path], softmax.call, store))
                if isinstance(layer, keras.layers.MultiHeadAttention):
                    explicit = _explicit(layer._compute_attention)
                    if explicit is not None:
                        _set(undo, layer, "_compute_attention", explicit)
                    elif not getattr(layer, "_dropout", 0.0) > 0.0:
                        # A subclass's own `_compute_attention(*args)`: Keras' takes the
                        # explicit path with dropout, whose Dropout layer (its own rate)
                        # is called with training=False here: the identity.
                        _set(undo, layer, "_dropout", _NO_DROPOUT)
                    if hasattr(layer, "_flash_attention"):
                        _set(undo, layer, "_flash_attention", False)
                if callable(getattr(layer, "_use_fused_attention_op", None)):
                    _set(undo, layer, "_use_fused_attention_op", lambda: False)
                module = sys.modules.get(type(layer).__module__)
                if callable(getattr(module, "fused_attention_op_available", None)):
                    _set(undo, module, "fused_attention_op_available", lambda: False)
            yield
        finally:
            self.valid = None
            for step in reversed(undo):
                step()

    def _wrapper(
        self, key: int, original: Callable[..., Any], store: dict[int, Any]
    ) -> Callable[..., Any]:
        rows = self.rows

        @functools.wraps(original)
        def call(inputs: Any, mask: Any = None, *args: Any, **kwargs: Any) -> Any:
            out = original(inputs, mask, *args, **kwargs)
            if key not in store and len(inputs.shape) >= 3:
                figures = reduce_attention(inputs, mask, out, rows, self.valid)
                store.update({key - j: figures[name] for j, name in enumerate(_FIGURES)})
            return out

        return call


def _set(undo: list[Callable[[], None]], owner: Any, name: str, value: Any) -> None:
    """Set `owner.name` (on the instance, or a module's global) and remember how to undo it."""
    previous = vars(owner).get(name, _MISSING)
    setattr(owner, name, value)

    def restore() -> None:
        if previous is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, previous)

    undo.append(restore)


def _explicit(original: Callable[..., Any]) -> Callable[..., Any] | None:
    """`MultiHeadAttention._compute_attention` on its explicit (non-fused) path: called with
    `return_attention_scores=True`, what `call` returns is unchanged. None when its
    signature does not name that argument (a subclass's `(query, key, *args, **kwargs)`)."""
    try:
        signature = inspect.signature(original)
    except (TypeError, ValueError):
        return None
    if "return_attention_scores" not in signature.parameters:
        return None

    @functools.wraps(original)
    def compute(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind_partial(*args, **kwargs)
        bound.arguments["return_attention_scores"] = True
        return original(*bound.args, **bound.kwargs)

    return compute


def entropy_bound(keys: int) -> float:
    """log(keys): the largest entropy, in nats, of attention over `keys` keys."""
    return math.log(max(keys, 2))
