"""Shared test helpers: tiny real models and reading event files back with TensorBoard."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.util import tensor_util


def tiny_cnn(
    *,
    size: int = 16,
    filters: Sequence[int] = (4, 8),
    classes: int = 3,
    lr: float = 1e-3,
    seed: int = 0,
) -> keras.Model:
    """Conv(relu) + MaxPool blocks, then a Dense head; compiled with Adam."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3), name="image")
    x = inputs
    for i, f in enumerate(filters, start=1):
        x = keras.layers.Conv2D(f, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = keras.layers.MaxPooling2D(name=f"pool{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs, name="tiny")
    model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy")
    return model


def data(
    n: int = 64, size: int = 16, classes: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Random images in [-0.5, 0.5) and labels."""
    rng = np.random.default_rng(seed)
    x = (rng.random((n, size, size, 3)) - 0.5).astype("float32")
    y = rng.integers(0, classes, n).astype("int64")
    return x, y


@dataclass
class Events:
    """Everything in one log directory, keyed by tag: lists of (step, value)."""

    scalars: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    images: dict[str, list[tuple[int, np.ndarray]]] = field(default_factory=dict)
    texts: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    other: dict[str, str] = field(default_factory=dict)

    @property
    def tags(self) -> set[str]:
        return set(self.scalars) | set(self.images) | set(self.texts) | set(self.other)


def read_events(log_dir: str | Path) -> Events:
    """Read every events file in `log_dir` with TensorBoard's own EventAccumulator."""
    acc = ea.EventAccumulator(
        str(log_dir), size_guidance={ea.TENSORS: 0, ea.SCALARS: 0, ea.IMAGES: 0}
    )
    acc.Reload()
    out = Events()
    for tag in acc.Tags()["tensors"]:
        plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
        events = acc.Tensors(tag)
        if plugin == "scalars":
            out.scalars[tag] = [
                (e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in events
            ]
        elif plugin == "images":
            decoded = []
            for e in events:
                w, h, png = tensor_util.make_ndarray(e.tensor_proto)
                image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
                assert image.shape[:2] == (int(h), int(w))
                decoded.append((e.step, image))
            out.images[tag] = decoded
        elif plugin == "text":
            out.texts[tag] = [
                (e.step, tensor_util.make_ndarray(e.tensor_proto).item().decode()) for e in events
            ]
        else:
            out.other[tag] = plugin
    return out
