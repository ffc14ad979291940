"""Generic matplotlib drawing: image grids, tables, one check's filter grids and heatmaps.

Shared by `report` (whose figures of runs read back are in `actwatch.report.figures`),
`notebook` and `inspection` (one check of a model, as plain arrays: nothing here imports
Keras). Figures are built with `matplotlib.figure.Figure` (no pyplot, no global state) and
drawn to PNG with the Agg backend by `figure_png`. Texts from logs or models go through
`plain`, so a `$` in a layer name cannot start matplotlib's math mode.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from actwatch.render.tiles import filter_grid, heatmap_overlay

__all__ = [
    "LEGEND_LAYERS",
    "colours",
    "figure_png",
    "filters_figure",
    "heatmaps_figure",
    "image_grid",
    "plain",
    "plot_lines",
    "steps_figure",
    "table_figure",
]


def plain(text: str) -> str:
    """`text` for a matplotlib label: `$` would otherwise start math mode."""
    return text.replace("$", r"\$")


def figure_png(figure: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a matplotlib Figure, drawn with the Agg backend."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


# Grids of images and tables ----------------------------------------------------------------


def image_grid(
    panels: Sequence[tuple[str, np.ndarray]],
    *,
    columns: int,
    tile: tuple[float, float],
    title: str | None = None,
    margin: tuple[float, float] = (0.0, 0.0),
) -> Figure:
    """Images in rows of `columns`, each titled, `tile` inches (width, height) each.

    `margin` inches are added to the figure's width and height (room for `title`).
    """
    columns = max(1, min(columns, len(panels)))
    rows = max(1, math.ceil(len(panels) / columns))
    size = (tile[0] * columns + margin[0], tile[1] * rows + margin[1])
    figure = Figure(figsize=size, layout="constrained")
    for i, (label, image) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, i + 1)
        axes.imshow(image, interpolation="nearest")
        axes.set_title(plain(label), fontsize=9)
        axes.set_axis_off()
    if title is not None:
        figure.suptitle(plain(title), fontsize=10)
    return figure


def table_figure(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str) -> Figure:
    """A table with a grey header row; the first column left-aligned, the others right."""
    figure = Figure(figsize=(10, 0.5 + 0.24 * (len(rows) + 1)), layout="constrained")
    axes = figure.add_subplot(1, 1, 1)
    axes.set_axis_off()
    cells = [[plain(str(c)) for c in row] for row in rows]
    table = axes.table(cellText=cells, colLabels=list(headers), loc="center", cellLoc="right")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.auto_set_column_width(list(range(len(headers))))
    for (row, col), cell in table.get_celld().items():
        if row == 0:
            cell.set_facecolor("#eeeeee")
        if col == 0:
            cell.set_text_props(ha="left")
    axes.set_title(plain(title), fontsize=10)
    return figure


# One check of a model (notebook functions, `actwatch inspect`) -----------------------------


def filters_figure(
    maps: Mapping[str, np.ndarray],
    dead: Mapping[str, np.ndarray],
    probe: int = 0,
    columns: int = 3,
) -> Figure:
    """One filter grid per layer for sample `probe`, dead filters crossed in red.

    Args:
        maps: per layer path, uint8 codes `(probes, H, W, F)` or `(probes, F)` of the drawn
            filters (`CheckResult.maps`).
        dead: per layer path, a boolean vector over all its filters (`LayerStats.dead`).
        probe: the sample drawn.
        columns: grids per row.
    """
    panels = []
    for path, codes in maps.items():
        mask = np.asarray(dead[path], dtype=bool)
        title = f"{path}: {codes.shape[-1]}/{mask.size} filters, {int(mask.sum())} dead"
        panels.append((title, filter_grid(codes[probe], mask)))
    return image_grid(panels, columns=columns, tile=(4.0, 4.0))


def heatmaps_figure(
    heat: Mapping[str, np.ndarray],
    display: np.ndarray | None,
    probe: int = 0,
    columns: int = 4,
) -> Figure:
    """Each layer's mean activation over channels for sample `probe`, over its picture.

    Args:
        heat: per layer path, uint8 heat maps `(probes, h, w)` (`CheckResult.heat`).
        display: the probes' pictures `(probes, H, W, 3)` uint8, or None (heat maps alone).
        probe: the sample drawn.
        columns: heatmaps per row.
    """
    background = None if display is None else display[probe]
    panels = [(path, heatmap_overlay(layer[probe], background)) for path, layer in heat.items()]
    return image_grid(panels, columns=columns, tile=(3.0, 3.0))


# Curves and grids of runs read back (`actwatch report`) -------------------------------------


#: Beyond this many layers, curves are coloured by depth (a colour bar, no legend).
LEGEND_LAYERS = 20


def colours(layers: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """One colour per layer, the same in every run: distinct colours for a few layers, a
    colour by depth (viridis, first to last) for many."""
    if len(layers) > LEGEND_LAYERS:
        depth = colormaps["viridis"]
        last = max(len(layers) - 1, 1)
        return {layer: tuple(depth(i / last)) for i, layer in enumerate(layers)}
    cmap = colormaps["tab10" if len(layers) <= 10 else "tab20"]
    return {layer: tuple(cmap(i % cmap.N)) for i, layer in enumerate(layers)}


def plot_lines(
    axes: Axes,
    lines: Sequence[tuple[str, Sequence[int], Sequence[float]]],
    layer_colours: Mapping[str, tuple[float, ...]],
    *,
    markers: bool = False,
    linewidth: float | None = None,
    alpha: float | None = None,
) -> None:
    """One line per `(layer, steps, values)` with steps, in the layer's colour (grey for a
    layer without one), labelled with its name; dots on lines of fewer than 40 points when
    `markers`. `linewidth` and `alpha` default to matplotlib's."""
    for layer, steps, values in lines:
        if len(steps):
            axes.plot(
                steps,
                values,
                marker="." if markers and len(steps) < 40 else None,
                color=layer_colours.get(layer, (0.3, 0.3, 0.3, 1.0)),
                label=plain(layer),
                linewidth=linewidth,
                alpha=alpha,
            )


def steps_figure(layer: str, pngs: Sequence[tuple[str, int, bytes]]) -> Figure:
    """One layer's filter grids (PNG bytes) side by side, titled `"<label> check: step N"`."""
    images = [np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for _, _, png in pngs]
    h = max(i.shape[0] for i in images)
    w = max(i.shape[1] for i in images)
    scale = min(3.6 / max(w / 100, 0.1), 3.6 / max(h / 100, 0.1), 3.0)
    tile = (max(w / 100 * scale, 1.6), max(h / 100 * scale, 1.2))
    panels = [
        (f"{label} check: step {step}", image)
        for (label, step, _), image in zip(pngs, images, strict=True)
    ]
    return image_grid(panels, columns=len(panels), tile=tile, title=layer, margin=(0.4, 0.6))
