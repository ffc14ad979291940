"""Probes as pictures: image files to batches of the model's input, and batches to pictures.

Image files and PIL images are decoded behind Pillow's decompression-bomb guard and resized to
the model's input; array batches get a uint8 picture of each probe (`display_pictures`),
drawn behind heatmaps. Every image becomes raw pixels in `[0, 255]`, the scale `preprocess=`
expects (see `actwatch.check.probes`), by its bit depth, never by its own range (a dark image
stays dark):

- 8-bit images (`L`, `RGB`, `P`, ...) as they are;
- 16-bit grayscale (`I;16`, `I;16B`, `I;16L`, `I;16N`: 16-bit PNG and TIFF files) divided by
  257, so 65535 becomes 255 (Pillow's own conversion clips every value above 255 to white);
- 32-bit integer (`I`, what older Pillow decodes 16-bit files to) as 16-bit, whatever its
  values (a dark 16-bit image with every value <= 255 stays dark); outside 0-65535, refused;
- floating point (`F`) in `[0, 1]` times 255, in `[0, 255]` as they are, else refused.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
from PIL import Image

__all__ = [
    "describe_shape",
    "display_pictures",
    "eight_bit",
    "is_image_like",
    "open_image",
    "resize_images",
]

#: Pillow's modes of 16-bit grayscale pixels (unsigned; the suffix is the byte order).
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_CONVERT_YOURSELF = (
    "Convert it to an 8-bit image (mode 'L' or 'RGB', pixels 0-255) yourself, e.g. "
    "Image.fromarray(np.clip(pixels, 0, 255).astype('uint8'))."
)


def is_image_like(item: object) -> bool:
    """Whether `item` is an image path or a PIL image."""
    return isinstance(item, (str, os.PathLike, Image.Image))


def open_image(item: str | os.PathLike[str] | Image.Image, argument: str) -> Image.Image:
    """Decode `item` behind Pillow's decompression-bomb guard, as an 8-bit image."""
    if isinstance(item, Image.Image):
        return eight_bit(item, argument, f"a PIL image of size {item.width}x{item.height}")
    path = os.fspath(item)
    if not os.path.exists(path):
        raise ValueError(
            f"Invalid value for argument `{argument}`: the image file {path!r} does not "
            "exist. Pass paths to existing image files, PIL images, or a numpy array."
        )
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that: treat both
            # as an error, an untrusted file must not exhaust memory.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                decoded = image.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(
            f"Invalid value for argument `{argument}`: {path!r} is too large to decode safely "
            f"({exc}). Resize the image or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it."
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(
            f"Invalid value for argument `{argument}`: {path!r} could not be read as an "
            f"image ({type(exc).__name__}: {exc}). Pass a PNG, JPEG or other file Pillow reads."
        ) from None
    return eight_bit(decoded, argument, repr(path))


def eight_bit(image: Image.Image, argument: str, label: str) -> Image.Image:
    """`image` with pixels in 0-255, scaled by its bit depth (module docstring); 8-bit
    images are returned as they are. `label` names the image in errors."""
    if image.mode not in (*_SIXTEEN_BIT_MODES, "I", "F"):
        return image
    pixels = np.asarray(image, dtype=np.float64)
    if not np.all(np.isfinite(pixels)):
        raise ValueError(
            f"Invalid value for argument `{argument}`: {label} holds NaN or Inf pixels. "
            + _CONVERT_YOURSELF
        )
    low, high = float(pixels.min()), float(pixels.max())
    if image.mode == "F":
        if low < 0 or high > 255:
            raise ValueError(
                f"Invalid value for argument `{argument}`: {label} is a floating-point image "
                f"with values from {low:g} to {high:g}; expected values in [0, 1] (or 0-255). "
                + _CONVERT_YOURSELF
            )
        scale = 255.0 if high <= 1.0 else 1.0
    elif image.mode == "I":
        # Pillow decodes 16-bit files to `I` (older versions, `convert("I")`): its depth
        # is 16 bits whatever the values, so a dark 16-bit image is not read as 8-bit.
        if low < 0 or high > 65535:
            raise ValueError(
                f"Invalid value for argument `{argument}`: {label} is a 32-bit integer image "
                f"with values from {low:g} to {high:g}; expected 16-bit (0-65535) pixels, "
                "as Pillow decodes 16-bit files. " + _CONVERT_YOURSELF
            )
        scale = 1 / 257
    else:
        scale = 1 / 257  # 65535 -> 255, exactly the 8-bit value for v * 257
    return Image.fromarray(np.round(pixels * scale).astype(np.uint8))


def describe_shape(shape: Sequence[int | None]) -> str:
    """A shape as the errors write it: `(batch, 16, 16, 3)`."""
    return "(" + ", ".join("batch" if i == 0 else str(d) for i, d in enumerate(shape)) + ")"


def resize_images(
    images: Sequence[Image.Image], input_shape: Sequence[int | None], argument: str
) -> np.ndarray:
    """`images` as one float32 batch of raw 0-255 pixels in the model's input shape."""
    if len(input_shape) != 4:
        raise ValueError(
            f"Invalid value for argument `{argument}`: images were given, but the model's "
            f"input has shape {describe_shape(input_shape)}, not (batch, height, width, "
            "channels). Pass a numpy array instead."
        )
    channels_first = input_shape[1] in (1, 3) and input_shape[3] not in (1, 3)
    h, w, c = (
        (input_shape[2], input_shape[3], input_shape[1])
        if channels_first
        else (input_shape[1], input_shape[2], input_shape[3])
    )
    if h is None or w is None or c not in (1, 3):
        raise ValueError(
            f"Invalid value for argument `{argument}`: images were given, but the model's "
            f"input shape {describe_shape(input_shape)} has no fixed size with 1 or 3 "
            "channels to resize them to. Resize them yourself and pass a numpy array."
        )
    mode = "L" if c == 1 else "RGB"
    arrays = []
    for image in images:
        resized = image.convert(mode).resize((int(w), int(h)), Image.Resampling.BILINEAR)
        pixels = np.asarray(resized, dtype=np.float32)
        arrays.append(pixels[..., None] if c == 1 else pixels)
    batch = np.stack(arrays)
    return np.moveaxis(batch, -1, 1) if channels_first else batch


def display_pictures(batch: np.ndarray) -> np.ndarray | None:
    """A uint8 RGB picture of each probe of `batch` (channels last or first), scaled per
    probe to its own range; None when it is not a batch of 1- or 3-channel images."""
    if batch.ndim != 4:
        return None
    x = batch.astype(np.float32)
    if x.shape[-1] not in (1, 3) and x.shape[1] in (1, 3):  # channels_first
        x = np.moveaxis(x, 1, -1)
    if x.shape[-1] not in (1, 3):
        return None
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    hi = x.max(axis=(1, 2, 3), keepdims=True)
    x = (x - lo) / np.where(hi > lo, hi - lo, 1.0)
    out: np.ndarray = np.round(x * 255.0).astype(np.uint8)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return out
