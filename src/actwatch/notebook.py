"""One-off looks at any model, for notebooks: the callback's own extractor, statistics and grids.

```python
acts = actwatch.get_activations(model, x[:4])          # {layer path: array}
stats = actwatch.activation_stats(model, x[:256])      # {layer path: LayerStats}
actwatch.plot_filters(model, x[:1])                    # matplotlib Figure
actwatch.plot_heatmaps(model, ["cat.jpg"], preprocess=lambda x: x / 255)
```
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from matplotlib.figure import Figure

from .extract import Extractor, resolve_layers
from .grids import filter_grid, heatmap_overlay
from .pipeline import CheckPipeline
from .probes import ProbeBatch, prepare_probes, read_probe_source
from .stats import LayerStats

__all__ = ["activation_stats", "get_activations", "plot_filters", "plot_heatmaps"]

Preprocess = Callable[[np.ndarray], Any] | None


def _batch(model: keras.Model, x: Any, preprocess: Preprocess) -> ProbeBatch:
    source = read_probe_source(x, "x")
    inputs = model.inputs
    return prepare_probes(
        source,
        [tuple(t.shape) for t in inputs],
        [t.name for t in inputs],
        [str(t.dtype) for t in inputs],
        preprocess,
    )


def get_activations(
    model: keras.Model, x: Any, layers: Any = None, *, preprocess: Preprocess = None
) -> dict[str, np.ndarray]:
    """Outputs of the watched layers for `x`, in one inference-mode forward pass.

    Args:
        model: a Functional or Sequential Keras model (nested models included).
        x: a numpy batch, image paths or PIL images, or a dict/list for multi-input models.
        layers: as in `ActivationMonitor`; defaults to every convolution, pooling and
            activation layer.
        preprocess: applied to the batch before the model, e.g. `lambda x: x / 255.0`.

    Returns:
        `{layer path: numpy array}` in model order, with the layers' own shapes and dtypes.
    """
    watched = resolve_layers(model, layers)
    batch = _batch(model, x, preprocess)
    run = Extractor(model, watched).compile(lambda outs: {str(i): o for i, o in enumerate(outs)})
    arrays = run(batch.feed())
    return {w.path: arrays[str(i)] for i, w in enumerate(watched)}


def activation_stats(
    model: keras.Model,
    x: Any,
    layers: Any = None,
    *,
    dormant_threshold: float = 0.025,
    preprocess: Preprocess = None,
) -> dict[str, LayerStats]:
    """Per-layer statistics (zero fraction, dead and dormant filters, Hoyer, mean) for `x`."""
    watched = resolve_layers(model, layers)
    batch = _batch(model, x, preprocess)
    pipeline = CheckPipeline(model, watched, dormant_threshold=dormant_threshold, draw=False)
    return pipeline.run(batch.feed()).stats


def _figure(panels: list[tuple[str, np.ndarray]], columns: int, size: float) -> Figure:
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(size * columns, size * rows), layout="constrained")
    for i, (title, image) in enumerate(panels):
        axes = figure.add_subplot(rows, columns, i + 1)
        axes.imshow(image, interpolation="nearest")
        axes.set_title(title, fontsize=9)
        axes.set_axis_off()
    return figure


def plot_filters(
    model: keras.Model,
    x: Any,
    layers: Any = None,
    *,
    probe: int = 0,
    max_filters: int = 64,
    preprocess: Preprocess = None,
    columns: int = 3,
) -> Figure:
    """A matplotlib Figure with one filter grid per layer for probe `probe` of `x`.

    Dead filters (judged on all of `x`) are drawn as red crossed tiles, as in TensorBoard.
    """
    watched = resolve_layers(model, layers)
    batch = _batch(model, x, preprocess)
    _check_probe(probe, batch.size)
    result = CheckPipeline(model, watched, max_filters=max_filters).run(batch.feed())
    panels = []
    for path, maps in result.maps.items():
        s = result.stats[path]
        title = f"{path}: {maps.shape[-1]}/{s.filters} filters, {s.dead_count} dead"
        panels.append((title, filter_grid(maps[probe], s.dead)))
    return _figure(panels, columns, 4.0)


def plot_heatmaps(
    model: keras.Model,
    x: Any,
    layers: Any = None,
    *,
    probe: int = 0,
    preprocess: Preprocess = None,
    columns: int = 4,
) -> Figure:
    """A matplotlib Figure: each layer's mean activation over channels, over probe `probe`."""
    watched = [w for w in resolve_layers(model, layers) if w.rank > 2]
    batch = _batch(model, x, preprocess)
    _check_probe(probe, batch.size)
    result = CheckPipeline(model, watched).run(batch.feed())
    background = None if batch.display is None else batch.display[probe]
    panels = [(path, heatmap_overlay(heat[probe], background)) for path, heat in result.heat.items()]
    return _figure(panels, columns, 3.0)


def _check_probe(probe: int, size: int) -> None:
    if not 0 <= probe < size:
        raise ValueError(
            f"Invalid value for argument `probe`: {probe} is out of range for a batch of {size}. "
            f"Pass 0 to {size - 1}."
        )
