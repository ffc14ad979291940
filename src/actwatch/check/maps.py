"""Filter grids and heatmaps: activations as pictures.

The device part (`normalize_maps`, `heat_maps`) scales each filter map of each probe to its
own range and converts it to uint8 on the device, so only small uint8 arrays reach the host.
The host part (`filter_grid`, `heatmap_overlay`, and `render_images` for one whole check)
tiles them into images with numpy and Pillow. Nothing here encodes or writes files.

Pixel code of the uint8 maps: 0..254 is the filter's own range (black = its minimum); 255
marks a non-finite value (drawn magenta). A constant map is drawn black when its value is
<= 0 and mid-gray otherwise.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from keras import ops
from PIL import Image

from actwatch.check.signals import TopK, distribution_image, topk_image
from actwatch.events import tags
from actwatch.render.png import PaletteImage

__all__ = [
    "DRAW_ALL_UP_TO",
    "NONFINITE",
    "PALETTE",
    "default_drawn",
    "filter_grid",
    "filter_grid_indices",
    "grid_layout",
    "heat_maps",
    "heatmap_overlay",
    "normalize_maps",
    "render_images",
]

NONFINITE = 255
GUTTER_RGB = (32, 64, 96)
DEAD_RGB = (150, 24, 24)
NONFINITE_RGB = (255, 0, 255)
MIN_TILE = 24  # small maps are upscaled (nearest) to at least this many pixels
STRIP_CELL = 8  # pixels per unit in Dense strips
STRIP_ROW = 32  # units per row in Dense strips


#: A model with at most this many watched layers has every one of them drawn by default.
DRAW_ALL_UP_TO = 16


def default_drawn(shapes: Sequence[tuple[str, tuple[int | None, ...]]]) -> list[str]:
    """The watched layers drawn by default, from `(path, channels-last output shape)` in
    network order (shapes without the batch axis).

    Every layer when there are at most `DRAW_ALL_UP_TO` (the demo's 10 layers, as the seed
    article shows conv1 to conv5). Beyond, the first watched layer and the last one of each
    spatial resolution: the picture of each stage of the network as it leaves that stage.
    Maps of 1x1 (squeeze-and-excitation gates) are not a stage; Dense outputs count as one.
    ResNet50 at 224 px (50 watched layers) draws 5: `conv1_relu` (112 px), then the output
    of each of its four stages (56, 28, 14 and 7 px).
    """
    if len(shapes) <= DRAW_ALL_UP_TO:
        return [path for path, _ in shapes]
    last: dict[tuple[int | None, ...], str] = {}
    for path, shape in shapes:
        spatial = tuple(shape[:-1])
        if spatial and all(d == 1 for d in spatial):
            continue
        last[spatial] = path
    chosen = {shapes[0][0], *last.values()}
    return [path for path, _ in shapes if path in chosen]


def normalize_maps(x: Any, finite: bool = False) -> Any:
    """Scale maps to uint8 codes over their positions.

    `x` is float32 of shape `(N, H, W, F)` (each filter map scaled over H and W) or `(N, F)`
    (Dense: each sample scaled over its F units). Returns uint8 of the same shape. With
    `finite`, the caller vouches that every value is finite (the check's statistics found
    so), and the full-size passes that set NaN and Inf apart are left out.
    """
    axes = (1, 2) if len(x.shape) == 4 else (1,)
    if finite:
        lo = ops.min(x, axis=axes, keepdims=True)
        hi = ops.max(x, axis=axes, keepdims=True)
        spread = hi - lo
        varied = spread > 0.0
        scale = ops.where(varied, 254.0 / ops.where(varied, spread, 1.0), 0.0)
        flat = ops.where(varied, 0.0, ops.where(hi > 0.0, 127.0, 0.0))
        # The careful path's arithmetic, so both give the same codes (at most 254).
        return ops.cast(ops.round((x - ops.where(varied, lo, 0.0)) * scale + flat), "uint8")
    finite_values = ops.isfinite(x)
    lo = ops.min(ops.where(finite_values, x, np.inf), axis=axes, keepdims=True)
    hi = ops.max(ops.where(finite_values, x, -np.inf), axis=axes, keepdims=True)
    spread = hi - lo
    varied = spread > 0.0
    # Per-map scale and offset on the small (N, 1, 1, F) tensors, so the full-size tensor is
    # touched by few element-wise ops: a constant map gets scale 0 and its flat code.
    scale = ops.where(varied, 254.0 / ops.where(varied, spread, 1.0), 0.0)
    flat = ops.where(varied, 0.0, ops.where(hi > 0.0, 127.0, 0.0))
    value = ops.round((x - ops.where(varied, lo, 0.0)) * scale + flat)
    value = ops.where(finite_values, ops.minimum(value, 254.0), float(NONFINITE))
    return ops.cast(value, "uint8")


def heat_maps(x: Any, finite: bool = False) -> Any:
    """Mean over channels of `(N, H, W, C)`, scaled per probe to uint8 0..255 (non-finite
    values count as 0; with `finite` the caller vouches there are none)."""
    m = ops.mean(x if finite else ops.where(ops.isfinite(x), x, ops.zeros_like(x)), axis=-1)
    lo = ops.min(m, axis=(1, 2), keepdims=True)
    hi = ops.max(m, axis=(1, 2), keepdims=True)
    spread = hi - lo
    scaled = (m - lo) / ops.where(spread > 0.0, spread, ops.ones_like(spread)) * 255.0
    return ops.cast(ops.clip(ops.round(scaled), 0.0, 255.0), "uint8")


def grid_layout(n: int) -> tuple[int, int]:
    """(rows, cols) of a near-square grid for n tiles: cols = ceil(sqrt(n))."""
    if n <= 0:
        raise ValueError(f"grid_layout needs at least one tile; got n={n}.")
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


# Grids are palette images: one byte a pixel instead of three, so tiling, PNG encoding and
# writing handle a third of the data. Indices 0..251 are grey levels (the 255 codes of a
# map share them: a step of 1/251 instead of 1/254, invisible), then the special colours.
GREYS = 252
GUTTER, DEAD, CROSS, NONFINITE_INDEX = 252, 253, 254, 255
CROSS_RGB = (255, 160, 160)
#: RGB of each palette index.
PALETTE = np.zeros((256, 3), dtype=np.uint8)
PALETTE[:GREYS] = (np.arange(GREYS, dtype=np.uint16) * 255 // (GREYS - 1))[:, None]
PALETTE[GUTTER], PALETTE[DEAD] = GUTTER_RGB, DEAD_RGB
PALETTE[CROSS], PALETTE[NONFINITE_INDEX] = CROSS_RGB, NONFINITE_RGB
# Palette index of each uint8 map code.
_CODE_INDEX = (np.arange(256, dtype=np.uint16) * (GREYS - 1) // 254).astype(np.uint8)
_CODE_INDEX[NONFINITE] = NONFINITE_INDEX


def _dead_tile(h: int, w: int) -> np.ndarray:
    """Palette indices of a dead filter's tile: red, crossed out in light red."""
    tile = np.full((h, w), DEAD, dtype=np.uint8)
    n = max(h, w)
    idx = np.arange(n)
    rows, cols = idx * h // n, idx * w // n
    tile[rows, cols] = CROSS
    tile[rows, w - 1 - cols] = CROSS
    return tile


