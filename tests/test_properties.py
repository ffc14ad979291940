"""Property-based: statistics and grids against the numpy references, over random shapes."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from keras import ops
from PIL import Image

from actwatch.check.maps import heat_maps, normalize_maps
from actwatch.check.stats import reduce_layer, summarize
from actwatch.render.png import PaletteImage, encode_png
from actwatch.render.tiles import (
    DEAD_RGB,
    GUTTER_RGB,
    MIN_TILE,
    NONFINITE,
    NONFINITE_RGB,
    PALETTE,
    filter_grid,
    grid_layout,
)

from . import reference as ref

SETTINGS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
#: Fewer examples where every new shape compiles device kernels (JAX: ~1-2 s per example).
DEVICE_SETTINGS = settings(SETTINGS, max_examples=15)
MAX_VALUES = 1 << 17  # keeps one example well under a second on every backend
KINDS = ("random", "constant", "zeros", "nonfinite", "sparse")


@dataclass(frozen=True)
class Activations:
    """`(N, H, W, C)` float32 activations of one kind."""

    kind: str
    values: np.ndarray


@st.composite
def activations(draw: st.DrawFn) -> Activations:
    """Batch 1..16, 1x1..64x64 maps, 1..1024 channels (the product capped), of one kind."""
    c = draw(st.integers(1, 1024))
    n = draw(st.integers(1, 16))
    room = max(1, MAX_VALUES // (n * c))
    h = draw(st.integers(1, min(64, room)))
    w = draw(st.integers(1, min(64, max(1, room // h))))
    kind = draw(st.sampled_from(KINDS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = (n, h, w, c)
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
    if kind == "constant":
        a = np.full(shape, draw(st.sampled_from([-2.0, 0.0, 0.5, 3.0])))
    elif kind == "zeros":
        a = np.zeros(shape)
    else:
        a = rng.normal(0.0, scale, shape)
        if kind == "sparse":  # ReLU-like: many exact zeros, some filters dead
            a = np.maximum(a, 0.0) * (rng.random(c) < 0.7)
        if kind == "nonfinite":
            mask = rng.random(shape) < draw(st.sampled_from([0.01, 0.5, 1.0]))
            a[mask] = rng.choice(np.array([np.nan, np.inf, -np.inf]), int(mask.sum()))
    return Activations(kind, a.astype(np.float32))


def _close(a: float, b: float, scale: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-5 * max(1.0, scale))


_EDGES = [
    Activations("zeros", np.zeros((1, 1, 1, 1), np.float32)),
    Activations("constant", np.full((2, 5, 5, 7), 3.0, np.float32)),
    Activations("nonfinite", np.array([np.nan, np.inf, -np.inf, 1.0] * 3, np.float32)
                .reshape(1, 2, 2, 3)),
    Activations("nonfinite", np.full((3, 1, 1, 1024), np.nan, np.float32)),
]  # fmt: skip


@DEVICE_SETTINGS
@given(activations(), st.sampled_from([0.0, 0.025, 0.1]))
@example(_EDGES[0], 0.025)
@example(_EDGES[1], 0.025)
@example(_EDGES[2], 0.0)
@example(_EDGES[3], 0.1)
def test_layer_statistics_match_reference(acts: Activations, tau: float) -> None:
    """reduce_layer + summarize agree with the numpy reference on every shape and kind."""
    a = acts.values
    n, h, w, c = a.shape
    npc = ref.to_npc(a)
    reduced = reduce_layer(ops.convert_to_tensor(a.reshape(n, h * w, c)))
    stats = summarize({k: ops.convert_to_numpy(v) for k, v in reduced.items()}, tau)
    finite = npc[np.isfinite(npc)]
    magnitude = float(np.abs(finite).mean()) if finite.size else 0.0

    assert stats.values == a.size
    assert stats.nonfinite == ref.nonfinite(npc)
    assert _close(stats.zero_fraction, ref.zero_fraction(npc), 1.0)
    assert _close(stats.mean, ref.mean(npc), magnitude)
    assert _close(stats.hoyer, ref.hoyer(npc), 1.0)
    assert 0.0 <= stats.zero_fraction <= 1.0 and -1e-5 <= stats.hoyer <= 1.0 + 1e-5
    assert np.array_equal(stats.dead, ref.dead(npc))
    assert stats.nonnegative == ref.nonnegative(npc)
    # Dormant: equal, except for filters whose score sits on tau within rounding.
    scores = ref.dormant_scores(npc)  # NaN for a filter without finite values
    layer = float(np.nanmean(scores)) if not np.isnan(scores).all() else 0.0
    clear = ~(np.abs(scores / layer - tau) <= 1e-4) if layer > 0 else np.ones(c, bool)
    assert np.array_equal(stats.dormant[clear], ref.dormant(npc, tau)[clear])
    if acts.kind == "zeros":
        assert stats.dead.all() and stats.dormant.all() and stats.zero_fraction == 1.0
    if acts.kind == "constant":
        assert stats.hoyer == pytest.approx(0.0, abs=1e-4)


@DEVICE_SETTINGS
@given(activations())
@example(_EDGES[0])
@example(_EDGES[1])
@example(_EDGES[2])
@example(_EDGES[3])
def test_normalized_maps_match_reference(acts: Activations) -> None:
    """normalize_maps: uint8 of the input's shape, non-finite exactly 255, else the reference."""
    a = acts.values
    codes = ops.convert_to_numpy(normalize_maps(ops.convert_to_tensor(a)))
    assert codes.dtype == np.uint8 and codes.shape == a.shape
    finite = np.isfinite(a)
    assert np.array_equal(codes == NONFINITE, ~finite)
    expected = ref.normalize_maps(a)
    # float32 on the device against float64 here: a code may differ by one at a .5 boundary.
    assert int(np.abs(codes.astype(int) - expected.astype(int)).max(initial=0)) <= 1


