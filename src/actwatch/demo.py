"""The demo: a classic 5-block CNN trained on a 5-class image set generated here.

The data set needs no download: each image holds one procedural object (disc, square,
triangle, cross or ring) of a random colour, size and position, on a noisy background with a
colour gradient. The classes are the shapes, so a small CNN learns them in a few epochs. The
probes mix generated images with real photos: two from scikit-image (`skimage.data`, the
`actwatch[demo]` extra) when it is installed, else matplotlib's photo of Grace Hopper (every
install has matplotlib). `--data DIR` reads an image folder with Pillow, so it needs no
TensorFlow off its backend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from actwatch._logging import logger

__all__ = [
    "CLASSES",
    "DemoResult",
    "build_model",
    "grace_hopper",
    "make_dataset",
    "photo_probes",
    "run_demo",
    "seed_everything",
]

CLASSES = ("disc", "square", "triangle", "cross", "ring")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
# The file types `keras.utils.image_dataset_from_directory` reads.
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
SKIMAGE_NOTE = (
    "actwatch demo: scikit-image is not installed, so the probes are 3 generated images and "
    "matplotlib's photo of Grace Hopper; install actwatch[demo] for the scikit-image photos "
    "(pip install 'actwatch[demo]')."
)


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
    """Real photos from scikit-image's sample data, resized to `size`, float32 in [0, 1].

    Needs scikit-image (`pip install 'actwatch[demo]'`); raises `ImportError` saying so.
    """
    from PIL import Image

    try:
        from skimage import data
    except ImportError as exc:
        raise ImportError(
            "photo_probes needs scikit-image's sample photos: pip install 'actwatch[demo]'"
        ) from exc

    out = []
    for name in names:
        pixels = np.asarray(getattr(data, name)())
        if pixels.ndim == 2:
            pixels = np.repeat(pixels[..., None], 3, axis=-1)
        out.append(_resized(Image.fromarray(pixels[..., :3]), size))
    return np.stack(out)


def grace_hopper(size: int = 64) -> np.ndarray:
    """matplotlib's sample photo of Grace Hopper, cropped square and resized, `(size, size, 3)`."""
    from matplotlib import cbook
    from PIL import Image

    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as file:
        image = file.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return _resized(image.crop((left, top, left + side, top + side)), size)


def _resized(image: Any, size: int) -> np.ndarray:
    from PIL import Image

    square = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(square, dtype=np.float32) / 255.0


def _probes(x_val: np.ndarray, size: int) -> np.ndarray:
    """4 probes: 2 generated images and 2 scikit-image photos, or 3 and Grace Hopper."""
    try:
        photos = photo_probes(size, PHOTOS[:2])
    except ImportError:
        logger.warning(SKIMAGE_NOTE)
        photos = grace_hopper(size)[None]
    return np.concatenate([x_val[: 4 - len(photos)], photos])


