"""Pictures of transformers, with numpy and Pillow: token norms and attention.

Vision transformers: the patch tokens are laid on their grid `(prefix, rows, cols)`, the
`prefix` class and register tokens before them set aside. `token_norm_image` draws each
patch token's L2 norm as a heatmap over the probe image (high-norm tokens, Darcet et al.
2024, are hot spots);
`attention_grid_indices` tiles, per head, the class token's attention over the patches (or
the mean over queries without a class token), like the filter grids.

Text models: `attention_matrices_image` draws each head's query x key attention matrix with
the tokens as axis labels (readable up to about 64 tokens). Nothing here imports Keras or
matplotlib, encodes or writes files.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from actwatch.render.png import PaletteImage
from actwatch.render.tiles import (
    GREYS,
    INFERNO_LUT,
    NONFINITE,
    PALETTE,
    filter_grid_indices,
    grid_layout,
    heatmap_overlay,
)

__all__ = [
    "ATTENTION_PALETTE",
    "TEXT_PALETTE",
    "TOKENS_MAX_SIDE",
    "attention_codes",
    "attention_grid_indices",
    "attention_matrices_image",
    "query_attention",
    "token_heat",
    "token_norm_image",
]

#: `tiles.PALETTE` with the grey levels turned into inferno: the attention grids' colours
#: (bright is more attention), the gutter and non-finite colours kept.
ATTENTION_PALETTE = PALETTE.copy()
ATTENTION_PALETTE[:GREYS] = INFERNO_LUT[np.arange(GREYS) * 255 // (GREYS - 1)]


def token_heat(values: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """The patch tokens' `values` `(tokens,)` on the grid, scaled to uint8 0..255 over the
    patches (non-finite values count as the lowest; a constant map is 0)."""
    prefix, rows, cols = grid
    patches = np.asarray(values, dtype=np.float64)[prefix : prefix + rows * cols]
    finite = np.isfinite(patches)
    if not finite.any():
        return np.zeros((rows, cols), dtype=np.uint8)
    lo, hi = float(patches[finite].min()), float(patches[finite].max())
    spread = hi - lo if hi > lo else 1.0
    scaled = np.where(finite, (patches - lo) / spread * 255.0, 0.0)
    return np.round(np.clip(scaled, 0, 255)).astype(np.uint8).reshape(rows, cols)


#: The token-norm pictures' longer side at most (a 14x14 patch grid needs no 224 px).
TOKENS_MAX_SIDE = 128


def token_norm_image(
    norms: np.ndarray, grid: tuple[int, int, int], background: np.ndarray | None
) -> np.ndarray:
    """Each patch token's L2 norm `(tokens,)` as a heatmap blended over the probe's picture
    `(H, W, 3)` (or alone without one): RGB uint8, like the activation heatmaps, at most
    `TOKENS_MAX_SIDE` pixels on its longer side (a larger probe is shrunk under it)."""
    if background is not None and max(background.shape[:2]) > TOKENS_MAX_SIDE:
        h, w = background.shape[:2]
        scale = TOKENS_MAX_SIDE / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        background = np.asarray(Image.fromarray(background).resize(size, Image.Resampling.BILINEAR))
    return heatmap_overlay(token_heat(norms, grid), background)


def query_attention(attention: np.ndarray, prefix: int) -> np.ndarray:
    """`(heads, keys)` from `(heads, queries, keys)` scores: the class token's row (the first
    query) when there is one (`prefix` >= 1), else the mean over queries. A `(heads, keys)`
    input is returned as is."""
    scores = np.asarray(attention, dtype=np.float32)
    if scores.ndim == 2:
        return scores
    if scores.ndim != 3:
        raise ValueError(
            f"attention scores must be (heads, keys) or (heads, queries, keys); got shape "
            f"{scores.shape}."
        )
    return scores[:, 0, :] if prefix >= 1 else scores.mean(axis=1)


def attention_codes(scores: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """uint8 map codes `(rows, cols, heads)` of per-head attention `(heads, keys)` over the
    patch keys, each head scaled to its own range (as `actwatch.check.maps` codes filters:
    0..254, 255 non-finite; a constant map is mid-grey when positive)."""
    prefix, rows, cols = grid
    patches = np.asarray(scores, dtype=np.float64)[:, prefix : prefix + rows * cols]
    finite = np.isfinite(patches)
    lo = np.where(finite, patches, np.inf).min(axis=1, keepdims=True)
    hi = np.where(finite, patches, -np.inf).max(axis=1, keepdims=True)
    none = ~finite.any(axis=1, keepdims=True)  # a head without a finite weight
    lo, hi = np.where(none, 0.0, lo), np.where(none, 0.0, hi)
    spread = hi - lo
    varied = spread > 0
    scaled = np.where(varied, (patches - lo) / np.where(varied, spread, 1.0) * 254.0, 0.0)
    flat = np.where(varied, 0.0, np.where(hi > 0, 127.0, 0.0))
    codes = np.where(finite, np.clip(np.round(scaled + flat), 0, 254), NONFINITE)
    return np.ascontiguousarray(codes.astype(np.uint8).reshape(-1, rows, cols).transpose(1, 2, 0))


def attention_grid_indices(scores: np.ndarray, grid: tuple[int, int, int]) -> np.ndarray:
    """One tile per head (left to right, top to bottom) of its attention `(heads, keys)` over
    the patches, laid out like a filter grid: indices into `ATTENTION_PALETTE`."""
    return filter_grid_indices(attention_codes(scores, grid))


# Text: attention matrices with the tokens as labels ----------------------------------------

#: The matrices' palette: indices 0..199 inferno (sqrt of the weight), 200..251 greys from
#: black to white (the labels, antialiased, on white), 255 magenta (non-finite).
LEVELS, GREY0, WHITE = 200, 200, 251
TEXT_PALETTE = np.zeros((256, 3), dtype=np.uint8)
TEXT_PALETTE[:LEVELS] = INFERNO_LUT[np.arange(LEVELS) * 255 // (LEVELS - 1)]
TEXT_PALETTE[GREY0 : WHITE + 1] = (np.arange(WHITE + 1 - GREY0) * 255 // (WHITE - GREY0))[:, None]
TEXT_PALETTE[NONFINITE] = (255, 0, 255)
_LABEL_CHARS = 12  # longer tokens are cut, with an ellipsis


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's own font (no system font needed) at `size` pixels."""
    return ImageFont.load_default(size=size)