@DEVICE_SETTINGS
@given(activations())
@example(_EDGES[0])
@example(_EDGES[1])
def test_finite_maps_take_the_short_path_to_the_same_codes(acts: Activations) -> None:
    """normalize_maps / heat_maps with `finite` (the fast check, every value finite) give
    exactly the codes of the path that sets NaN and Inf apart."""
    a = np.where(np.isfinite(acts.values), acts.values, 0.0).astype(np.float32)
    x = ops.convert_to_tensor(a)
    for draw in (normalize_maps, heat_maps):
        careful = ops.convert_to_numpy(draw(x))
        fast = ops.convert_to_numpy(draw(x, True))
        assert fast.dtype == np.uint8 and np.array_equal(fast, careful)
    dense = ops.convert_to_tensor(a[:, 0, 0, :])
    assert np.array_equal(
        ops.convert_to_numpy(normalize_maps(dense, True)),
        ops.convert_to_numpy(normalize_maps(dense)),
    )


@DEVICE_SETTINGS
@given(activations())
def test_dense_codes_match_reference(acts: Activations) -> None:
    """normalize_maps on `(N, F)` Dense outputs scales each sample over its units."""
    a = acts.values[:, 0, 0, :]
    codes = ops.convert_to_numpy(normalize_maps(ops.convert_to_tensor(a)))
    assert codes.dtype == np.uint8 and codes.shape == a.shape
    assert int(np.abs(codes.astype(int) - ref.normalize_maps(a).astype(int)).max()) <= 1


@st.composite
def codes_and_dead(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    f = draw(st.integers(1, 1024))
    room = max(1, (1 << 16) // f)
    h = draw(st.integers(1, min(64, room)))
    w = draw(st.integers(1, min(64, max(1, room // h))))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    codes = rng.integers(0, 256, (h, w, f), dtype=np.uint8)
    dead = rng.random(f) < draw(st.sampled_from([0.0, 0.3, 1.0]))
    return codes, dead


def _expected_tile(codes: np.ndarray, sy: int, sx: int) -> np.ndarray:
    # 255 codes share 252 grey levels of the palette: code -> level -> grey value.
    level = codes.astype(np.uint16) * 251 // 254
    gray = (level * 255 // 251).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    rgb[codes == NONFINITE] = NONFINITE_RGB
    return np.repeat(np.repeat(rgb, sy, axis=0), sx, axis=1)


@SETTINGS
@given(codes_and_dead(), st.integers(0, 4))
def test_filter_grid_shape_and_tiles(case: tuple[np.ndarray, np.ndarray], gutter: int) -> None:
    """filter_grid: the documented size; each tile is its map, upscaled, or a dead tile."""
    codes, dead = case
    h, w, f = codes.shape
    if h == 1 and w > 1:  # 1-D outputs: one strip per filter
        sy, sx, rows, cols = MIN_TILE // 3, max(1, math.ceil(MIN_TILE / w)), f, 1
    else:
        sy = sx = max(1, math.ceil(MIN_TILE / max(h, w)))
        rows, cols = grid_layout(f)
    th, tw = h * sy, w * sx
    grid = filter_grid(codes, dead, gutter=gutter)
    assert grid.dtype == np.uint8
    assert grid.shape == (rows * (th + gutter) + gutter, cols * (tw + gutter) + gutter, 3)
    if gutter:
        assert (grid[:gutter] == GUTTER_RGB).all()
    for i in range(0, f, max(1, f // 16)):  # a sample of tiles keeps big grids fast
        r, c = divmod(i, cols)
        y, x = gutter + r * (th + gutter), gutter + c * (tw + gutter)
        tile = grid[y : y + th, x : x + tw]
        if dead[i]:
            # Red, crossed out in light red: nothing of the map shows through.
            colours = {tuple(int(v) for v in p) for p in tile.reshape(-1, 3)}
            assert colours <= {DEAD_RGB, (255, 160, 160)}
        else:
            assert np.array_equal(tile, _expected_tile(codes[:, :, i], sy, sx))


@SETTINGS
@given(st.integers(1, 1024), st.integers(0, 2**32 - 1))
def test_dense_strip_shape(f: int, seed: int) -> None:
    """A Dense output `(F,)` is drawn as 8-pixel cells, 32 a row, in the documented size."""
    codes = np.random.default_rng(seed).integers(0, 256, f, dtype=np.uint8)
    strip = filter_grid(codes, None, gutter=2)
    cols = min(f, 32)
    rows = math.ceil(f / cols)
    assert strip.shape == (rows * 9 + 3, cols * 9 + 3, 3) and strip.dtype == np.uint8
    magenta = (strip == NONFINITE_RGB).all(axis=-1).sum()
    assert magenta == int((codes == NONFINITE).sum()) * 64


@SETTINGS
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_png_encoder_round_trips_through_pillow(h: int, w: int, seed: int) -> None:
    """encode_png writes PNGs Pillow decodes to the same pixels: RGB, grey, RGBA, palette."""
    rng = np.random.default_rng(seed)
    for shape in [(h, w, 3), (h, w), (h, w, 4)]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        decoded = np.asarray(Image.open(io.BytesIO(encode_png(image))))
        assert np.array_equal(decoded, image)
    indices = rng.integers(0, 256, (h, w), dtype=np.uint8)
    png = encode_png(PaletteImage(indices, PALETTE))
    decoded = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert np.array_equal(decoded, PALETTE[indices])
