"""Real logs for the report and CLI tests: a tiny CNN trained with `ActivationMonitor`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np

import actwatch
from actwatch.events import tags
from actwatch.events.sink import Sink

from .helpers import data, tiny_cnn

#: Layer names that are markup or broken matplotlib math; Keras refuses them (the `/`, and
#: TensorFlow's scope names), so they are written with the Sink.
SCRIPT_LAYER = "<script>alert(1)</script>"
MATH_LAYER = "$\\bad{$ & <i>co</i>"


def dying_cnn(dead: int) -> keras.Model:
    """`tiny_cnn` whose first `dead` conv1 filters never fire (bias -100: no gradient)."""
    model = tiny_cnn()
    conv = model.get_layer("conv1")
    kernel, bias = conv.get_weights()
    bias[:dead] = -100.0
    conv.set_weights([kernel, bias])
    return model


def fit_run(
    log_dir: Path, *, dead: int = 0, epochs: int = 3, **monitor: Any
) -> actwatch.ActivationMonitor:
    """Train a tiny CNN for `epochs` with a monitor writing to `log_dir`; return the monitor."""
    x, y = data(48)
    model = dying_cnn(dead)
    callback = actwatch.ActivationMonitor(x[:2], str(log_dir), stats_data=x[:32], **monitor)
    model.fit(x, y, batch_size=16, epochs=epochs, callbacks=[callback], verbose=0)
    return callback


def write_script_run(log_dir: Path) -> None:
    """A run with layers `SCRIPT_LAYER` and `MATH_LAYER`, written with the Sink."""
    grid = np.zeros((12, 12, 3), dtype=np.uint8)
    grid[2:10, 2:10] = 200
    sink = Sink(str(log_dir))
    for step in (0, 5, 9):
        scalars = {
            tags.layer_tag(metric, layer): (0.5, "test")
            for layer in (SCRIPT_LAYER, MATH_LAYER)
            for metric in tags.METRICS
        }
        texts = {}
        if step == 5:
            texts = {tags.ALERTS: (f"- **dead**: layer `{SCRIPT_LAYER}` <b>lost</b> filters", "")}

        def render() -> dict[str, tuple[np.ndarray, str]]:
            return {
                tags.filters_tag(SCRIPT_LAYER, 0): (grid, "test"),
                tags.filters_tag(MATH_LAYER, 0): (grid, "test"),
            }

        sink.submit(step, scalars=scalars, texts=texts, render=render)
        assert sink.flush(30)
    sink.close()