def filter_grid(maps: np.ndarray, dead: np.ndarray | None = None, gutter: int = 2) -> np.ndarray:
    """Tile one probe's filter maps into one RGB uint8 image: `PALETTE[filter_grid_indices(...)]`.

    See `filter_grid_indices` for the arguments and the layout.
    """
    rgb: np.ndarray = PALETTE[filter_grid_indices(maps, dead, gutter)]
    return rgb


def filter_grid_indices(
    maps: np.ndarray, dead: np.ndarray | None = None, gutter: int = 2
) -> np.ndarray:
    """Tile one probe's filter maps into one image of `PALETTE` indices.

    Args:
        maps: uint8 codes from `normalize_maps` for one probe: `(H, W, F)` for spatial
            outputs (a 1-D output is `(1, L, F)`, drawn as strips), or `(F,)` for Dense
            outputs, drawn as a strip of cells, 32 units a row.
        dead: optional boolean vector over at least the F drawn filters; dead ones are drawn
            as red tiles with a cross.
        gutter: pixels between tiles.

    Returns:
        `(rows * (h + gutter) + gutter, cols * (w + gutter) + gutter)` uint8 indices, where
        `h, w` are the tile sizes after upscaling small maps to at least `MIN_TILE` pixels.
    """
    maps = np.asarray(maps)
    if maps.ndim == 1:
        return _dense_strip(maps, dead, gutter)
    if maps.ndim != 3:
        raise ValueError(f"filter_grid expects (H, W, F) or (F,) maps; got shape {maps.shape}.")
    h, w, f = maps.shape
    if h == 1 and w > 1:  # 1-D output: one strip per filter, stacked
        sy, sx = MIN_TILE // 3, max(1, math.ceil(MIN_TILE / w))
        rows, cols = f, 1
    else:
        s = max(1, math.ceil(MIN_TILE / max(h, w)))
        sy = sx = s
        rows, cols = grid_layout(f)
    th, tw = h * sy, w * sx
    # One array op per step instead of a Python loop over filters: index, upscale, mark the
    # dead, then lay the (tile + gutter) cells out row by row with one reshape.
    tiles = np.moveaxis(_CODE_INDEX[maps], 2, 0)  # (f, h, w)
    if sy > 1 or sx > 1:
        tiles = tiles.repeat(sy, axis=1).repeat(sx, axis=2)
    cells = np.full((rows * cols, th + gutter, tw + gutter), GUTTER, np.uint8)
    cells[:f, :th, :tw] = tiles
    if dead is not None:
        marked = np.asarray(dead, dtype=bool)[:f]
        if marked.any():
            cells[:f][marked, :th, :tw] = _dead_tile(th, tw)
    body = cells.reshape(rows, cols, th + gutter, tw + gutter).transpose(0, 2, 1, 3)
    out = np.full((rows * (th + gutter) + gutter, cols * (tw + gutter) + gutter), GUTTER, np.uint8)
    out[gutter:, gutter:] = body.reshape(rows * (th + gutter), cols * (tw + gutter))
    return out


