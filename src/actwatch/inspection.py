"""`actwatch inspect`: filter grids, heatmaps and statistics of a saved model on any images.

One check of the images through the watched layers, with the notebook functions' code (the
callback's extractor, statistics and grids), written to a folder:

- `filters-<i>-<image>.png`: one filter grid per layer for image i;
- `heatmaps-<i>-<image>.png`: each layer's mean activation over image i;
- `stats.png` and `stats.html`: the statistics table (judged on all the images together),
  and the page also shows every figure inline.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from actwatch.check.layers import resolve_layers
from actwatch.check.stats import LayerStats
from actwatch.notebook import look
from actwatch.render import figures
from actwatch.render import html as _html

__all__ = ["PREPROCESS", "inspect_model", "load_model"]

#: `--preprocess` choices: what is done to the raw 0-255 pixels of the images.
PREPROCESS: dict[str, str] = {
    "none": "raw pixels in [0, 255]",
    "scale255": "pixels / 255, in [0, 1] (the demo model)",
    "tf": "pixels / 127.5 - 1, in [-1, 1] (MobileNet, Inception, EfficientNetV2 without its "
    "own rescaling)",
    "torch": "pixels / 255, then ImageNet mean and std per channel",
    "caffe": "RGB to BGR, then ImageNet channel means subtracted (VGG, ResNet50)",
}


def preprocess_function(name: str) -> Callable[[np.ndarray], Any] | None:
    """The callable for a `--preprocess` choice (None for "none")."""
    if name not in PREPROCESS:
        raise ValueError(
            f"Invalid value for preprocess: {name!r}. Expected one of {sorted(PREPROCESS)}."
        )
    if name == "none":
        return None
    if name == "scale255":
        return lambda x: np.asarray(x, dtype=np.float32) / 255.0

    def imagenet(x: np.ndarray) -> Any:
        from keras.applications import imagenet_utils

        return imagenet_utils.preprocess_input(np.array(x, dtype=np.float32), mode=name)

    return imagenet


def load_model(path: str | os.PathLike[str]) -> Any:
    """Load a saved Keras model with `safe_mode=True` (no code from the file is run)."""
    import keras

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"Invalid value for MODEL: {os.fspath(path)!r} is not a file. Pass a model saved "
            "with `model.save('model.keras')`."
        )
    try:
        return keras.saving.load_model(file, compile=False, safe_mode=True)
    except Exception as exc:
        raise ValueError(
            f"Could not load {os.fspath(path)!r} as a Keras model ({type(exc).__name__}: "
            f"{exc}). Expected a `.keras` file saved with `model.save('model.keras')`; "
            "models with Lambda layers cannot be loaded with safe_mode=True."
        ) from exc


_HEADERS = [
    "layer",
    "output shape",
    "filters",
    "zero fraction",
    "dead",
    "dormant fraction",
    "Hoyer",
    "mean",
    "non-finite",
]


def _rows(stats: dict[str, LayerStats], shapes: dict[str, str]) -> list[list[object]]:
    return [
        [
            path,
            shapes[path],
            s.filters,
            f"{s.zero_fraction:.3f}",
            f"{s.dead_count} ({s.dead_fraction:.0%})",
            f"{s.dormant_fraction:.3f}",
            f"{s.hoyer:.3f}",
            f"{s.mean:.4g}",
            s.nonfinite,
        ]
        for path, s in stats.items()
    ]


def inspect_model(
    model: str | os.PathLike[str] | Any,
    images: Sequence[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    *,
    layers: Any = None,
    preprocess: str = "none",
    max_filters: int = 64,
) -> Path:
    """Write filter grids, heatmaps and a statistics table of `model` on `images`.

    Args:
        model: a `.keras` file (loaded with `safe_mode=True`) or a Keras model.
        images: image files; they are resized to the model's input size.
        output_dir: the folder to write to (created).
        layers: as in `ActivationMonitor`; defaults to every convolution, pooling and
            activation layer.
        preprocess: one of `PREPROCESS`: what is done to the raw 0-255 pixels.
            Defaults to "none".
        max_filters: at most this many filters per layer are drawn. Defaults to 64.

    Returns:
        The path of `stats.html` in `output_dir`.

    Example:

    ```python
    inspect_model("model.keras", ["cat.jpg", "dog.jpg"], "inspect", preprocess="scale255")
    ```
    """
    if not images:
        raise ValueError("Invalid value for IMAGE: no image given. Pass at least one image file.")
    function = preprocess_function(preprocess)
    loaded = load_model(model) if isinstance(model, (str, os.PathLike)) else model
    watched = resolve_layers(loaded, layers)
    paths = [Path(i) for i in images]
    batch, result = look(
        loaded, watched, [os.fspath(p) for p in paths], preprocess=function, max_filters=max_filters
    )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    shapes = {w.path: str(tuple(w.layer.output.shape)) for w in watched}
    rows = _rows(result.stats, shapes)
    name = getattr(loaded, "name", "model")
    title = f"{name} on {len(paths)} image(s): statistics over all of them"
    table_png = figures.figure_png(figures.table_figure(_HEADERS, rows, title))
    _html.write_png(out / "stats.png", table_png)
    dead = {path: stats.dead for path, stats in result.stats.items()}
    sections = []
    for i, image in enumerate(paths):
        stem = f"{i:02d}-{_html.slug(image.stem)}"
        parts = []
        if result.maps:
            png = figures.figure_png(figures.filters_figure(result.maps, dead, i))
            _html.write_png(out / f"filters-{stem}.png", png)
            parts.append(_html.img(png, f"filter grids for {image.name}"))
        if result.heat:
            png = figures.figure_png(figures.heatmaps_figure(result.heat, batch.display, i))
            _html.write_png(out / f"heatmaps-{stem}.png", png)
            parts.append(_html.img(png, f"heatmaps for {image.name}"))
        sections.append(f"<h2>{_html.esc(image.name)}</h2>{''.join(parts)}")
    body = (
        f"<h1>actwatch inspect: {_html.esc(name)}</h1>\n"
        f'<p class="note">Preprocessing: {_html.esc(preprocess)} '
        f"({_html.esc(PREPROCESS[preprocess])}). Statistics are judged on all "
        f"{len(paths)} image(s): a dead filter outputs &lt;= 0 everywhere on every one.</p>\n"
        f"{_html.table(_HEADERS, rows)}\n{''.join(sections)}"
    )
    page = out / "stats.html"
    page.write_text(_html.page(f"actwatch inspect: {name}", body), encoding="utf-8")
    return page
