"""The pictures of a transformer's check, tagged: token norms and attention per drawn layer.

`render_token_images` turns the check's `TokenPicture`s (`CheckResult.tokens`, host numpy)
into `{tag: (image, description)}` for the writer (drawn on the writer's thread, as
`actwatch.check.images.render_images`):

- vision (a patch grid): `tokens/{layer}/probe_{i}`, each patch token's L2 norm blended over
  the probe image; `attention/{layer}/probe_{i}`, one tile per head of the class token's
  attention over the patches (the mean over queries without a class token). Class and
  register tokens are set aside (their share is said in the description);
- text: `attention/{layer}/probe_{i}`, each head's query x key matrix, the tokens as labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from actwatch.check.tokens import split_key
from actwatch.events import tags
from actwatch.render.png import PaletteImage, quantized
from actwatch.render.tokens import (
    ATTENTION_PALETTE,
    attention_grid_indices,
    attention_matrices_image,
    query_attention,
    token_norm_image,
)

__all__ = ["TokenPictureLike", "render_token_images"]


class TokenPictureLike(Protocol):
    """What is drawn of one layer (`actwatch.check.tokens.TokenPicture` is one)."""

    @property
    def kind(self) -> str: ...
    @property
    def values(self) -> np.ndarray: ...
    @property
    def query(self) -> str: ...
    @property
    def prefix(self) -> int: ...
    @property
    def grid(self) -> tuple[int, int] | None: ...
    @property
    def token_ids(self) -> np.ndarray | None: ...


def _labels(
    picture: TokenPictureLike, probe: int, labels: Sequence[Sequence[str]] | None
) -> list[str]:
    if labels is not None and probe < len(labels):
        return list(labels[probe])
    ids = picture.token_ids
    return [] if ids is None else [str(int(t)) for t in np.asarray(ids)[probe]]


def render_token_images(
    *,
    tokens: Mapping[str, TokenPictureLike],
    display: np.ndarray | None,
    labels: Sequence[Sequence[str]] | None = None,
    lengths: Sequence[int] | None = None,
) -> dict[str, tuple[np.ndarray | PaletteImage, str]]:
    """Every transformer picture of one check as `{tag: (image, description)}`.

    Args:
        tokens: `CheckResult.tokens`, keyed `"{kind}/{layer}"` (`kind` "tokens" or
            "attention").
        display: the probes as uint8 RGB `(probes, H, W, 3)` under the token norms, or None.
        labels: per probe, the text of each token (text models; else the ids are written).
        lengths: per probe, its tokens before padding: the matrices are cut there.
    """
    images: dict[str, tuple[np.ndarray | PaletteImage, str]] = {}
    for key, picture in tokens.items():
        kind, path = split_key(key)
        values = np.asarray(picture.values, dtype=np.float32)
        prefix = int(picture.prefix)
        if picture.grid is not None:
            rows, cols = picture.grid
            grid = (prefix, int(rows), int(cols))
            aside = (
                f" The first {prefix} token(s) (class and register tokens) are set aside."
                if prefix
                else ""
            )
            for i in range(values.shape[0]):
                if kind == tags.TOKENS:
                    background = None if display is None else display[i]
                    images[tags.tokens_tag(path, i)] = (
                        quantized(token_norm_image(values[i], grid, background)),
                        f"L2 norm of each patch token of `{path}` on the {rows}x{cols} patch "
                        f"grid over probe {i}, scaled to its own range: high-norm tokens "
                        f"(Darcet et al. 2024) are hot spots.{aside}",
                    )
                elif kind == tags.ATTENTION:
                    scores = query_attention(values[i], prefix)
                    whose = (
                        "the class token's attention"
                        if picture.query == "class"
                        else "the attention averaged over queries"
                    )
                    mass = float(np.nansum(scores[:, :prefix])) / max(1, scores.shape[0])
                    extra = f" Mean mass on them: {mass:.3f}." if prefix else ""
                    images[tags.attention_tag(path, i)] = (
                        PaletteImage(attention_grid_indices(scores, grid), ATTENTION_PALETTE),
                        f"Per head (left to right, top to bottom) of `{path}`, {whose} over "
                        f"the {rows}x{cols} patches of probe {i}, each head scaled to its own "
                        f"range (bright: more attention).{aside}{extra}",
                    )
            continue
        if kind != tags.ATTENTION or values.ndim != 4:
            continue  # text models: the attention matrices only
        for i in range(values.shape[0]):
            matrix = values[i]
            size = matrix.shape[-1]
            if lengths is not None and i < len(lengths) and 0 < lengths[i] < size:
                size = int(lengths[i])
                matrix = matrix[:, :size, :size]
            images[tags.attention_tag(path, i)] = (
                attention_matrices_image(matrix, _labels(picture, i, labels)[:size]),
                f"Attention of each head of `{path}` on probe {i}: rows are queries, columns "
                "keys, labelled by token; brightness sqrt(weight), 0 black to 1 bright. A "
                "bright first column is an attention sink; one bright cell per row a "
                "collapsed head.",
            )
    return images
