"""The pictures of one check, tagged: which watched layers are drawn, and every image as
`{tag: (image, description)}` for the writer (tiled on the writer's thread)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from actwatch.events import tags
from actwatch.render.png import PaletteImage, quantized
from actwatch.render.tiles import (
    INFERNO_LUT,
    PALETTE,
    TopK,
    distribution_image,
    filter_grid_indices,
    heatmap_overlay,
    topk_image,
)

__all__ = ["DRAW_ALL_UP_TO", "default_drawn", "render_images"]


#: A model with at most this many watched layers has every one of them drawn by default.
DRAW_ALL_UP_TO = 16


def default_drawn(
    shapes: Sequence[tuple[str, tuple[int | None, ...]]],
    roles: Mapping[str, str] | None = None,
) -> list[str]:
    """The watched layers drawn by default, from `(path, channels-last output shape)` in
    network order (shapes without the batch axis), and each path's transformer `roles`
    (`"attention"`, `"block"`, `"mlp"`; absent or `""` for other layers).

    Every layer when there are at most `DRAW_ALL_UP_TO` (the demo's 10 layers, as the seed
    article shows conv1 to conv5). Beyond, the first watched layer and the last one of each
    spatial resolution: the picture of each stage of the network as it leaves that stage.
    Maps of 1x1 (squeeze-and-excitation gates) are not a stage; Dense outputs count as one.
    ResNet50 at 224 px (50 watched layers) draws 5: `conv1_relu` (112 px), then the output
    of each of its four stages (56, 28, 14 and 7 px).

    A transformer's layers all have one shape (tokens, width), so they are not stages: of
    them the first and the last attention layer and the first and the last block output are
    drawn (MLP units are not: a block's output shows them), the stages rule taking the other
    layers. ViT-B/16 (37 watched layers) draws 5: the patch embedding, then blocks 0 and 11
    and their attention layers.
    """
    if len(shapes) <= DRAW_ALL_UP_TO:
        return [path for path, _ in shapes]
    roles = roles or {}
    chosen: set[str] = set()
    for role in ("attention", "block"):
        found = [path for path, _ in shapes if roles.get(path) == role]
        chosen.update(found[:1] + found[-1:])
    others = [(path, shape) for path, shape in shapes if not roles.get(path)]
    last: dict[tuple[int | None, ...], str] = {}
    for path, shape in others:
        spatial = tuple(shape[:-1])
        if spatial and all(d == 1 for d in spatial):
            continue
        last[spatial] = path
    if others:
        chosen.update({others[0][0], *last.values()})
    return [path for path, _ in shapes if path in chosen]


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
            of `actwatch.events.histograms.HistogramHistory`), drawn as the colorful dimension
            (`actwatch.render.tiles.distribution_image`).
        topk: per layer path, its top-k statistics samples per drawn filter, drawn with
            `samples` (the statistics samples as uint8 RGB) by
            `actwatch.render.tiles.topk_image`; none without `samples`.

    Filter grids are `PaletteImage`s (one byte a pixel); heatmaps are RGB arrays, or from
    96x96 pixels `PaletteImage`s of their 256 colours (`actwatch.render.png.quantized`).
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
                quantized(heatmap_overlay(layer_heat[i], background)),
                f"Mean activation over the channels of `{path}` over probe {i}.",
            )
    for path, history in (distributions or {}).items():
        images[tags.distribution_tag(path)] = (
            distribution_image(history, INFERNO_LUT),
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
