"""The demo: a classic 5-block CNN trained on a 5-class image set generated here.

The data set needs no download: each image holds one procedural object (disc, square,
triangle, cross or ring) of a random colour, size and position, on a noisy background with a
colour gradient. The classes are the shapes, so a small CNN learns them in a few epochs. The
probes mix generated images with real photos shipped in scikit-image (`skimage.data`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "CLASSES",
    "DemoResult",
    "build_model",
    "make_dataset",
    "photo_probes",
    "run_demo",
    "seed_everything",
]

CLASSES = ("disc", "square", "triangle", "cross", "ring")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _shape_mask(kind: int, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy = rng.uniform(0.3, 0.7) * size
    cx = rng.uniform(0.3, 0.7) * size
    r = rng.uniform(0.15, 0.3) * size
    dy, dx = yy - cy, xx - cx
    if kind == 0:  # disc
        return np.asarray(dy**2 + dx**2 <= r**2)
    if kind == 1:  # square
        return np.asarray((np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85))
    if kind == 2:  # triangle, apex up
        return np.asarray((dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6))
    if kind == 3:  # cross
        w = r * 0.3
        return np.asarray(
            ((np.abs(dy) <= w) & (np.abs(dx) <= r)) | ((np.abs(dx) <= w) & (np.abs(dy) <= r))
        )
    d2 = dy**2 + dx**2  # ring
    return np.asarray((d2 <= r**2) & (d2 >= (r * 0.6) ** 2))


def make_dataset(
    n: int, size: int = 64, *, seed: int = 0, noise: float = 0.08
) -> tuple[np.ndarray, np.ndarray]:
    """`n` generated images `(n, size, size, 3)` float32 in [0, 1], and int labels in [0, 5)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), size=n)
    images = np.empty((n, size, size, 3), dtype=np.float32)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    for i, label in enumerate(labels):
        a, b = rng.uniform(0.0, 0.5, size=3), rng.uniform(0.0, 0.5, size=3)
        t = ramp[:, None] if rng.random() < 0.5 else ramp[None, :]
        background = a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]
        image = np.broadcast_to(background, (size, size, 3)).copy()
        colour = rng.uniform(0.4, 1.0, size=3)
        image[_shape_mask(int(label), size, rng)] = colour
        image += rng.normal(0.0, noise, size=image.shape).astype(np.float32)
        images[i] = np.clip(image, 0.0, 1.0)
    return images, labels.astype(np.int64)


def photo_probes(size: int = 64, names: Sequence[str] = PHOTOS) -> np.ndarray:
    """Real photos from scikit-image's sample data, resized to `size`, float32 in [0, 1]."""
    from PIL import Image
    from skimage import data

    out = []
    for name in names:
        pixels = np.asarray(getattr(data, name)())
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=-1)
        image = Image.fromarray(pixels[..., :3]).resize((size, size), Image.Resampling.BILINEAR)
        out.append(np.asarray(image, dtype=np.float32) / 255.0)
    return np.stack(out)


def build_model(size: int = 64, classes: int = len(CLASSES), *, lr: float = 1e-3) -> Any:
    """The classic 5-block CNN: Conv2D + MaxPooling2D with 16, 32, 64, 64, 128 filters."""
    import keras

    inputs = keras.Input((size, size, 3), name="image")
    x = inputs
    for block, filters in enumerate((16, 32, 64, 64, 128), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{block}")(
            x
        )
        x = keras.layers.MaxPooling2D(name=f"pool{block}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(64, activation="relu", name="dense")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="classes")(x)
    model = keras.Model(inputs, outputs, name="demo_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


@dataclass(frozen=True)
class DemoResult:
    log_dir: str
    history: dict[str, list[float]]
    alerts: int
    seconds: float


def run_demo(
    *,
    log_dir: str = "logs/demo",
    lr: float = 1e-3,
    epochs: int = 8,
    samples: int = 2000,
    size: int = 64,
    batch_size: int = 32,
    seed: int = 0,
    data_dir: str | None = None,
    verbose: int = 2,
) -> DemoResult:
    """Train the demo CNN with an `ActivationMonitor` writing to `log_dir`."""
    import time

    from .callback import ActivationMonitor

    seed_everything(seed)
    if data_dir is not None:
        train, probes, stats_data, classes = _directory_data(data_dir, size, batch_size, seed)
        model = build_model(size, classes, lr=lr)
        fit_args: dict[str, Any] = {"x": train}
    else:
        x, y = make_dataset(samples, size, seed=seed)
        x_val, _ = make_dataset(260, size, seed=seed + 1)
        probes = np.concatenate([x_val[:2], photo_probes(size, PHOTOS[:2])])
        stats_data = x_val[4:]
        model = build_model(size, lr=lr)
        fit_args = {"x": x, "y": y, "batch_size": batch_size}
    monitor = ActivationMonitor(probes, log_dir, stats_data=stats_data)
    start = time.perf_counter()
    history = model.fit(epochs=epochs, callbacks=[monitor], verbose=verbose, **fit_args)
    seconds = time.perf_counter() - start
    return DemoResult(
        log_dir=os.path.abspath(log_dir),
        history={k: [float(v) for v in vs] for k, vs in history.history.items()},
        alerts=len(monitor.alerts),
        seconds=seconds,
    )


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and the backend without importing TensorFlow off its backend.

    `keras.utils.set_random_seed` imports TensorFlow whenever it is installed.
    """
    import random

    import keras

    if keras.backend.backend() == "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    random.seed(seed)
    np.random.seed(seed)
    if keras.backend.backend() == "torch":
        import torch

        torch.manual_seed(seed)


def _directory_data(
    data_dir: str, size: int, batch_size: int, seed: int
) -> tuple[Any, np.ndarray, np.ndarray, int]:
    """An image folder with one sub-folder per class (the Caltech-101 layout)."""
    import keras

    if not os.path.isdir(data_dir):
        raise ValueError(
            f"Invalid value for --data: {data_dir!r} is not a directory. Pass a folder with one "
            "sub-folder of images per class."
        )
    train = keras.utils.image_dataset_from_directory(
        data_dir, image_size=(size, size), batch_size=batch_size, seed=seed, shuffle=True
    )
    classes = len(train.class_names)
    train = train.map(lambda x, y: (x / 255.0, y))
    samples = []
    for images, _ in train.take(max(1, 260 // batch_size + 1)):
        samples.append(np.asarray(images))
    pool = np.concatenate(samples)
    return train, pool[:4], pool[4:260], classes
