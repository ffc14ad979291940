"""A check's transformer figures, between the pipeline's reduction and its result.

`TransformerItems` adds to the pipeline's per-layer items (on the device, inside the check's
compiled call): for an attention layer (`role="attention"`) the figures of
`attention.reduce_attention` and, when drawn, the probes' attention; for a block's output
(`role="block"`) `tokens.reduce_tokens` and, when drawn, the probes' token norms. On the host,
`finish` turns them into scalars for `LayerStats` and `TokenPicture`s for the pictures.

Padding (`padding.validity_rule`, read from the batch by `attention.AttentionHooks.begin`)
counts nowhere: not as queries of the attention figures, not in a block's token figures, not
in an MLP's dead and dormant units (whose per-unit max and mean |a| are taken again, over the
real tokens, in place of `stats.reduce_layer`'s).

Token layout: a model with an image input (rank 4) is a vision model. Its first tokens are
class and register tokens: `num_register_tokens` (DINOv2) plus one class token when a layer
has `cls_token` or `use_class_token=True`; without such a layer, the fewest leading tokens
(up to 8) that leave the patches on a grid of the image input's shape (`height // p` by
`width // p` for a patch size `p`: a 224 x 160 image in 16 px patches is 14 x 10; square
when the shape is not known). Its attention picture is the class token's row (a prefix),
or the mean over queries (none). Any other model is a text model: the attention picture is
the whole matrix of its first `attention.MAX_TEXT_TOKENS` tokens, with the probes' token ids.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

import keras
import numpy as np
from keras import ops

from actwatch.check.attention import (
    MAX_TEXT_TOKENS,
    VALID,
    attention_picture,
    attention_scalars,
)
from actwatch.check.padding import query_validity
from actwatch.check.tokens import TokenPicture, reduce_tokens, token_figures, token_norms
from actwatch.check.tree import descendants

__all__ = ["TransformerItems", "token_prefix"]


def token_prefix(model: Any) -> int | None:
    """Class + register tokens a vision transformer puts first, read from its layers; None
    when no layer says (see the module docstring)."""
    found = None
    for layer in [model, *descendants(model)]:
        registers = getattr(layer, "num_register_tokens", None)
        has_class = hasattr(layer, "cls_token") or getattr(layer, "use_class_token", False)
        if isinstance(registers, int) or has_class:
            found = (registers if isinstance(registers, int) else 0) + (1 if has_class else 0)
    return found


#: Class, register and distillation tokens tried when no layer says how many lead.
_MAX_PREFIX = 8


def _patch_grid(patches: int, image: tuple[int, int] | None) -> tuple[int, int] | None:
    """`(rows, columns)` of `patches` square patches of `p` pixels cut from an `image` of
    `(height, width)` pixels (`height // p` by `width // p`, a patchify convolution's "valid"
    output), or square when the image's shape is unknown; None when no patch size fits."""
    if image is None:
        side = math.isqrt(patches)
        return (side, side) if side * side == patches and side > 0 else None
    height, width = image
    for size in range(1, max(height, width) + 1):
        rows, columns = height // size, width // size
        if rows * columns == patches and rows > 0 and columns > 0:
            return rows, columns
        if rows * columns < patches:
            return None
    return None


def _grid(
    tokens: int, prefix: int | None, image: tuple[int, int] | None = None
) -> tuple[int, tuple[int, int]]:
    """`(leading tokens, patch grid)` of a vision transformer's `tokens`: the patches after
    `prefix` leading tokens (when None, the fewest leading tokens, up to `_MAX_PREFIX`, that
    leave a grid of the image's shape) on their `(rows, columns)` grid; a strip of the
    patches when no grid fits."""
    tried = [prefix] if prefix is not None else list(range(min(tokens, _MAX_PREFIX + 1)))
    for lead in tried:
        grid = _patch_grid(tokens - lead, image) if tokens > lead else None
        if grid is not None:
            return lead, grid
    lead = tried[0] if prefix is not None else 0
    return lead, (1, max(tokens - lead, 0))


def _image_shape(model: Any, inputs: list[Any]) -> tuple[int, int] | None:
    """`(height, width)` of the model's first image input, when its shape says, in the data
    format of the model's first layer that has one (its patchify convolution), else Keras'."""
    formats = (getattr(layer, "data_format", None) for layer in descendants(model))
    data_format = next((f for f in formats if isinstance(f, str)), None)
    for tensor in inputs:
        shape = tuple(getattr(tensor, "shape", ()))
        if len(shape) != 4:
            continue
        first = (data_format or keras.config.image_data_format()) == "channels_first"
        height, width = shape[2:4] if first else shape[1:3]
        if isinstance(height, int) and isinstance(width, int):
            return height, width
        return None
    return None