def _dense_strip(codes: np.ndarray, dead: np.ndarray | None, gutter: int) -> np.ndarray:
    f = codes.shape[0]
    cols = min(f, STRIP_ROW)
    rows = math.ceil(f / cols)
    cell = STRIP_CELL
    shape = (rows * (cell + 1) + 2 * gutter - 1, cols * (cell + 1) + 2 * gutter - 1)
    out = np.full(shape, GUTTER, dtype=np.uint8)
    indices = _CODE_INDEX[codes]
    for i in range(f):
        r, c = divmod(i, cols)
        y, x = gutter + r * (cell + 1), gutter + c * (cell + 1)
        dead_here = dead is not None and bool(dead[i])
        out[y : y + cell, x : x + cell] = _dead_tile(cell, cell) if dead_here else indices[i]
    return out


# matplotlib's "inferno" colormap at 256 levels, as uint8 RGB (base64 of 768 bytes): kept
# here so that drawing heatmaps needs neither matplotlib nor its import time.
_INFERNO = (
    "AAAEAQAFAQEGAQEIAgEKAgIMAgIOAwIQBAMSBAMUBQQXBgQZBwUbCAUdCQYfCgciCwckDAgmDQgpDgkrEAktEQow"
    "EgoyFAs0FQs3Fgs5GAw8GQw+GwxBHAxDHgxFHwxIIQxKIwxMJAxPJgxRKAtTKQtVKwtXLQtZLwpbMQpcMgpeNApf"
    "NglhOAliOQljOwlkPQllPglmQApnQgpoRApoRQppRwtqSQtqSgxrTAxrTQ1sTw1sUQ5sUg5tVA9tVQ9tVxBuWRBu"
    "WhFuXBJuXRJuXxNuYRNuYhRuZBVuZRVuZxZuaRZuahdubBhubRhubxlucRluchpudBpudRtudxxteBxteh1tfB1t"
    "fR5tfx5sgB9sgiBshCBrhSFrhyFriCJqiiJqjCNpjSNpjyRpkCVokiVokyZnlSZnlydmmCdmmihlmylknSlknypj"
    "oCpjoitioyxhpSxgpi1gqC5fqS5eqy9erTBdrjBcsDFbsTJaszJatDNZtjRYtzVXuTVWujZVvDdUvThTvzlSwDpR"
    "wTpQwztPxDxOxj1Nxz5MyD9LykBKy0FJzEJIzkNHz0RG0EVF0kZE00dD1EhC1UpB10s/2Ew+2U092k4821A73VE6"
    "3lI431M34FU24VY14lc041kz5Fox5Vww5l0v514u6GAt6WEr6mMq62Qp62Yo7Gcm7Wkl7mok72wj724h8G8g8XEf"
    "8XMd8nQc83Yb83gZ9HkY9XsX9X0V9n4U9oAT94IS94QQ+IUP+IcO+IkM+YsL+YwK+Y4J+pAI+pIH+pQH+5YG+5cG"
    "+5kG+5sG+50H/J8H/KEI/KMJ/KUK/KYM/KgN/KoP/KwR/K4S/LAU/LIW/LQY+7Ya+7gd+7of+7wh+74j+sAm+sIo"
    "+sQq+sYt+ccv+cky+cs1+M03+M8699E999NA9tVD9tdG9dlJ9dtM9N1P9N9T9OFW8+Na8+Vd8uZh8uhl8upp8ext"
    "8e1x8e918fF58vJ98vSC8/WG8/aK9PiO9fmS9vqW+Pua+fyd+v2h/P+k"
)
_LUT = np.frombuffer(base64.b64decode("".join(_INFERNO)), dtype=np.uint8).reshape(256, 3)