def _cell(tokens: int, heads: int) -> int:
    """Pixels per matrix cell: labels readable up to 64 tokens (smaller cells for many heads,
    so 12 heads of 64 tokens stay near 3 megapixels), then cells shrink."""
    if tokens > 64:
        return max(2, 512 // tokens)
    return (14 if tokens <= 32 else 11) if heads <= 4 else (10 if tokens <= 32 else 8)


#: Word-start marks of byte-level BPE and SentencePiece vocabularies, and BPE's newline.
_MARKS = str.maketrans({"\u0120": "_", "\u2581": "_", "\u010a": "\\n"})


def _short(label: str) -> str:
    text = "".join(c if c.isprintable() else "?" for c in str(label).translate(_MARKS)) or "_"
    return text if len(text) <= _LABEL_CHARS else text[: _LABEL_CHARS - 1] + "\u2026"


def _greys(image: Image.Image) -> np.ndarray:
    """A white-background "L" image of text as palette indices (greys)."""
    luminance = np.asarray(image, dtype=np.uint16)
    return (GREY0 + luminance * (WHITE - GREY0) // 255).astype(np.uint8)


def _label_strip(
    labels: Sequence[str],
    cell: int,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    width: int,
    *,
    right: bool,
) -> Image.Image:
    """A white "L" column `width` wide of the non-empty `labels`, label i centred at row i of
    `cell` pixels, right-aligned (the query axis) or left-aligned (turned into the key axis)."""
    strip = Image.new("L", (width, cell * len(labels)), 255)
    draw = ImageDraw.Draw(strip)
    for i, label in enumerate(labels):
        if not label:
            continue
        x = width - 2 - draw.textlength(label, font=font) if right else 2
        draw.text((x, i * cell + cell / 2), label, fill=20, font=font, anchor="lm")
    return strip


def attention_matrices_image(
    attention: np.ndarray, labels: Sequence[str], *, title: str = "head"
) -> PaletteImage:
    """Each head's attention matrix `(heads, queries, keys)` as one image (`TEXT_PALETTE`).

    Heads in a near-square grid of panels titled `"{title} {h}"`: rows are queries, columns
    keys; the tokens `labels` (one per position; cut to 12 characters) label the queries left
    of each row of panels and the keys above the first row (read upwards). Brightness is
    sqrt(attention) on inferno, so 0 is black and 1 bright on every head, and small weights
    still show. Every label is drawn up to 64 tokens; past that, every k-th. Non-finite
    weights are magenta.
    """
    scores = np.asarray(attention, dtype=np.float64)
    if scores.ndim != 3 or scores.shape[1] != scores.shape[2] or 0 in scores.shape:
        raise ValueError(
            f"attention matrices must be (heads, tokens, tokens); got shape {scores.shape}."
        )
    heads, tokens = scores.shape[0], scores.shape[2]
    names = [_short(x) for x in labels][:tokens]
    names += [str(i) for i in range(len(names), tokens)]
    cell = _cell(tokens, heads)
    every = 1 if cell >= 8 else math.ceil(8 / cell)
    shown = [name if i % every == 0 else "" for i, name in enumerate(names)]
    font = _font(max(8, min(cell - 2, 11)))
    margin = 4 + math.ceil(max(font.getlength(x) for x in shown))
    left = _greys(_label_strip(shown, cell, font, margin, right=True))
    top = _label_strip(shown, cell, font, margin, right=False)
    top_indices = _greys(top.transpose(Image.Transpose.ROTATE_90))
    title_h, gap, side = 14, 8, cell * tokens
    rows, cols = grid_layout(heads)
    width = margin + cols * (side + gap)
    height = margin + rows * (title_h + side + gap)
    titles = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(titles)
    title_font = _font(10)
    for h in range(heads):
        r, c = divmod(h, cols)
        x, y = margin + c * (side + gap), margin + r * (title_h + side + gap)
        draw.text((x, y + 1), f"{title} {h}", fill=20, font=title_font)
    out = _greys(titles)
    finite = np.isfinite(scores)
    weights = np.clip(np.where(finite, scores, 0.0), 0.0, 1.0)
    codes = np.round(np.sqrt(weights) * (LEVELS - 1)).astype(np.uint8)
    codes[~finite] = NONFINITE
    for h in range(heads):
        r, c = divmod(h, cols)
        x, y = margin + c * (side + gap), margin + r * (title_h + side + gap) + title_h
        out[y : y + side, x : x + side] = codes[h].repeat(cell, axis=0).repeat(cell, axis=1)
        if c == 0:
            out[y : y + side, :margin] = left
        if r == 0:
            out[:margin, x : x + side] = top_indices
    return PaletteImage(out, TEXT_PALETTE)
