"""Transformers' pictures: token norms and attention drawn, written, served by the tab and put
in the report; text probes tokenized and labelled; real fits of a tiny ViT and a causal LM."""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from PIL import Image

import actwatch
from actwatch import report
from actwatch.check.text_probes import (
    check_strings,
    padding_lengths,
    read_text_probes,
    token_labels,
)
from actwatch.check.token_images import render_token_images
from actwatch.events import runs, tags
from actwatch.events.sink import Sink
from actwatch.render.tiles import INFERNO_LUT
from actwatch.render.tokens import (
    ATTENTION_PALETTE,
    TEXT_PALETTE,
    attention_codes,
    attention_grid_indices,
    attention_matrices_image,
    query_attention,
    token_norm_image,
)

from .chromium import chromium_session
from .helpers import read_events
from .tensorboard_server import Server, tensorboard_server

VIT_BLOCK, VIT_MHA, LM_MHA = "vit/block_0", "vit/block_0/mha", "lm/block_0/mha"
WORDS = ["[CLS]", "the", "cat", "sat", "on", "the", "mat", ".", "[SEP]"]


@dataclass(frozen=True)
class Picture:
    """A layer's arrays as the check hands them over (`actwatch.check.tokens.TokenPicture`)."""

    kind: str
    values: np.ndarray
    query: str = ""
    prefix: int = 0
    grid: tuple[int, int] | None = None
    token_ids: np.ndarray | None = None


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


# Rendering (no backend) ---------------------------------------------------------------------