def build_model(size: int = 64, classes: int = len(CLASSES), *, lr: float = 1e-3) -> Any:
    """The classic 5-block CNN: Conv2D + MaxPooling2D with 16, 32, 64, 64, 128 filters."""
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
    revive: bool = False,
) -> DemoResult:
    """Train the demo CNN with an `ActivationMonitor` writing to `log_dir`.

    The statistics samples come with their labels, so every check also computes the
    gradients of activations; `revive=True` re-initialises filters that die (ReDo).
    """
    import time

    from actwatch.fit.callback import ActivationMonitor

    seed_everything(seed)
    if data_dir is not None:
        folder = _ImageFolder(data_dir, size, batch_size=batch_size, seed=seed)
        if verbose:
            print(
                f"Found {len(folder.paths)} files belonging to {len(folder.class_names)} classes."
            )
        pool = folder.images(folder.order[:260])
        labels = folder.labels[folder.order[:260]]
        probes = pool[:4]
        stats_data = (pool[4:], labels[4:]) if len(pool) > 4 else (pool, labels)
        model = build_model(size, len(folder.class_names), lr=lr)
        fit_args: dict[str, Any] = {"x": folder}
    else:
        x, y = make_dataset(samples, size, seed=seed)
        x_val, y_val = make_dataset(260, size, seed=seed + 1)
        probes = _probes(x_val, size)
        stats_data = (x_val[4:], y_val[4:])
        model = build_model(size, lr=lr)
        fit_args = {"x": x, "y": y, "batch_size": batch_size}
    monitor = ActivationMonitor(
        probes,
        log_dir,
        stats_data=stats_data,
        revive="redo" if revive else None,
        topk=4,  # what each filter responds to, from the statistics images (issue 12)
    )
    start = time.perf_counter()
    history = model.fit(epochs=epochs, callbacks=[monitor], verbose=verbose, **fit_args)
    seconds = time.perf_counter() - start
    return DemoResult(
        log_dir=os.path.abspath(monitor.run_dir or log_dir),  # `<log_dir>-2` after a run
        history={k: [float(v) for v in vs] for k, vs in history.history.items()},
        alerts=len(monitor.alerts),
        seconds=seconds,
    )


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and the backend without importing TensorFlow off its backend.

    `keras.utils.set_random_seed` imports TensorFlow whenever it is installed.
    """
    import random

    if keras.backend.backend() == "tensorflow":
        keras.utils.set_random_seed(seed)
        return
    random.seed(seed)
    np.random.seed(seed)
    if keras.backend.backend() == "torch":
        import torch

        torch.manual_seed(seed)


def _image_files(data_dir: str) -> tuple[list[str], list[str], np.ndarray]:
    """Class names, image paths and labels of a folder with one sub-folder per class.

    The layout and file types of `keras.utils.image_dataset_from_directory` (Caltech-101's),
    read without TensorFlow: classes are the sub-folders in sorted order, images are found at
    any depth below them.
    """
    if not os.path.isdir(data_dir):
        raise ValueError(
            f"Invalid value for --data: {data_dir!r} is not a directory. Pass a folder with one "
            "sub-folder of images per class."
        )
    class_names = sorted(e.name for e in os.scandir(data_dir) if e.is_dir())
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        for root, dirs, files in os.walk(os.path.join(data_dir, name)):
            dirs.sort()
            for file in sorted(files):
                if file.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(root, file))
                    labels.append(label)
    if not paths:
        raise ValueError(
            f"Invalid value for --data: {data_dir!r} holds no images "
            f"({', '.join(IMAGE_EXTENSIONS)}) in sub-folders (found {len(class_names)} "
            "sub-folder(s)). Pass a folder with one sub-folder of images per class."
        )
    return class_names, paths, np.asarray(labels, dtype=np.int64)


class _ImageFolder(keras.utils.PyDataset):  # type: ignore[misc]
    """Batches `(images, labels)` from an image folder (see `_image_files`), read with Pillow.

    Images are float32 in [0, 1] resized to `size`; the order is shuffled with `seed` and again
    after every epoch. Works on every backend without TensorFlow, unlike
    `keras.utils.image_dataset_from_directory` (`tf.data`).
    """

    def __init__(self, data_dir: str, size: int, *, batch_size: int, seed: int) -> None:
        super().__init__()
        self.class_names, self.paths, self.labels = _image_files(data_dir)
        self.size = size
        self.batch_size = batch_size
        self._rng = np.random.default_rng(seed)
        self.order = self._rng.permutation(len(self.paths))

    def images(self, indices: np.ndarray) -> np.ndarray:
        """The images at `indices`, `(len(indices), size, size, 3)` float32 in [0, 1]."""
        from actwatch.check.image_files import open_image

        out = np.empty((len(indices), self.size, self.size, 3), dtype=np.float32)
        for i, k in enumerate(indices):  # 16-bit files scaled by their bit depth, as probes
            image = open_image(self.paths[k], "data")
            out[i] = _resized(image.convert("RGB"), self.size)
        return out

    def __len__(self) -> int:
        return -(-len(self.paths) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        indices = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        return self.images(indices), self.labels[indices]

    def on_epoch_end(self) -> None:
        self.order = self._rng.permutation(len(self.paths))
