"""Filter grids and heatmaps: activations as pictures.

The device part (`normalize_maps`, `heat_maps`) scales each filter map of each probe to its
own range and converts it to uint8 on the device, so only small uint8 arrays reach the host.
The host part (`filter_grid`, `heatmap_overlay`) tiles them into RGB images with numpy and
Pillow. Nothing here encodes or writes files.

Pixel code of the uint8 maps: 0..254 is the filter's own range (black = its minimum); 255
marks a non-finite value (drawn magenta). A constant map is drawn black when its value is
<= 0 and mid-gray otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from keras import ops
from PIL import Image

__all__ = [
    "NONFINITE",
    "filter_grid",
    "grid_layout",
    "heat_maps",
    "heatmap_overlay",
    "normalize_maps",
]

NONFINITE = 255
GUTTER_RGB = (32, 64, 96)
DEAD_RGB = (150, 24, 24)
NONFINITE_RGB = (255, 0, 255)
MIN_TILE = 24  # small maps are upscaled (nearest) to at least this many pixels
STRIP_CELL = 8  # pixels per unit in Dense strips
STRIP_ROW = 32  # units per row in Dense strips


def normalize_maps(x: Any) -> Any:
    """Scale maps to uint8 codes over their positions.

    `x` is float32 of shape `(N, H, W, F)` (each filter map scaled over H and W) or `(N, F)`
    (Dense: each sample scaled over its F units). Returns uint8 of the same shape.
    """
    axes = (1, 2) if len(x.shape) == 4 else (1,)
    finite = ops.isfinite(x)
    lo = ops.min(ops.where(finite, x, ops.full_like(x, np.inf)), axis=axes, keepdims=True)
    hi = ops.max(ops.where(finite, x, ops.full_like(x, -np.inf)), axis=axes, keepdims=True)
    spread = hi - lo
    varied = spread > 0.0
    scaled = (x - lo) / ops.where(varied, spread, ops.ones_like(spread)) * 254.0
    flat = ops.where(hi > 0.0, ops.full_like(x, 127.0), ops.zeros_like(x))
    value = ops.where(varied, scaled, flat)
    value = ops.where(finite, ops.clip(ops.round(value), 0.0, 254.0), float(NONFINITE))
    return ops.cast(value, "uint8")


def heat_maps(x: Any) -> Any:
    """Mean over channels of `(N, H, W, C)`, scaled per probe to uint8 0..255."""
    finite = ops.isfinite(x)
    m = ops.mean(ops.where(finite, x, ops.zeros_like(x)), axis=-1)
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


def _paint(codes: np.ndarray) -> np.ndarray:
    """uint8 codes (..., ) -> RGB (..., 3): gray levels, magenta for non-finite."""
    gray = (codes.astype(np.uint16) * 255 // 254).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    rgb[codes == NONFINITE] = NONFINITE_RGB
    return rgb


def _dead_tile(h: int, w: int) -> np.ndarray:
    tile = np.empty((h, w, 3), dtype=np.uint8)
    tile[:] = DEAD_RGB
    # A light diagonal cross, so a dead filter reads as "crossed out" in any colour scheme.
    n = max(h, w)
    idx = np.arange(n)
    rows, cols = idx * h // n, idx * w // n
    tile[rows, cols] = (255, 160, 160)
    tile[rows, w - 1 - cols] = (255, 160, 160)
    return tile


def filter_grid(maps: np.ndarray, dead: np.ndarray | None = None, gutter: int = 2) -> np.ndarray:
    """Tile one probe's filter maps into one RGB uint8 image.

    Args:
        maps: uint8 codes from `normalize_maps` for one probe: `(H, W, F)` for spatial
            outputs (a 1-D output is `(1, L, F)`, drawn as strips), or `(F,)` for Dense
            outputs, drawn as a strip of cells, 32 units a row.
        dead: optional boolean vector over at least the F drawn filters; dead ones are drawn
            as red tiles with a cross.
        gutter: pixels between tiles.

    Returns:
        `(rows * (h + gutter) + gutter, cols * (w + gutter) + gutter, 3)` uint8, where `h, w`
        are the tile sizes after upscaling small maps to at least `MIN_TILE` pixels.
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
    out = np.empty((rows * (th + gutter) + gutter, cols * (tw + gutter) + gutter, 3), np.uint8)
    out[:] = GUTTER_RGB
    tiles = _paint(maps)  # (h, w, f, 3)
    tiles = np.repeat(np.repeat(tiles, sy, axis=0), sx, axis=1)
    for i in range(f):
        r, c = divmod(i, cols)
        y, x = gutter + r * (th + gutter), gutter + c * (tw + gutter)
        if dead is not None and bool(dead[i]):
            out[y : y + th, x : x + tw] = _dead_tile(th, tw)
        else:
            out[y : y + th, x : x + tw] = tiles[:, :, i]
    return out


def _dense_strip(codes: np.ndarray, dead: np.ndarray | None, gutter: int) -> np.ndarray:
    f = codes.shape[0]
    cols = min(f, STRIP_ROW)
    rows = math.ceil(f / cols)
    cell = STRIP_CELL
    shape = (rows * (cell + 1) + 2 * gutter - 1, cols * (cell + 1) + 2 * gutter - 1, 3)
    out = np.empty(shape, dtype=np.uint8)
    out[:] = GUTTER_RGB
    colours = _paint(codes)
    for i in range(f):
        r, c = divmod(i, cols)
        y, x = gutter + r * (cell + 1), gutter + c * (cell + 1)
        dead_here = dead is not None and bool(dead[i])
        out[y : y + cell, x : x + cell] = _dead_tile(cell, cell) if dead_here else colours[i]
    return out


def _colormap_lut(name: str = "inferno") -> np.ndarray:
    from matplotlib import colormaps

    lut = colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3]
    return np.round(lut * 255.0).astype(np.uint8)


_LUT: np.ndarray | None = None


def heatmap_overlay(
    heat: np.ndarray, background: np.ndarray | None, alpha: float = 0.5, min_side: int = 128
) -> np.ndarray:
    """Colour a uint8 heat map `(h, w)` and blend it over `background` `(H, W, 3)`.

    The result is the background's size, upscaled (nearest) by a whole factor to at least
    `min_side` pixels on its longer side; the heat map is resized (bilinear) to it. Without a
    background the coloured heat map alone is returned, at the same kind of size.
    """
    global _LUT
    if _LUT is None:
        _LUT = _colormap_lut()
    base_h, base_w = background.shape[:2] if background is not None else heat.shape
    scale = max(1, math.ceil(min_side / max(base_h, base_w)))
    size = (base_w * scale, base_h * scale)
    resized = np.asarray(Image.fromarray(heat).resize(size, Image.Resampling.BILINEAR))
    coloured = _LUT[resized]
    if background is None:
        return coloured
    if scale > 1:
        background = np.repeat(np.repeat(background, scale, axis=0), scale, axis=1)
    blend = (1.0 - alpha) * background.astype(np.float32) + alpha * coloured
    return np.round(blend).astype(np.uint8)