def heatmap_overlay(
    heat: np.ndarray, background: np.ndarray | None, alpha: float = 0.5, min_side: int = 64
) -> np.ndarray:
    """Colour a uint8 heat map `(h, w)` and blend it over `background` `(H, W, 3)`.

    The result is the background's size, upscaled (nearest) by a whole factor to at least
    `min_side` pixels on its longer side; the heat map is resized (bilinear) to it. Without a
    background the coloured heat map alone is returned, at the same kind of size.
    """
    base_h, base_w = background.shape[:2] if background is not None else heat.shape
    scale = max(1, math.ceil(min_side / max(base_h, base_w)))
    size = (base_w * scale, base_h * scale)
    resized = np.asarray(Image.fromarray(heat).resize(size, Image.Resampling.BILINEAR))
    coloured = _LUT.take(resized, axis=0)
    if background is None:
        return coloured
    if scale > 1:
        background = np.repeat(np.repeat(background, scale, axis=0), scale, axis=1)
    blend = (1.0 - alpha) * background.astype(np.float32) + alpha * coloured
    return np.round(blend).astype(np.uint8)


def render_images(
    *,
    maps: Mapping[str, np.ndarray],
    heat: Mapping[str, np.ndarray],
    dead: Mapping[str, np.ndarray],
    display: np.ndarray | None,
    distributions: Mapping[str, Sequence[np.ndarray]] | None = None,
    topk: Mapping[str, TopK] | None = None,
    samples: np.ndarray | None = None,
) -> dict[str, tuple[np.ndarray | PaletteImage, str]]:
    """Every image of one check as `{tag: (image, description)}`, tagged as `tags` says.

    Args:
        maps: per layer path, uint8 codes `(probes, H, W, F)` or `(probes, F)` from
            `normalize_maps` (the drawn filters).
        heat: per layer path, uint8 `(probes, h, w)` from `heat_maps` (absent for Dense).
        dead: per layer path, the boolean dead vector over all the layer's filters.
        display: the probes as uint8 RGB `(probes, H, W, 3)` under the heatmaps, or None
            (the heatmaps are drawn alone).
        distributions: per layer path, its histogram counts of the checks so far (columns
            of `signals.HistogramHistory`), drawn as the colorful dimension
            (`signals.distribution_image`).
        topk: per layer path, its top-k statistics samples per drawn filter, drawn with
            `samples` (the statistics samples as uint8 RGB) by `signals.topk_image`; none
            without `samples`.

    Filter grids are `PaletteImage`s (one byte a pixel); heatmaps are RGB arrays.
    """
    images: dict[str, tuple[np.ndarray | PaletteImage, str]] = {}
    for path, layer_maps in maps.items():
        layer_dead = dead[path]
        note = (
            f"Filters of layer `{path}`: {layer_maps.shape[-1]} of {layer_dead.size} drawn, each "
            "scaled to its own range; red crossed tiles are dead filters, magenta pixels "
            "non-finite."
        )
        for i in range(layer_maps.shape[0]):
            grid = PaletteImage(filter_grid_indices(layer_maps[i], layer_dead), PALETTE)
            images[tags.filters_tag(path, i)] = (grid, note)
        layer_heat = heat.get(path)
        if layer_heat is None:
            continue
        for i in range(layer_heat.shape[0]):
            background = None if display is None else display[i]
            images[tags.heatmap_tag(path, i)] = (
                heatmap_overlay(layer_heat[i], background),
                f"Mean activation over the channels of `{path}` over probe {i}.",
            )
    for path, history in (distributions or {}).items():
        images[tags.distribution_tag(path)] = (
            distribution_image(history, _LUT),
            f"Colorful dimension of `{path}` (fastai): columns are the checks so far (past "
            "512, each the mean of 2^j consecutive checks), rows the histogram bins (symmetric "
            "log bins, largest values at the top), brightness log(1 + count). Collapse, "
            "saturation and dying show as shapes.",
        )
    if samples is not None:
        for path, chosen in (topk or {}).items():
            images[tags.topk_tag(path)] = (
                topk_image(chosen, samples),
                f"What each drawn filter of `{path}` responds to: per filter (left to right, "
                f"top to bottom), the {chosen.indices.shape[1]} statistics samples whose "
                "activation peaks highest, highest first, the peak outlined in green.",
            )
    return images
