"""`actwatch inspect`: filter grids, heatmaps and statistics of a saved model on any images.

One check of the images through the watched layers, with the notebook functions' code (the
callback's extractor, statistics and grids), written to a folder:

- `filters-<i>-<image>.png`: one filter grid per layer for image i;
- `heatmaps-<i>-<image>.png`: each layer's mean activation over image i;
- `stats.png` and `stats.html`: the statistics table (judged on all the images together),
  and the page also shows every figure inline.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from actwatch.check.layers import resolve_layers
from actwatch.check.stats import LayerStats
from actwatch.notebook import look
from actwatch.render import figures
from actwatch.render import html as _html

__all__ = ["PREPROCESS", "import_modules", "inspect_model", "load_model"]

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


def import_modules(modules: Sequence[str]) -> list[ModuleType]:
    """Import each of `modules` (a dotted module name or a `.py` file), in order: the code
    that registers a model's custom layers (`@keras.saving.register_keras_serializable`).

    A dotted name is looked up from the current folder first (as `python -m` does); a file
    runs as the module named by its stem, with its folder on `sys.path` for its own imports.
    """
    imported = []
    for name in modules:
        is_file = name.endswith(".py") or os.sep in name or "/" in name
        try:
            if is_file:
                imported.append(_import_file(Path(name)))
            else:
                if os.getcwd() not in sys.path and "" not in sys.path:
                    sys.path.insert(0, os.getcwd())
                imported.append(importlib.import_module(name))
        except Exception as exc:
            missing = (
                isinstance(exc, FileNotFoundError)
                if is_file
                else isinstance(exc, ModuleNotFoundError)
                and (name + ".").startswith(f"{exc.name}.")
            )
            where = (
                "pass a dotted module name importable from the current folder (e.g. "
                "mypkg.layers) or the path of a .py file"
                if missing
                else "the module itself raised it"
            )
            raise ValueError(
                f"Invalid value for --import: could not import {name!r} "
                f"({type(exc).__name__}: {exc}); {where}."
            ) from exc
    return imported


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        raise FileNotFoundError(f"{os.fspath(path)!r} is not a file")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{os.fspath(path)!r} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    folder = os.fspath(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module


#: Keras' words for a class of the saved model that no import registered.
_UNKNOWN_CLASS = re.compile(r"Could not locate class '(?P<name>[^']+)'")


def load_model(path: str | os.PathLike[str]) -> Any:
    """Load a saved Keras model with `safe_mode=True` (no code from the file is run).

    Custom layers load when the module that registers them was imported first (in Python,
    or with `actwatch inspect --import MODULE`).
    """
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
        unknown = _UNKNOWN_CLASS.search(str(exc))
        if unknown is not None:
            name = unknown["name"]
            saved = re.search(rf"'module': '([\w.]+)', 'class_name': '{re.escape(name)}'", str(exc))
            module = saved[1] if saved else None
            where = {
                None: "",
                "__main__": " (it was defined in the script that saved the model: move it "
                "into a module)",
            }.get(module, f" (it was saved from module {module!r})")
            option = module if module not in (None, "__main__") else "MODULE"
            raise ValueError(
                f"Could not load {os.fspath(path)!r}: it uses the custom class {name!r}, which "
                f"no imported module registers{where}. Import the module that defines it "
                "with `@keras.saving.register_keras_serializable()` first: `actwatch inspect "
                f"--import {option} ...` (a dotted module name or a .py file), or `import` it "
                "in Python."
            ) from exc
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
    inference: bool = False,
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
        inference: look at the model as `predict` runs it (BatchNormalization on its moving
            statistics), what an exported model computes. Defaults to False: as training
            sees it (BatchNormalization on the images' own statistics).

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
        loaded,
        watched,
        [os.fspath(p) for p in paths],
        preprocess=function,
        max_filters=max_filters,
        inference=inference,
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
        f"({_html.esc(PREPROCESS[preprocess])}); "
        f"{'inference mode (moving statistics)' if inference else 'as training sees it'}. "
        f"Statistics are judged on all "
        f"{len(paths)} image(s): a dead filter outputs &lt;= 0 everywhere on every one.</p>\n"
        f"{_html.table(_HEADERS, rows)}\n{''.join(sections)}"
    )
    page = out / "stats.html"
    page.write_text(_html.page(f"actwatch inspect: {name}", body), encoding="utf-8")
    return page
