"""Where a vision transformer's patch tokens sit: the leading (class, register) tokens and the
patch grid, from the layers and the image input's shape (square or not)."""

from __future__ import annotations

import keras
import pytest

from actwatch.check.transformer_items import TransformerItems, _grid

L = keras.layers


@pytest.mark.parametrize(
    ("tokens", "prefix", "image", "expected"),
    [
        (197, 1, (224, 224), (1, (14, 14))),  # ViT-B/16: class token, 14 x 14
        (201, 5, (224, 224), (5, (14, 14))),  # DINOv2: class + 4 registers
        (197, None, (224, 224), (1, (14, 14))),  # no layer says: the one token over the grid
        (141, None, (224, 160), (1, (14, 10))),  # 224 x 160 in 16 px patches, class token
        (140, None, (224, 160), (0, (14, 10))),  # the same without a class token
        (140, None, (160, 224), (0, (10, 14))),  # portrait and landscape are not confused
        (40, None, (36, 84), (0, (4, 10))),  # 8 px patches, the edges cut off (valid)
        (136, None, None, (0, (1, 136))),  # no image shape known, not square: a strip
        (37, 1, (224, 224), (1, (6, 6))),
        (38, 1, (224, 224), (1, (1, 37))),  # no grid of that shape: a strip
    ],
)
def test_grid_follows_the_image_shape(
    tokens: int,
    prefix: int | None,
    image: tuple[int, int] | None,
    expected: tuple[int, tuple[int, int]],
) -> None:
    assert _grid(tokens, prefix, image) == expected


def test_the_image_shape_is_read_from_the_model_input() -> None:
    """A patchify-conv ViT on 32 x 48 images in 8 px patches: 4 x 6 patches, no class token."""
    inputs = keras.Input((32, 48, 3))
    h = L.Conv2D(8, 8, strides=8, name="patchify")(inputs)
    h = L.Reshape((24, 8))(h)
    h = L.MultiHeadAttention(2, 4, name="mha")(h, h)
    model = keras.Model(inputs, h)
    items = TransformerItems(model, rows=0)
    assert items.image == (32, 48)
    assert _grid(24, items.prefix, items.image) == (0, (4, 6))
    assert items.query(24) == "mean"


def test_a_channels_first_vit_reads_its_own_data_format() -> None:
    """A patchify conv in channels_first under Keras' channels_last default: the image input
    `(3, 32, 48)` is 32 x 48, read in the conv's own data format."""
    inputs = keras.Input((3, 32, 48))
    h = L.Conv2D(8, 8, strides=8, data_format="channels_first", name="patchify")(inputs)
    h = L.Permute((2, 3, 1))(h)
    h = L.Reshape((24, 8))(h)
    model = keras.Model(inputs, L.MultiHeadAttention(2, 4, name="mha")(h, h))
    assert TransformerItems(model, rows=0).image == (32, 48)