@pytest.mark.read_path
def test_token_norms_heatmap_over_the_probe() -> None:
    """The hottest pixel sits on the high-norm patch; the class token's norm is set aside."""
    norms = np.ones(17, dtype=np.float32)
    norms[0] = 1000.0  # the class token: not drawn
    norms[1 + 2 * 4 + 3] = 5.0  # patch (2, 3)
    background = np.full((32, 32, 3), 128, dtype=np.uint8)
    image = token_norm_image(norms, (1, 4, 4), background)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    y, x = np.unravel_index(np.argmax(image.sum(axis=-1)), image.shape[:2])
    assert (y // 16, x // 16) == (2, 3)
    alone = token_norm_image(norms, (1, 4, 4), None)
    assert alone.shape == (64, 64, 3) and alone.std() > 0
    large = np.zeros((224, 224, 3), dtype=np.uint8)  # ViT-B/16: shrunk to 128 px
    assert token_norm_image(np.arange(197.0), (1, 14, 14), large).shape == (128, 128, 3)


@pytest.mark.read_path
@pytest.mark.parametrize("heads", [1, 2, 7])
def test_attention_grid_one_tile_per_head(heads: int) -> None:
    """Head h's tile is brightest on the patch it attends to; tiles laid out as filters."""
    scores = np.full((heads, 17), 0.01, dtype=np.float32)
    for h in range(heads):
        scores[h, 1 + h] = 0.9  # patch (h // 4, h % 4)
    codes = attention_codes(scores, (1, 4, 4))
    assert codes.shape == (4, 4, heads)
    for h in range(heads):
        assert np.unravel_index(np.argmax(codes[..., h]), (4, 4)) == divmod(h, 4)
        assert codes[..., h].max() == 254 and codes[..., h].min() == 0
    indices = attention_grid_indices(scores, (1, 4, 4))
    rgb = ATTENTION_PALETTE[indices]
    assert rgb.ndim == 3 and indices.shape[0] >= 24 and len(np.unique(indices)) > 2


@pytest.mark.read_path
def test_attention_reductions_and_nonfinite() -> None:
    """The class token's row, or the mean over queries; NaN drawn as the non-finite code."""
    full = np.random.default_rng(0).random((2, 17, 17)).astype(np.float32)
    np.testing.assert_array_equal(query_attention(full, 1), full[:, 0, :])
    np.testing.assert_allclose(query_attention(full, 0), full.mean(axis=1))
    scores = np.ones((1, 17), dtype=np.float32)
    scores[0, 5] = np.nan
    codes = attention_codes(scores, (1, 4, 4))
    assert codes[1, 0, 0] == 255 and codes[0, 0, 0] == 127  # constant positive: mid-grey
    with pytest.raises(ValueError, match=r"\(heads, keys\) or \(heads, queries, keys\)"):
        query_attention(np.ones(5), 0)


@pytest.mark.read_path
@pytest.mark.parametrize("tokens", [1, 9, 64, 100])
def test_attention_matrices_with_token_labels(tokens: int) -> None:
    """Each head's matrix in its panel, cells coloured by sqrt(weight), labels beside it."""
    rng = np.random.default_rng(tokens)
    weights = np.tril(rng.random((2, tokens, tokens)))
    weights /= weights.sum(axis=-1, keepdims=True)
    labels = [f"w{i}" for i in range(tokens)]
    drawn = attention_matrices_image(weights, labels)
    assert drawn.indices.dtype == np.uint8 and drawn.palette is TEXT_PALETTE
    image = TEXT_PALETTE[drawn.indices]
    cell = 14 if tokens <= 32 else 11 if tokens <= 64 else max(2, 512 // tokens)
    side = cell * tokens
    assert image.shape[1] > 2 * side and image.shape[0] > side
    # Find head 0's matrix: its top-left cell is weight 1 (the first query attends to itself).
    bright = tuple(TEXT_PALETTE[199])
    ys, xs = np.nonzero(np.all(image == bright, axis=-1))
    y0, x0 = ys.min(), xs.min()
    if tokens > 1:  # a cell of the lower triangle, then one of the upper (0: black)
        code = int(np.round(np.sqrt(weights[0, 1, 0]) * 199))
        assert tuple(image[y0 + cell + cell // 2, x0 + cell // 2]) == tuple(TEXT_PALETTE[code])
        assert tuple(image[y0 + cell // 2, x0 + cell + cell // 2]) == tuple(INFERNO_LUT[0])
    # Labels: dark text left of the matrix and above it.
    assert (image[y0 : y0 + side, : x0 - 1] < 100).any()
    assert (image[: y0 - 1, x0 : x0 + side] < 100).any()
    with pytest.raises(ValueError, match=r"\(heads, tokens, tokens\)"):
        attention_matrices_image(np.ones((2, 3, 4)), labels)


# Text probes ---------------------------------------------------------------------------------


class WordTokenizer:
    """A user's tokenizer in KerasHub's shape: called on strings, `id_to_token` back."""

    def __init__(self, sequence_length: int = 8) -> None:
        self.vocabulary = ["[PAD]", "[UNK]", *sorted(set(WORDS))]
        self.sequence_length = sequence_length
        self.pad_token_id = 0

    def id_to_token(self, token: int) -> str:
        return self.vocabulary[token]

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        ids = np.zeros((len(texts), self.sequence_length), dtype=np.int32)
        for i, text in enumerate(texts):
            words = [w if w in self.vocabulary else "[UNK]" for w in text.split()]
            found = [self.vocabulary.index(w) for w in words][: self.sequence_length]
            ids[i, : len(found)] = found
        return {"token_ids": ids, "padding_mask": ids != 0}


class CausalPreprocessor:
    """A KerasHub causal-LM preprocessor's shape: `(x, y, sample_weight)`, a `.tokenizer`."""

    def __init__(self) -> None:
        self.tokenizer = WordTokenizer(6)

    def __call__(self, texts: list[str]) -> tuple[Any, Any, Any]:
        x = self.tokenizer(texts)
        return x, x["token_ids"], x["padding_mask"]


@pytest.mark.read_path
def test_strings_tokenized_by_the_given_tokenizer() -> None:
    """Strings become the tokenizer's dict of inputs; labels and lengths come back."""
    tokenizer = WordTokenizer()
    source = read_text_probes(["the cat sat", "on the mat ."], tokenizer)
    assert source is not None and source.names == ("token_ids", "padding_mask")
    assert source.arrays is not None and source.arrays[0].shape == (2, 8)
    from actwatch.check.probes import ProbeBatch

    batch = ProbeBatch(inputs=source.arrays, display=None)
    labels = token_labels(batch, source.names, tokenizer.id_to_token)
    assert labels is not None and labels[0][:3] == ["the", "cat", "sat"]
    assert labels[1][4] == "[PAD]"
    assert padding_lengths(batch, source.names) == [3, 4]
    assert token_labels(batch, source.names, None) == [
        [str(int(t)) for t in row] for row in source.arrays[0]
    ]
    causal = read_text_probes(["the cat"], CausalPreprocessor())
    assert causal is not None and causal.arrays is not None and causal.arrays[0].shape == (1, 6)
    assert read_text_probes(np.zeros((2, 4), dtype=np.int32), tokenizer) is None


@pytest.mark.read_path
def test_strings_without_a_tokenizer_are_refused() -> None:
    """Strings that are no image files, without a tokenizer: an error that says what to do."""
    with pytest.raises(ValueError, match=r"For text probes pass the tokenizer.*preprocess="):
        check_strings(["the cat sat"], None)
    with pytest.raises(ValueError, match=r"`probes`: `preprocess` \(_Broken\) failed"):
        read_text_probes(["the cat"], _Broken())
    check_strings(["the cat sat"], WordTokenizer())  # fine with a tokenizer


@pytest.mark.read_path
def test_monitor_checks_text_probes_before_training(tmp_path: Path) -> None:
    """The constructor tokenizes strings (probes and stats_data) with a tokenizer given as
    `preprocess` and keeps its `id_to_token`; without one, strings are refused at once."""
    monitor = actwatch.ActivationMonitor(
        probes=["the cat sat"],
        stats_data=["on the mat", "the cat"],
        preprocess=WordTokenizer(),
        log_dir=str(tmp_path),
    )
    settings = monitor.settings
    assert settings.preprocess is None and settings.vocabulary is not None
    assert settings.vocabulary(2) == WordTokenizer().vocabulary[2]
    assert settings.stats_source is not None and settings.stats_source.names == (
        "token_ids",
        "padding_mask",
    )
    with pytest.raises(ValueError, match=r"Invalid value for argument `probes`: strings"):
        actwatch.ActivationMonitor(probes=["the cat sat"], log_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"argument `stats_data`: `preprocess` \(_Broken\)"):
        actwatch.ActivationMonitor(
            probes=np.ones((1, 8), "int32"), stats_data=["x"], preprocess=_Broken(),
            log_dir=str(tmp_path),
        )  # fmt: skip


class _Broken(WordTokenizer):
    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        raise RuntimeError("no vocabulary file")


# Written, served, reported (no backend: actwatch's own sink) ---------------------------------


def _vision_pictures() -> dict[str, Picture]:
    rng = np.random.default_rng(1)
    norms = rng.random((2, 17)).astype(np.float32)
    norms[:, 6] = 9.0  # patch (1, 1): a high-norm token
    attention = rng.random((2, 4, 17)).astype(np.float32)
    attention /= attention.sum(axis=-1, keepdims=True)
    return {
        f"tokens/{VIT_BLOCK}": Picture("tokens", norms, prefix=1, grid=(4, 4)),
        f"attention/{VIT_MHA}": Picture("attention", attention, "class", 1, (4, 4)),
    }


def _text_pictures() -> dict[str, Picture]:
    ids = np.arange(2 * len(WORDS)).reshape(2, -1) % len(WORDS)
    weights = np.tril(np.random.default_rng(2).random((2, 2, len(WORDS), len(WORDS))))
    weights /= weights.sum(axis=-1, keepdims=True)
    return {f"attention/{LM_MHA}": Picture("attention", weights.astype(np.float32), "all", 0,
                                           None, ids)}  # fmt: skip


@pytest.fixture(scope="module")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two runs written through actwatch's sink: a ViT's pictures and a text model's, with
    token labels, at two checks each, and the per-layer scalars the heatmap offers."""
    root = tmp_path_factory.mktemp("pictures")
    display = np.random.default_rng(3).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    for name, pictures, layers, labels in (
        ("vit", _vision_pictures(), (VIT_BLOCK, VIT_MHA), None),
        ("lm", _text_pictures(), (LM_MHA,), [WORDS, WORDS[::-1]]),
    ):
        sink = Sink(str(root / name))
        for step in (0, 10):
            scalars = {
                tags.layer_tag(metric, layer): (0.5 + step / 100, tags.describe("rms", layer))
                for metric in ("zero_fraction", "attention_entropy")
                for layer in layers
            }

            def render(pictures: Any = pictures, labels: Any = labels) -> Any:
                images = render_token_images(
                    tokens=pictures, display=display, labels=labels, lengths=[9, 5]
                )
                return images

            sink.submit(step, scalars=scalars, render=render)
        sink.close()
    return root


@pytest.mark.read_path
def test_pictures_read_back_by_tensorboard(logdir: Path) -> None:
    """Every picture tag at every check, decoded by TensorBoard's reader, not blank."""
    vit, lm = read_events(logdir / "vit"), read_events(logdir / "lm")
    expected = {
        tags.tokens_tag(VIT_BLOCK, 0),
        tags.tokens_tag(VIT_BLOCK, 1),
        tags.attention_tag(VIT_MHA, 0),
        tags.attention_tag(VIT_MHA, 1),
    }
    assert set(vit.images) == expected
    for tag, images in vit.images.items():
        assert [step for step, _ in images] == [0, 10]
        for _, image in images:
            assert image.std() > 10, tag
    tokens = vit.images[tags.tokens_tag(VIT_BLOCK, 0)][0][1]
    assert tokens.shape == (64, 64, 3)
    y, x = np.unravel_index(np.argmax(tokens.astype(int).sum(-1) - 0), tokens.shape[:2])
    assert abs(y // 16 - 1) <= 1 and abs(x // 16 - 1) <= 1  # near the high-norm patch
    assert set(lm.images) == {tags.attention_tag(LM_MHA, 0), tags.attention_tag(LM_MHA, 1)}
    full = lm.images[tags.attention_tag(LM_MHA, 0)][0][1]
    cut = lm.images[tags.attention_tag(LM_MHA, 1)][0][1]
    assert cut.shape[0] < full.shape[0]  # probe 1 cut at its 5 tokens before padding
    assert tags.parse_image_tag(tags.attention_tag(LM_MHA, 1)) == ("attention", LM_MHA, 1)
    assert tags.parse_image_tag(tags.tokens_tag(VIT_BLOCK, 0)) == ("tokens", VIT_BLOCK, 0)


@pytest.fixture(scope="module")
def server(logdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("tb") / "tb.log"
    with tensorboard_server(logdir, log, load_fast="false") as running:
        yield running


@pytest.mark.read_path
def test_tab_serves_the_pictures(server: Server) -> None:
    """The tab lists the layers as drawn, every picture tag and step, and serves the PNGs;
    the heatmap offers the new metrics."""
    listing = server.json("/data/plugin/actwatch/runs")
    assert listing["vit"]["drawn"] == [VIT_BLOCK, VIT_MHA]
    assert listing["lm"]["drawn"] == [LM_MHA]
    assert "attention_entropy" in listing["vit"]["metrics"]
    assert listing["vit"]["probes"] == 2
    images = server.json("/data/plugin/actwatch/images", run="vit")
    assert images[tags.attention_tag(VIT_MHA, 0)] == [0, 10]
    assert images[tags.tokens_tag(VIT_BLOCK, 1)] == [0, 10]
    for run, tag in (
        ("vit", tags.attention_tag(VIT_MHA, 0)),
        ("lm", tags.attention_tag(LM_MHA, 0)),
    ):
        status, headers, body = server.get("/data/plugin/actwatch/image", run=run, tag=tag, step=10)
        assert status == 200 and headers["Content-Type"] == "image/png"
        assert _decode(body).std() > 10
    status, _, script = server.get("/data/plugin/actwatch/index.js")
    assert status == 200 and b'"tokens", "attention"' in script


@pytest.mark.read_path
def test_tab_page_shows_the_pictures(server: Server, tmp_path: Path) -> None:
    """In headless Chromium the tab shows each layer's token and attention pictures, loaded,
    with their captions; no console error."""
    frame = "document.querySelector('iframe').contentDocument"
    idle = f"""(() => {{ const d = {frame}; if (!d || !d.body) return false;
      return d.body.dataset.state === 'idle' && d.querySelector('.aw-run') !== null &&
        [...d.images].every(i => i.complete); }})()"""
    with chromium_session(tmp_path, window="1400,1000") as chromium:
        chromium.open(f"{server.url}/#actwatch")
        deadline = time.monotonic() + 60
        while not chromium.evaluate(idle):
            assert time.monotonic() < deadline, "the actwatch page never finished loading"
            time.sleep(0.1)
        shown = chromium.evaluate(
            f"""[...{frame}.querySelectorAll('.aw-run .aw-layer img')].map(i =>
            [i.closest('.aw-run').dataset.run, i.dataset.tag, i.naturalWidth])"""
        )
        captions = chromium.evaluate(f"{frame}.body.innerText")
        errors = [e for e in chromium.errors() if "favicon.ico" not in e]
    assert sorted((run, tag) for run, tag, _ in shown) == [
        ("lm", tags.attention_tag(LM_MHA, 0)),
        ("vit", tags.attention_tag(VIT_MHA, 0)),
        ("vit", tags.tokens_tag(VIT_BLOCK, 0)),
    ]
    assert all(width > 0 for _, _, width in shown)
    assert "token L2 norms on the patch grid" in captions and "attention per head" in captions
    assert not errors, errors


@pytest.mark.read_path
def test_report_shows_the_pictures(logdir: Path, tmp_path: Path) -> None:
    """The report has a section of token and attention pictures, the PNGs as written."""
    log = runs.read_run(logdir / "lm")
    assert sorted(log.pictures[tags.ATTENTION][LM_MHA]) == [0, 10]
    out = report.write_report(logdir, tmp_path / "report.html", progress=False)
    page = out.read_text()
    assert 'id="transformers"' in page and "Tokens and attention" in page
    section = page.split('id="transformers"', 1)[1]
    for layer, what in ((VIT_BLOCK, "token norms"), (VIT_MHA, "attention"), (LM_MHA, "attention")):
        assert f"{layer}: {what}" in section
    inline = re.findall(r'alt="attention of lm/[^"]*" src="data:image/png;base64,([^"]+)"', section)
    vit = runs.read_run(logdir / "vit")
    assert len(inline) == 2  # first and last check
    assert base64.b64decode(inline[-1]) == log.pictures[tags.ATTENTION][LM_MHA][10]
    files = sorted(p.name for p in (tmp_path / "report_figures").iterdir())
    assert sum("-attention-" in name for name in files) == 4
    assert sum("-tokens-" in name for name in files) == 2
    assert vit.pictures[tags.TOKENS][VIT_BLOCK][0].startswith(b"\x89PNG")


# Real fits (each backend) --------------------------------------------------------------------


class ClassToken(keras.layers.Layer):
    """Prepends a learned class token to the patch tokens."""

    def build(self, input_shape: Any) -> None:
        self.token = self.add_weight(shape=(1, 1, input_shape[-1]), initializer="zeros")

    def call(self, x: Any) -> Any:
        batch = keras.ops.shape(x)[0]
        token = keras.ops.broadcast_to(self.token, (batch, 1, keras.ops.shape(x)[-1]))
        return keras.ops.concatenate([token, x], axis=1)


def _block(x: Any, width: int, *, causal: bool, name: str) -> Any:
    """A pre-LN transformer block of MultiHeadAttention (2 heads) and a GELU MLP."""
    y = keras.layers.LayerNormalization(name=f"{name}_ln1")(x)
    y = keras.layers.MultiHeadAttention(2, width // 2, name=f"{name}_mha")(
        y, y, use_causal_mask=causal
    )
    x = keras.layers.Add(name=f"{name}_attn_add")([x, y])
    y = keras.layers.LayerNormalization(name=f"{name}_ln2")(x)
    y = keras.layers.Dense(2 * width, activation="gelu", name=f"{name}_mlp")(y)
    y = keras.layers.Dense(width, name=f"{name}_proj")(y)
    return keras.layers.Add(name=f"{name}_out")([x, y])


def tiny_vit() -> keras.Model:
    """32 px images, patch 8 (4x4 patches), a class token, one block of width 16."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Conv2D(16, 8, strides=8, name="patchify")(inputs)
    x = ClassToken(name="cls")(keras.layers.Reshape((16, 16), name="patches")(x))
    x = _block(x, 16, causal=False, name="block_0")
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="head")(x))
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    return model


def tiny_lm(vocabulary: int, length: int) -> keras.Model:
    """A causal LM of one block over `{"token_ids", "padding_mask"}` (KerasHub's inputs)."""
    keras.utils.set_random_seed(0)
    ids = keras.Input((length,), dtype="int32", name="token_ids")
    mask = keras.Input((length,), dtype="int32", name="padding_mask")
    x = keras.layers.Embedding(vocabulary, 16, name="embed")(ids)
    x = x * keras.ops.expand_dims(keras.ops.cast(mask, "float32"), -1)
    x = _block(x, 16, causal=True, name="block_0")
    model = keras.Model({"token_ids": ids, "padding_mask": mask},
                        keras.layers.Dense(vocabulary, name="logits")(x))  # fmt: skip
    model.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _png_images(log_dir: Path, kind: str) -> dict[str, list[tuple[int, np.ndarray]]]:
    found = read_events(log_dir).images
    return {tag: images for tag, images in found.items() if tag.startswith(f"{kind}/")}


def test_vit_fit_writes_token_and_attention_pictures(tmp_path: Path) -> None:
    """A functional ViT's fit: token norms over the probe and per-head class-token attention
    on the 4x4 patch grid (the class token set aside), at each check."""
    model = tiny_vit()
    rng = np.random.default_rng(0)
    x = rng.random((16, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 3, 16)
    monitor = actwatch.ActivationMonitor(probes=x[:2], log_dir=str(tmp_path / "vit"))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[monitor])
    run = Path(monitor.run_dir)
    tokens, attention = _png_images(run, "tokens"), _png_images(run, "attention")
    assert {tags.parse_image_tag(t)[2] for t in tokens} == {0, 1}
    assert any("mha" in tags.parse_image_tag(t)[1] for t in attention)
    # A token layer's channel mean (a strip of 17 tokens) is no heatmap of the probe: its
    # `tokens/` picture takes the heatmap's place.
    token_layers = {tags.parse_image_tag(t)[1] for t in tokens}
    heatmaps = {tags.parse_image_tag(t)[1] for t in _png_images(run, "heatmap")}
    assert heatmaps and not heatmaps & token_layers, heatmaps  # the patchify conv keeps its own
    for tag, images in tokens.items():
        assert [s for s, _ in images] == [0, 2], tag  # before training and after the epoch
        for _, image in images:
            assert image.shape == (64, 64, 3) and image.std() > 1, tag
    for tag, images in attention.items():
        for _, image in images:
            # Two heads of the 16 patches: tiles of 4x4 upscaled to 24 px, side by side.
            # With the class token among the keys (17) they would lie on no grid.
            assert image.shape == (28, 54, 3) and image.std() > 1, tag


def test_text_fit_from_strings_labels_the_tokens(tmp_path: Path) -> None:
    """A causal LM fed `{"token_ids", "padding_mask"}`: string probes tokenized by the given
    tokenizer, per-head matrices labelled by its tokens, cut at each probe's length."""
    tokenizer = WordTokenizer(8)
    model = tiny_lm(len(tokenizer.vocabulary), 8)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, len(tokenizer.vocabulary), (16, 8)).astype("int32")
    data = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    texts = ["the cat sat", "on the mat ."]
    monitor = actwatch.ActivationMonitor(
        probes=texts, preprocess=tokenizer, log_dir=str(tmp_path / "lm")
    )
    model.fit(data, np.roll(ids, -1, axis=1), batch_size=8, epochs=1, verbose=0,
              callbacks=[monitor])  # fmt: skip
    attention = _png_images(Path(monitor.run_dir), "attention")
    layers = {tags.parse_image_tag(t)[1] for t in attention}
    assert layers and all("mha" in layer for layer in layers)
    for tag, images in attention.items():
        probe = tags.parse_image_tag(tag)[2]
        words = texts[probe].split()
        # The picture of exactly these labels and this many tokens (2 heads): its size.
        expected = attention_matrices_image(np.zeros((2, len(words), len(words))), words)
        for _, image in images:
            assert image.shape[:2] == expected.indices.shape, tag
            assert (image != 255).any(axis=-1).mean() > 0.2  # cells and labels drawn


def test_kerashub_bert_from_strings_through_its_preprocessor(tmp_path: Path) -> None:
    """A KerasHub BERT classifier's probes as strings through its own preprocessor: the
    attention matrices are labelled with the WordPiece tokens, cut at the padding."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("KerasHub's tokenizers run on TensorFlow (blocked in this run)")
    keras_hub = pytest.importorskip("keras_hub")
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "mat"]
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=8)
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary), num_layers=1, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=8,
    )  # fmt: skip
    inputs = {k: keras.Input((8,), dtype="int32", name=k) for k in backbone.input}
    model = keras.Model(inputs, keras.layers.Dense(2)(backbone(inputs)["pooled_output"]))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = {k: np.asarray(v) for k, v in preprocessor(["the cat sat"] * 4).items()}
    monitor = actwatch.ActivationMonitor(
        probes=["the cat sat", "the mat"], preprocess=preprocessor, log_dir=str(tmp_path)
    )
    model.fit(x, np.zeros(4, "int32"), epochs=1, verbose=0, callbacks=[monitor])
    attention = _png_images(Path(monitor.run_dir), "attention")
    short = [images for tag, images in attention.items() if tag.endswith("probe_1")]
    assert len(short) == 1
    expected = attention_matrices_image(np.zeros((2, 4, 4)), ["[CLS]", "the", "mat", "[SEP]"])
    assert all(image.shape[:2] == expected.indices.shape for _, image in short[0])
