"""One-off looks at any model, for notebooks: the callback's own extractor, statistics and grids.

```python
acts = actwatch.get_activations(model, x[:4])          # {layer path: array}
grads = actwatch.get_gradients(model, x_train, y_train)  # {layer path: dLoss/d output}
stats = actwatch.activation_stats(model, x[:256])      # {layer path: LayerStats}
actwatch.plot_filters(model, x[:1])                    # matplotlib Figure
actwatch.plot_heatmaps(model, ["cat.jpg"], preprocess=lambda x: x / 255)
```
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from matplotlib.figure import Figure

from actwatch.check.extract import Extractor
from actwatch.check.layers import WatchedLayer, resolve_layers
from actwatch.check.pipeline import CheckPipeline, CheckResult
from actwatch.check.probes import (
    ProbeBatch,
    check_preprocess,
    model_inputs,
    prepare_probes,
    read_probe_source,
)
from actwatch.check.stats import LayerStats
from actwatch.render.figures import filters_figure, heatmaps_figure

__all__ = ["activation_stats", "get_activations", "get_gradients", "plot_filters", "plot_heatmaps"]

Preprocess = Callable[[np.ndarray], Any] | None


def _batch(model: keras.Model, x: Any, preprocess: Preprocess) -> ProbeBatch:
    source = read_probe_source(x, "x")
    check_preprocess(preprocess, [source])
    return prepare_probes(source, model_inputs(model), preprocess)


def get_activations(
    model: keras.Model,
    x: Any,
    layers: Any = None,
    *,
    preprocess: Preprocess = None,
    inference: bool = False,
) -> dict[str, np.ndarray]:
    """Outputs of the watched layers for `x`, in one forward pass as training sees it
    (BatchNormalization on `x`'s own statistics, dropout off; nothing written), as a check,
    or with `inference=True` as `predict` sees it.

    Args:
        model: a Functional or Sequential Keras model (nested models included).
        x: a numpy batch, image paths or PIL images, or a dict/list for multi-input models.
        layers: as in `ActivationMonitor`; defaults to every convolution, pooling and
            activation layer.
        preprocess: applied to images loaded from files or PIL images (raw 0-255 pixels)
            before the model, e.g. `lambda x: x / 255.0`; arrays are used as given.
        inference: the inference view instead: BatchNormalization on its moving statistics,
            what an exported model computes. Defaults to False (the training view; a
            BatchNormalization with fewer than 2 values per channel in `x`, such as one
            sample after global pooling, falls back to inference mode, said at WARNING).

    Returns:
        `{layer path: numpy array}` in model order, with the layers' own shapes and dtypes.
    """
    batch = _batch(model, x, preprocess)
    watched = resolve_layers(model, layers, batch.feed())
    extractor = Extractor(model, watched, inference=_flag(inference))
    run = extractor.make_runner(lambda outputs: list(outputs))
    arrays = run(batch.feed())
    return {w.path: array for w, array in zip(watched, arrays, strict=True)}


def get_gradients(
    model: keras.Model,
    x: Any,
    y: Any,
    layers: Any = None,
    *,
    sample_weight: Any = None,
    preprocess: Preprocess = None,
    inference: bool = False,
) -> dict[str, np.ndarray]:
    """The compiled loss's gradient with respect to each watched layer's output (keract's
    `get_gradients_of_activations`), in one compiled forward and backward pass (the
    callback's own), in the training pass (BatchNormalization on `x`'s own statistics).

    Args:
        model: a model compiled with a loss (`model.compile(loss=...)`).
        x: the inputs, as in `get_activations`.
        y: the labels, as `fit` takes them.
        layers: as in `ActivationMonitor`; defaults to every convolution, pooling and
            activation layer.
        sample_weight: optional per-sample weights of the loss.
        preprocess: as in `get_activations`.
        inference: as in `get_activations`: the inference view's gradients.

    Returns:
        `{layer path: numpy array}` in model order, each of its layer's output shape: the
        gradient of the loss (the mean over the batch, as in training) by that output.
    """
    batch = _batch(model, x, preprocess)
    watched = resolve_layers(model, layers, batch.feed())
    labels = keras.tree.map_structure(np.asarray, y)
    weight = None if sample_weight is None else np.asarray(sample_weight)
    extractor = Extractor(model, watched, gradients=True, inference=_flag(inference))
    run = extractor.make_gradient_runner(lambda _, grads: grads)
    grads = run(batch.feed(), labels, weight)
    return {w.path: array for w, array in zip(watched, grads, strict=True)}


def activation_stats(
    model: keras.Model,
    x: Any,
    layers: Any = None,
    *,
    dormant_threshold: float = 0.025,
    preprocess: Preprocess = None,
    inference: bool = False,
) -> dict[str, LayerStats]:
    """Per-layer statistics (zero fraction, dead and dormant filters, Hoyer, mean) for `x`,
    and the signals of `actwatch.check.signals`: `rms`, `channel_mean_sq`, `channel_var`,
    `max_abs`, `outlier_ratio`, `erank`, `srank` and the activation `histogram` (counts over
    `actwatch.events.histograms.HISTOGRAM_EDGES`) of each `LayerStats`; `scalars()` lists them
    all. In the training view, or with `inference=True` the inference one (see
    `get_activations`)."""
    batch = _batch(model, x, preprocess)
    watched = resolve_layers(model, layers, batch.feed())
    pipeline = CheckPipeline(
        model, watched, dormant_threshold=dormant_threshold, draw=False, inference=_flag(inference)
    )
    return pipeline.run(batch.feed()).stats


def look(
    model: keras.Model,
    watched: list[WatchedLayer],
    x: Any,
    *,
    preprocess: Preprocess = None,
    max_filters: int = 64,
    probe: int = 0,
    inference: bool = False,
) -> tuple[ProbeBatch, CheckResult]:
    """One check of `x` through `watched`: the batch (with its pictures) and what came back.

    Statistics are judged on all of `x`; maps and heatmaps are drawn for every sample of it.
    `probe` is checked against the batch size before the model runs; `inference` as in
    `get_activations`.
    """
    batch = _batch(model, x, preprocess)
    _check_probe(probe, batch.size)
    pipeline = CheckPipeline(model, watched, max_filters=max_filters, inference=_flag(inference))
    result = pipeline.run(batch.feed())
    return batch, result


def plot_filters(
    model: keras.Model,
    x: Any,
    layers: Any = None,
    *,
    probe: int = 0,
    max_filters: int = 64,
    preprocess: Preprocess = None,
    columns: int = 3,
    inference: bool = False,
) -> Figure:
    """A matplotlib Figure with one filter grid per layer for probe `probe` of `x`.

    Dead filters (judged on all of `x`) are drawn as red crossed tiles, as in TensorBoard.
    `inference=True` draws the inference view (see `get_activations`).
    """
    watched = resolve_layers(model, layers)
    _, result = look(
        model,
        watched,
        x,
        preprocess=preprocess,
        max_filters=max_filters,
        probe=probe,
        inference=inference,
    )
    dead = {path: stats.dead for path, stats in result.stats.items()}
    return filters_figure(result.maps, dead, probe, columns)


def plot_heatmaps(
    model: keras.Model,
    x: Any,
    layers: Any = None,
    *,
    probe: int = 0,
    preprocess: Preprocess = None,
    columns: int = 4,
    inference: bool = False,
) -> Figure:
    """A matplotlib Figure: each layer's mean activation over channels, over probe `probe`.

    Layers without spatial outputs (Dense) are left out. `inference=True` draws the
    inference view (see `get_activations`).
    """
    chosen = resolve_layers(model, layers)
    watched = [w for w in chosen if w.rank > 2]
    if not watched:
        raise ValueError(
            "Invalid value for argument `layers`: heatmaps need outputs with positions, "
            "(batch, height, width, channels) or (batch, length, channels), but "
            f"{[w.path for w in chosen]} have none. Pass convolution or pooling layers."
        )
    batch, result = look(model, watched, x, preprocess=preprocess, probe=probe, inference=inference)
    return heatmaps_figure(result.heat, batch.display, probe, columns)


def _flag(inference: Any) -> bool:
    """`inference` as a bool (Python's or numpy's); a TypeError otherwise."""
    if not isinstance(inference, (bool, np.bool_)):
        raise TypeError(
            "Invalid value for argument `inference`. Expected True (BatchNormalization on its "
            "moving statistics, as predict runs it) or False (as training sees it). "
            f"Received: inference={inference!r}"
        )
    return bool(inference)


def _check_probe(probe: int, size: int) -> None:
    if not 0 <= probe < size:
        raise ValueError(
            f"Invalid value for argument `probe`: {probe} is out of range for a batch of {size}. "
            f"Pass 0 to {size - 1}."
        )