class TransformerItems:
    """The transformer part of a check (module docstring).

    Args:
        model: the model.
        rows: the statistics samples leading the batch (0: all are probes too).
    """

    def __init__(self, model: Any, rows: int) -> None:
        try:
            inputs = list(model.inputs or [])
        except (AttributeError, ValueError):
            inputs = []
        self.vision = any(len(getattr(t, "shape", ())) == 4 for t in inputs)
        self.prefix = token_prefix(model) if self.vision else 0
        self.image = _image_shape(model, inputs) if self.vision else None
        self.rows = rows

    def query(self, tokens: int) -> str:
        if not self.vision:
            return "all"
        prefix, _ = _grid(tokens, self.prefix, self.image)
        return "class" if prefix >= 1 else "mean"

    def reduce(
        self,
        role: str,
        a: Any,
        extras: Mapping[str, Any],
        path: str,
        drawn: bool,
        stats: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Device: the items to add for one layer (`a` its `(B, T, D)` float32 output);
        `stats` its `reduce_layer` figures, whose per-unit max and mean |a| an MLP's padding
        is taken out of (in place)."""
        rows = self.rows
        out: dict[str, Any] = {}
        valid = None
        if len(a.shape) == 3:
            valid = query_validity(extras.get(VALID), int(a.shape[0]), int(a.shape[1]))
            valid = valid[:rows] if valid is not None and rows else valid
        if role == "mlp" and valid is not None and stats is not None:
            stats["all_max"] = stats["filter_max"]  # max_abs and histograms see every position
            stats.update(_real_units(a[:rows] if rows else a, valid, stats["scale"]))
        if role == "attention" and path in extras:
            figures = dict(extras[path])
            probs = figures.pop("probs")
            out["attention"] = figures
            if drawn:
                out["attention_map"] = attention_picture(probs, self.query(int(probs.shape[2])))
        elif role == "block" and len(a.shape) == 3:
            out["tokens"] = reduce_tokens(a[:rows] if rows else a, valid)
            if drawn:
                out["token_norms"] = token_norms(a[rows:] if rows else a)
        return out

    def finish(
        self, path: str, item: Mapping[str, Any], shape: tuple[int, ...], ids: Any = None
    ) -> tuple[dict[str, float], dict[str, TokenPicture], tuple[int, int, int] | None]:
        """Host: `(scalars, pictures keyed "{kind}/{path}", massive activation's place)`.
        `shape` is the layer's output shape (statistics samples, tokens, channels); `ids`
        the batch's first input (token ids of a text model)."""
        scalars: dict[str, float] = {}
        pictures: dict[str, TokenPicture] = {}
        where = None
        text_ids = None
        first = ids[0] if isinstance(ids, (list, tuple)) and ids else ids
        if not self.vision and first is not None and np.ndim(first) == 2:
            array = np.asarray(first)
            text_ids = array[self.rows :, :MAX_TEXT_TOKENS] if array.dtype.kind in "iu" else None
        if "attention" in item:
            scalars.update(attention_scalars(item["attention"]))
        if "attention_map" in item:
            values = np.asarray(item["attention_map"], dtype=np.float32)
            tokens = int(values.shape[-1])
            query = self.query(tokens) if self.vision else "all"
            prefix, grid = _grid(tokens, self.prefix, self.image) if self.vision else (0, None)
            pictures[f"attention/{path}"] = TokenPicture(
                "attention", values, query, prefix, grid, text_ids
            )
        if "tokens" in item:
            n, t, d = shape
            figures = token_figures(item["tokens"], (n, t, d))
            scalars.update(figures.scalars())
            where = figures.where if figures.massive else None
        if "token_norms" in item:
            values = np.asarray(item["token_norms"], dtype=np.float32)
            tokens = int(values.shape[-1])
            prefix, grid = _grid(tokens, self.prefix, self.image) if self.vision else (0, None)
            pictures[f"tokens/{path}"] = TokenPicture("tokens", values, "", prefix, grid, text_ids)
        return scalars, pictures, where


def _real_units(a: Any, valid: Any, scale: Any) -> dict[str, Any]:
    """Per unit of `a` `(N, T, C)`, over its finite values at real tokens (`valid` `(N, T)`):
    the max and the mean |a| (in units of `scale`, as `stats.reduce_layer` gives them)."""
    kept = ops.logical_and(ops.expand_dims(valid, -1), ops.isfinite(a))
    count = ops.sum(ops.cast(kept, "float32"), axis=(0, 1))
    absolute = ops.sum(ops.where(kept, ops.abs(a) / scale, ops.zeros_like(a)), axis=(0, 1))
    return {
        "filter_max": ops.max(ops.where(kept, a, ops.full_like(a, -np.inf)), axis=(0, 1)),
        "filter_mean_abs": absolute / ops.maximum(count, 1.0),
    }


def drawn_roles(paths: Collection[str], roles: Mapping[str, str]) -> list[str]:
    """The transformer layers among `paths` (attention layers and blocks) that get pictures."""
    return [p for p in paths if roles.get(p) in ("attention", "block")]
