"""Big RGB pictures (heatmaps over probes, token norms) are written as 256-colour PNGs: fewer
bytes for the same picture (issue 20, item 8: <= 4 MB a check on real backbones)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from actwatch.render.png import PaletteImage, encode_png, quantized
from actwatch.render.tiles import heatmap_overlay

pytestmark = pytest.mark.read_path


def _photo(side: int) -> np.ndarray:
    """A photo-like probe: smooth shapes plus sensor noise (RGB PNGs of it barely compress)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:side, :side] / side
    base = np.stack([np.sin(6 * x + c) * np.cos(4 * y - c) for c in range(3)], axis=-1)
    noisy = 127 + 90 * base + rng.normal(0, 12, size=base.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def test_overlay_is_palette_encoded_smaller_and_looks_the_same() -> None:
    heat = (np.random.default_rng(1).random((7, 7)) * 255).astype(np.uint8)
    overlay = heatmap_overlay(heat, _photo(224))
    image = quantized(overlay)
    assert isinstance(image, PaletteImage)
    png = encode_png(image)
    assert len(png) < 0.6 * len(encode_png(overlay))
    decoded = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    assert decoded.shape == overlay.shape
    assert np.abs(decoded - overlay).mean() < 6.0  # per channel, out of 255


def test_small_and_other_images_are_left_as_they_are() -> None:
    small = _photo(64)
    assert quantized(small) is small
    gray = np.zeros((224, 224), np.uint8)
    assert quantized(gray) is gray
