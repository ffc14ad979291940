"""Tiling uint8 maps into pictures with numpy and Pillow: filter grids, heatmaps, strips.

Pixel code of the uint8 maps (made on the device by `actwatch.check.maps`): 0..254 is the
filter's own range (black = its minimum); 255 marks a non-finite value (drawn magenta). A
constant map is drawn black when its value is <= 0 and mid-gray otherwise. Nothing here
encodes or writes files.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = [
    "NONFINITE",
    "PALETTE",
    "TopK",
    "colorful_dimension",
    "distribution_image",
    "filter_grid",
    "filter_grid_indices",
    "grid_layout",
    "heatmap_overlay",
    "topk_image",
]


NONFINITE = 255
GUTTER_RGB = (32, 64, 96)
DEAD_RGB = (150, 24, 24)
NONFINITE_RGB = (255, 0, 255)
MIN_TILE = 24  # small maps are upscaled (nearest) to at least this many pixels
STRIP_CELL = 8  # pixels per unit in Dense strips
STRIP_ROW = 32  # units per row in Dense strips


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


INFERNO_LUT = np.frombuffer(base64.b64decode("".join(_INFERNO)), dtype=np.uint8).reshape(256, 3)


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
    coloured = INFERNO_LUT.take(resized, axis=0)
    if background is None:
        return coloured
    if scale > 1:
        background = np.repeat(np.repeat(background, scale, axis=0), scale, axis=1)
    blend = (1.0 - alpha) * background.astype(np.float32) + alpha * coloured
    return np.round(blend).astype(np.uint8)


def colorful_dimension(history: Sequence[np.ndarray]) -> tuple[np.ndarray, int]:
    """fastai's "colorful dimension": brightness `log(1 + count)` of bins (rows) x checks.

    `history` holds one count vector over `HISTOGRAM_EDGES`' bins per check, oldest first.
    Returns the `(rows, checks)` float image scaled to 0..1 (the largest bin at the top) and
    the index of the bin of its first row; only the bins non-empty at some check are kept.
    """
    matrix = np.stack([np.asarray(h, dtype=np.float64) for h in history], axis=1)
    used = np.flatnonzero(matrix.sum(axis=1) > 0)
    if used.size == 0:
        return np.zeros((1, matrix.shape[1])), 0
    lo, hi = int(used[0]), int(used[-1])
    body = np.log1p(matrix[lo : hi + 1])[::-1]
    top = float(body.max())
    return (body / top if top > 0 else body), hi


def distribution_image(history: Sequence[np.ndarray], lut: np.ndarray) -> np.ndarray:
    """The colorful dimension as an RGB uint8 image for TensorBoard: `lut` colours, each
    check a column of at least 1 and at most 8 pixels, each bin a row of 3."""
    body, _ = colorful_dimension(history)
    checks = body.shape[1]
    width = max(1, min(8, 512 // max(checks, 1)))
    codes = np.round(body * 255).astype(np.uint8)
    image: np.ndarray = lut.take(codes, axis=0)
    return image.repeat(3, axis=0).repeat(width, axis=1)


@dataclass(frozen=True)
class TopK:
    """One layer's top-k samples per drawn filter (host), from `reduce_topk`.

    `indices[f, j]` is the sample with the j-th highest peak of filter `f`, `positions[f, j]`
    the flattened position of that peak in the layer's `spatial` shape (channels last, no
    batch or channel axis; `()` for Dense outputs), `values[f, j]` the peak.
    """

    indices: np.ndarray
    positions: np.ndarray
    values: np.ndarray
    spatial: tuple[int, ...]

    def peak_cells(self) -> np.ndarray:
        """`(F, k, 2)` row and column of each peak in the layer's map (0, 0 for Dense)."""
        spatial = self.spatial
        if len(spatial) == 0:
            return np.zeros((*self.positions.shape, 2), dtype=np.int64)
        if len(spatial) == 1:
            rows = np.zeros_like(self.positions)
            return np.stack([rows, self.positions], axis=-1).astype(np.int64)
        h_w = spatial[-2:]
        inner = int(np.prod(spatial[-2:]))
        flat = self.positions % inner  # 3-D maps: the position within its depth slice
        return np.stack(np.unravel_index(flat, h_w), axis=-1).astype(np.int64)


THUMB = 32  # thumbnail side in pixels


_MARK_RGB = np.array([0, 255, 0], dtype=np.uint8)


_GUTTER_RGB = np.array([32, 64, 96], dtype=np.uint8)


_EMPTY_RGB = np.array([90, 90, 90], dtype=np.uint8)


def _thumbnails(display: np.ndarray, indices: np.ndarray) -> dict[int, np.ndarray]:
    """The pictures of the samples `indices` (only those: `stats_data` may hold hundreds)
    resized (bilinear) to `THUMB` x `THUMB`, by sample index."""
    return {
        int(i): np.asarray(
            Image.fromarray(display[int(i)]).resize((THUMB, THUMB), Image.Resampling.BILINEAR)
        )
        for i in np.unique(indices)
    }


def _mark(tile: np.ndarray, row: int, col: int, spatial: tuple[int, ...]) -> None:
    """Draw a square outline around the input area of map cell `(row, col)` on `tile`."""
    h, w = (1, spatial[0]) if len(spatial) == 1 else spatial[-2:]
    cy, cx = (row + 0.5) * THUMB / h, (col + 0.5) * THUMB / w
    half = max(3.0, THUMB / max(h, w) / 2)
    y0, y1 = int(max(0, cy - half)), int(min(THUMB - 1, cy + half))
    x0, x1 = int(max(0, cx - half)), int(min(THUMB - 1, cx + half))
    tile[y0 : y1 + 1, [x0, x1]] = _MARK_RGB
    tile[[y0, y1], x0 : x1 + 1] = _MARK_RGB


def topk_image(topk: TopK, display: np.ndarray, gutter: int = 4) -> np.ndarray:
    """One RGB image of a layer's top-k strips: per drawn filter, its k samples side by side
    (highest peak first), the peak's cell outlined in green (no mark for Dense outputs);
    filters in a near-square grid, left to right, top to bottom. A filter without a finite
    value gets grey tiles.
    """
    f, k = topk.indices.shape
    shown = topk.indices[np.isfinite(topk.values)]
    thumbs = _thumbnails(display, shown)
    cells = topk.peak_cells()
    cols = max(1, math.ceil(math.sqrt(f * THUMB / max(k * THUMB, 1))))
    rows = math.ceil(f / cols)
    cell_w, cell_h = k * (THUMB + 1) - 1 + gutter, THUMB + gutter
    out = np.empty((rows * cell_h + gutter, cols * cell_w + gutter, 3), dtype=np.uint8)
    out[:] = _GUTTER_RGB
    for i in range(f):
        r, c = divmod(i, cols)
        y, x = gutter + r * cell_h, gutter + c * cell_w
        for j in range(k):
            left = x + j * (THUMB + 1)
            if not np.isfinite(topk.values[i, j]):
                out[y : y + THUMB, left : left + THUMB] = _EMPTY_RGB
                continue
            tile = thumbs[int(topk.indices[i, j])].copy()
            if topk.spatial:
                _mark(tile, int(cells[i, j, 0]), int(cells[i, j, 1]), topk.spatial)
            out[y : y + THUMB, left : left + THUMB] = tile
    return out
