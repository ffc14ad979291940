"""Transformers (issue 20): default layers, attention figures at the softmax, token figures,
the logit-growth alert, on Keras' MultiHeadAttention and KerasHub backbones (tiny configs,
random weights), trained with `fit` and read back with TensorBoard's own reader."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

import actwatch
from actwatch.check.layers import resolve_layers
from actwatch.check.pipeline import CheckPipeline
from actwatch.check.stats import LayerStats
from actwatch.check.tokens import reduce_tokens, token_figures
from actwatch.diagnose.attention import LogitWatch
from actwatch.events import tags

from .helpers import read_events
from .test_text_padding import ROWS, attention_reference, between, dormant_reference, numpy_of

L = keras.layers
#: Each test starts from `RNG` and Keras' seed set anew from it (tests/conftest.py).
SEED = 20
RNG = np.random.default_rng(SEED)


VOCAB, T, D = 24, 12, 32


def causal_lm(blocks: int = 2) -> keras.Model:
    """Embedding, pre-LN blocks of causal MultiHeadAttention and a GELU MLP, a linear head."""
    tokens = keras.Input((T,), dtype="int32")
    x = L.Embedding(VOCAB, D, name="embed")(tokens)
    for i in range(blocks):
        h = L.LayerNormalization(name=f"ln_a{i}")(x)
        h = L.MultiHeadAttention(2, D // 2, name=f"mha{i}")(h, h, use_causal_mask=True)
        x = L.Add(name=f"res_a{i}")([x, h])
        h = L.LayerNormalization(name=f"ln_m{i}")(x)
        h = L.Dense(2 * D, activation="gelu", name=f"mlp{i}")(h)
        x = L.Add(name=f"block{i}")([x, L.Dense(D, name=f"proj{i}")(h)])
    return keras.Model(tokens, L.Dense(VOCAB, name="head")(x))


def functional_vit() -> keras.Model:
    """16 px images, 4 px patches (16 tokens, no class token), one MHA + GELU block."""
    images = keras.Input((16, 16, 3))
    x = L.Conv2D(D, 4, strides=4, name="patchify")(images)
    x = L.Reshape((16, D))(x)
    h = L.LayerNormalization()(x)
    x = L.Add(name="res_a")([x, L.MultiHeadAttention(2, D // 2, name="mha")(h, h)])
    h = L.Dense(2 * D, activation="gelu", name="mlp")(L.LayerNormalization()(x))
    x = L.Add(name="block")([x, L.Dense(D)(h)])
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(images, L.Dense(3)(x))


def fit_monitored(model: keras.Model, x: Any, y: Any, log_dir: Path, **kw: Any) -> Any:
    if not model.compiled:
        model.compile("adamw", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    probes = {k: v[:2] for k, v in x.items()} if isinstance(x, dict) else x[:2]
    monitor = actwatch.ActivationMonitor(probes, str(log_dir), **kw)
    model.fit(x, y, batch_size=4, epochs=1, callbacks=[monitor], verbose=0)
    return monitor


def scalars_of(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    return read_events(log_dir).scalars


def as_scalars(stats: dict[str, LayerStats]) -> dict[str, list[tuple[int, float]]]:
    """One check's per-layer scalars, keyed by tag as read back from event files."""
    return {
        tags.layer_tag(metric, path): [(0, value)]
        for path, s in stats.items()
        for metric, value in s.scalars().items()
    }


def assert_transformer_scalars(
    scalars: dict[str, list[tuple[int, float]]], attention: list[str], blocks: list[str]
) -> None:
    for path in attention:
        for metric in ("attention_entropy", "attention_entropy_min", "attention_sink"):
            values = [v for _, v in scalars[tags.layer_tag(metric, path)]]
            assert values and all(0.0 <= v <= 1.0 + 1e-6 for v in values), (metric, values)
        logits = [v for _, v in scalars[tags.layer_tag("attention_logit_max", path)]]
        assert logits and all(0.0 < v < 1e3 for v in logits)
    for path in blocks:
        for metric in ("token_norm_ratio", "kurtosis"):
            assert all(v >= 1.0 - 1e-6 for _, v in scalars[tags.layer_tag(metric, path)])
        assert all(-1.0 <= v <= 1.0 for _, v in scalars[tags.layer_tag("token_similarity", path)])
        assert all(v == 0.0 for _, v in scalars[tags.layer_tag("massive_activation", path)])


def test_causal_lm_defaults_fit_and_no_alert(tmp_path: Path) -> None:
    """A Dense/MHA-only model has defaults now; a healthy fit raises no attention alert, and
    GELU MLPs no dead-filter alert."""
    model = causal_lm()
    x = RNG.integers(0, VOCAB, (16, T)).astype("int32")
    watched = resolve_layers(model, None, x[:2])
    assert {w.path: w.role for w in watched} == {
        "mha0": "attention",
        "mlp0": "mlp",
        "block0": "block",
        "mha1": "attention",
        "mlp1": "mlp",
        "block1": "block",
    }
    y = np.roll(x, -1, axis=1)
    monitor = fit_monitored(
        model, x, y, tmp_path, stats_data=x[:8], histograms=False, feature_rank=False, images=False
    )
    scalars = scalars_of(tmp_path)
    assert_transformer_scalars(scalars, ["mha0", "mha1"], ["block0", "block1"])
    assert "dormant_fraction/mlp0" in scalars and "dead_fraction/mlp0" not in scalars
    kinds = ("logit_growth", "attention_collapse", "massive_activation", "dead")
    assert not [a for a in monitor.alerts if a.kind in kinds]
    for mha in (model.get_layer("mha0"), model.get_layer("mha1")):  # left as it was
        assert "_compute_attention" not in vars(mha) and "call" not in vars(mha._softmax)


def _reference(model: keras.Model, name: str, x: np.ndarray) -> dict[str, float]:
    """Entropy, sink and logit max of `name` from the layer's own attention scores."""
    mha = model.get_layer(name)
    h = keras.Model(model.inputs, model.get_layer(f"ln_a{name[-1]}").output)(x)
    _, scores = mha(h, h, use_causal_mask=True, return_attention_scores=True)
    a = np.asarray(keras.ops.convert_to_numpy(scores), dtype=np.float64)  # (B, H, T, T)
    q = keras.ops.convert_to_numpy(mha._query_dense(h)).astype(np.float64)
    k = keras.ops.convert_to_numpy(mha._key_dense(h)).astype(np.float64)
    z = np.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1])
    valid = np.tril(np.ones((T, T), dtype=bool))
    rows = np.arange(T) >= 1  # queries with two keys or more
    plogp = np.where(valid & (a > 0), a * np.log(np.where(a > 0, a, 1.0)), 0.0).sum(-1)
    entropy = -plogp / np.log(np.maximum(valid.sum(-1), 2))
    return {
        "attention_entropy": float(entropy[..., rows].mean()),
        "attention_entropy_min": float(entropy[..., rows].mean(axis=(0, 2)).min()),
        "attention_logit_max": float(np.abs(np.where(valid, z, 0.0)).max()),
        "attention_sink": float(a[..., rows, 0].mean()),
    }


def test_causal_attention_equals_numpy_on_the_layers_own_scores() -> None:
    """Masked keys left out: each figure equals numpy on `return_attention_scores=True`."""
    keras.utils.set_random_seed(3)
    model = causal_lm(blocks=1)
    mha = model.get_layer("mha0")
    mha._query_dense.kernel.assign(mha._query_dense.kernel * 8.0)  # peaked attention
    x = RNG.integers(0, VOCAB, (6, T)).astype("int32")
    watched = resolve_layers(model, None, x[:2])
    result = CheckPipeline(model, watched, stats_samples=4, signals=False).run(x)
    got = dict(result.stats["mha0"].transformer or {})
    want = _reference(model, "mha0", x[:4])
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=2e-3, abs=2e-4), key
    assert want["attention_entropy"] < 0.9  # the check is not of uniform attention
    picture = result.tokens["attention/mha0"]
    assert picture.values.shape == (2, 2, T, T) and picture.query == "all"
    assert np.all(picture.values[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0)
    np.testing.assert_array_equal(picture.token_ids, x[4:])
    norms = result.tokens["tokens/block0"].values
    assert norms.shape == (2, T) and np.all(norms > 0)


def test_functional_vit_pipeline() -> None:
    model = functional_vit()
    x = RNG.normal(size=(6, 16, 16, 3)).astype("float32")
    watched = resolve_layers(model, None, x[:2])
    assert [(w.path, w.role) for w in watched if w.role] == [
        ("mha", "attention"),
        ("mlp", "mlp"),
        ("block", "block"),
    ]
    result = CheckPipeline(model, watched, stats_samples=4, signals=False).run(x)
    assert_transformer_scalars(as_scalars(result.stats), ["mha"], ["block"])
    picture = result.tokens["attention/mha"]
    assert picture.query == "mean" and picture.prefix == 0 and picture.grid == (4, 4)
    assert picture.values.shape == (2, 2, 16)
    np.testing.assert_allclose(picture.values.sum(-1), 1.0, rtol=1e-4)


class Block(L.Layer):
    """A subclassed pre-LN transformer block."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.norm_a, self.norm_m = L.LayerNormalization(), L.LayerNormalization()
        self.mha = L.MultiHeadAttention(2, D // 2)
        self.up, self.down = L.Dense(2 * D, activation="gelu"), L.Dense(D)

    def call(self, x: Any) -> Any:
        h = self.norm_a(x)
        x = x + self.mha(h, h, use_causal_mask=True)
        return x + self.down(self.up(self.norm_m(x)))


class SubclassedLM(keras.Model):
    def __init__(self) -> None:
        super().__init__()
        self.embed = L.Embedding(VOCAB, D)
        self.blocks = [Block(), Block()]
        self.head = L.Dense(VOCAB)

    def call(self, tokens: Any) -> Any:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def test_subclassed_transformer() -> None:
    """Blocks and their attention found by attribute path, captured in the check's call."""
    model = SubclassedLM()
    x = RNG.integers(0, VOCAB, (6, T)).astype("int32")
    model(x[:1])
    watched = resolve_layers(model, None, x[:2])
    assert [(w.path, w.role) for w in watched if w.role] == [
        ("blocks/0/mha", "attention"),
        ("blocks/0/up", "mlp"),
        ("blocks/0", "block"),
        ("blocks/1/mha", "attention"),
        ("blocks/1/up", "mlp"),
        ("blocks/1", "block"),
    ]
    result = CheckPipeline(model, watched, stats_samples=4, signals=False).run(x)
    paths = ["blocks/0/mha", "blocks/1/mha"]
    assert_transformer_scalars(as_scalars(result.stats), paths, ["blocks/0", "blocks/1"])
    assert result.tokens["attention/blocks/1/mha"].values.shape == (2, 2, T, T)


def _stats(figures: dict[str, float], **kw: Any) -> LayerStats:
    return LayerStats(
        zero_fraction=0.5,
        mean=0.0,
        hoyer=0.1,
        nonfinite=0,
        values=T * D,
        nonnegative=False,
        dead=np.zeros(D, bool),
        dormant=np.zeros(D, bool),
        transformer=figures,
        **kw,
    )


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="host logic: runs once, on JAX")
def test_logit_growth_alert_fires_once_when_large_and_growing() -> None:
    """Above the limit and 1.5x the previous check: one alert, then none until it falls."""
    watch = LogitWatch()
    raised = []
    for step, value in enumerate([10.0, 40.0, 120.0, 400.0, 30.0, 90.0, 100.0]):
        stats = _stats({"attention_logit_max": value, "attention_entropy": 0.5})
        raised += watch.update({"mha0": stats}, step=step, epoch=0, learning_rate=0.3)
    assert [(a.step, a.kind, a.layer) for a in raised] == [
        (2, "logit_growth", "mha0"),
        (5, "logit_growth", "mha0"),
    ]
    assert "QK-layernorm" in raised[0].message and "0.3" in raised[0].message
    assert "`mha0`" in raised[0].markdown()
    assert stats.scalars()["attention_logit_max"] == 100.0


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="host logic: runs once, on JAX")
def test_attention_collapse_and_massive_activation_alerts() -> None:
    """Collapse: a head below COLLAPSE_ENTROPY (not when already there at the first check,
    as a pretrained model's sink heads), or the mean halved to below COLLAPSE_BELOW; once
    until it clears. Massive: Sun et al.'s rule, with the token and channel."""
    watch = LogitWatch()
    entropies = [(0.9, 0.9), (0.3, 0.2), (0.2, 0.01), (0.2, 0.01), (0.5, 0.4), (0.08, 0.05)]
    raised = []
    for step, (mean, lowest) in enumerate(entropies):
        figures = {"attention_entropy": mean, "attention_entropy_min": lowest}
        sink = {"attention_entropy": 0.6, "attention_entropy_min": 0.001}  # sharp from start
        stats = {"mha0": _stats(figures), "sink": _stats(sink)}
        raised += watch.update(stats, step=step, epoch=0, learning_rate=1e-3)
    assert [(a.step, a.kind, a.layer) for a in raised] == [
        (2, "attention_collapse", "mha0"),  # a head at 0.01
        (5, "attention_collapse", "mha0"),  # 0.5 -> 0.08: fell below half, under 0.1
    ]
    assert "down from 0.5" in raised[1].message and "warmup" in raised[0].message
    block = _stats(
        {"massive_activation": 1.0}, max_abs=5000.0, outlier_ratio=2500.0, peak_at=(1, 7, 5)
    )
    first = watch.update({"block0": block}, step=7, epoch=0, learning_rate=None)
    again = watch.update({"block0": block}, step=8, epoch=0, learning_rate=None)
    assert [a.kind for a in first] == ["massive_activation"] and not again
    assert "token 7, channel 5" in first[0].message and "2500x" in first[0].message
    assert (
        LogitWatch().update(
            {"b": _stats({"massive_activation": 0.0})}, step=0, epoch=None, learning_rate=None
        )
        == ()
    )


def _benchmark() -> Any:
    """benchmarks/attention_logits.py as a module (the reproduction's model and data)."""
    path = Path(__file__).parents[1] / "benchmarks" / "attention_logits.py"
    spec = importlib.util.spec_from_file_location("actwatch_benchmarks_attention", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reproduction_alerts_before_divergence_and_not_with_qk_norm(tmp_path: Path) -> None:
    """benchmarks/attention_logits.py, small: a 1-block pre-LN LM (width 32, 12 tokens) at
    peak lr 1.0 after a 16-step warmup, checked every 2 batches: without QK-norm an attention
    alert comes at a check before the loss diverges (a batch loss non-finite or above 1.5x
    the lowest so far); with QK-layernorm at the same rate, no attention alert. On every
    backend (issue 20: the reproduction passes on all three)."""
    bench = _benchmark()
    x, y = bench.markov(384, tokens=12)  # 24 steps
    found = {}
    for qk_norm in (False, True):
        model = bench.language_model(qk_norm, width=32, tokens=12, blocks=1)
        rate = keras.optimizers.schedules.CosineDecay(
            0.0, 16, alpha=1.0, warmup_target=1.0, warmup_steps=16
        )
        model.compile(
            keras.optimizers.AdamW(rate, weight_decay=0.1),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        monitor = actwatch.ActivationMonitor(
            x[:2],
            str(tmp_path / str(qk_norm)),
            stats_data=x[:4],
            every_n_batches=2,
            images=False,
            histograms=False,
            feature_rank=False,
            update_ratio_bounds=None,
        )
        divergence = bench.Divergence()
        model.fit(x, y, batch_size=16, epochs=1, callbacks=[monitor, divergence], verbose=0)
        steps = [a.step for a in monitor.alerts if a.kind in bench.ATTENTION_ALERTS]
        found[qk_norm] = (steps, divergence.diverged)
    (steps, diverged), (qk_steps, _) = found[False], found[True]
    assert diverged is not None and steps and min(steps) < diverged, found
    assert qk_steps == [], found


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="same ops everywhere: runs on JAX")
def test_token_figures_equal_numpy_and_find_the_massive_activation() -> None:
    x = RNG.normal(size=(3, 10, 16)).astype("float32")
    x[1, 7, 5] = 5000.0  # Sun et al.: > 100 and > 1000x the median |x|
    got = token_figures(
        keras.tree.map_structure(
            keras.ops.convert_to_numpy, reduce_tokens(keras.ops.convert_to_tensor(x))
        ),
        x.shape,
    )
    x64 = x.astype(np.float64)
    norms = np.linalg.norm(x64, axis=-1)
    units = x64 / norms[..., None]
    cosine = np.einsum("ntd,nsd->nts", units, units)
    off = ~np.eye(10, dtype=bool)
    rms = np.sqrt((x64**2).mean(axis=(0, 1)))
    assert got.token_norm_ratio == pytest.approx(norms.max() / np.median(norms), rel=1e-4)
    assert got.token_similarity == pytest.approx(cosine[:, off].mean(), abs=1e-5)
    assert got.kurtosis == pytest.approx((rms**4).mean() / (rms**2).mean() ** 2, rel=1e-4)
    assert got.massive and got.where == (1, 7, 5) and got.peak == 5000.0
    x[1, 7, 5] = 50.0  # under 100: not massive
    again = reduce_tokens(keras.ops.convert_to_tensor(x))
    assert not token_figures(
        keras.tree.map_structure(keras.ops.convert_to_numpy, again), x.shape
    ).massive
    # A median sample of padding only (NaN) gives no median: no massive activation claimed
    # (a median of 0 made any peak over 100 massive).
    x[1, 7, 5] = 5000.0
    device = keras.tree.map_structure(
        keras.ops.convert_to_numpy, reduce_tokens(keras.ops.convert_to_tensor(x))
    )
    assert token_figures(device, x.shape).massive
    device["abs_sample"] = np.full_like(device["abs_sample"], np.nan)
    assert not token_figures(device, x.shape).massive


# KerasHub backbones: tiny configs, random weights, never from_preset -------------------------


def _hub() -> Any:
    return pytest.importorskip("keras_hub")


def _text_data(names: list[str]) -> dict[str, np.ndarray]:
    """A KerasHub text backbone's inputs, as a dict (as the backbone takes them)."""
    given = {
        "token_ids": RNG.integers(1, VOCAB, (8, T)).astype("int32"),
        "segment_ids": np.zeros((8, T), "int32"),
        "padding_mask": np.ones((8, T), "int32"),
    }
    given["padding_mask"][:, T - 3 :] = 0
    return {n: given[n] for n in names}


def _rows(x: Any, n: int) -> Any:
    return {k: v[:n] for k, v in x.items()} if isinstance(x, dict) else x[:n]


def _watched(model: keras.Model, x: Any, n_layers: int = 2) -> list[Any]:
    watched = resolve_layers(model, None, _rows(x, 2))
    roles = [w.role for w in watched]
    assert roles.count("attention") == n_layers and roles.count("block") == n_layers, watched
    return watched


def _paths(watched: list[Any], role: str) -> list[str]:
    return [w.path for w in watched if w.role == role]


def _fit_hub(model: keras.Model, x: Any, y: Any, log_dir: Path) -> None:
    """`fit` with the monitor; every attention layer's and block's scalars read back."""
    watched = _watched(model, x)
    fit_monitored(model, x, y, log_dir, images=False, histograms=False, feature_rank=False)
    scalars = scalars_of(log_dir)
    assert_transformer_scalars(scalars, _paths(watched, "attention"), _paths(watched, "block"))


def _check_hub(model: keras.Model, x: Any) -> Any:
    """One check of the pipeline (no fit) on 4 statistics samples and 2 probes."""
    watched = _watched(model, x)
    given = _rows(x, 6)  # the pipeline takes a list in the order of model.inputs
    feed = [given[t.name] for t in model.inputs] if isinstance(given, dict) else given
    result = CheckPipeline(model, watched, stats_samples=4, signals=False).run(feed)
    blocks = _paths(watched, "block")
    assert_transformer_scalars(as_scalars(result.stats), _paths(watched, "attention"), blocks)
    return watched, result


def test_keras_hub_vit() -> None:
    hub = _hub()
    backbone = hub.models.ViTBackbone(
        image_shape=(16, 16, 3),
        patch_size=4,
        num_layers=2,
        num_heads=2,
        hidden_dim=D,
        mlp_dim=2 * D,
    )
    model = keras.Model(backbone.inputs, L.Dense(3)(backbone.output[:, 0]))
    x = RNG.normal(size=(8, 16, 16, 3)).astype("float32")
    watched, _ = _check_hub(model, x)  # one check: the fit path is the LM's and Gemma's
    assert _paths(watched, "attention")[0].endswith("encoder_layers/0/mha")


def test_keras_hub_dinov2_with_registers() -> None:
    hub = _hub()
    backbone = hub.models.DINOV2Backbone(
        patch_size=4,
        num_layers=2,
        hidden_dim=D,
        num_heads=2,
        intermediate_dim=2 * D,
        num_register_tokens=2,
        use_swiglu_ffn=False,
        image_shape=(16, 16, 3),
        position_embedding_shape=(16, 16),
    )
    model = keras.Model(backbone.inputs, L.Dense(3)(backbone.output[:, 0]))
    x = RNG.normal(size=(8, 16, 16, 3)).astype("float32")
    _, result = _check_hub(model, x)
    picture = next(p for k, p in result.tokens.items() if k.startswith("tokens/"))
    assert (picture.prefix, picture.grid, picture.values.shape) == (3, (4, 4), (2, 19))
    picture = next(p for k, p in result.tokens.items() if k.startswith("attention/"))
    assert (picture.query, picture.prefix, picture.values.shape) == ("class", 3, (2, 2, 19))


def test_keras_hub_bert_padding_masked() -> None:
    hub = _hub()
    names = ["token_ids", "segment_ids", "padding_mask"]
    backbone = hub.models.BertBackbone(
        vocabulary_size=VOCAB,
        num_layers=2,
        num_heads=2,
        hidden_dim=D,
        intermediate_dim=2 * D,
        max_sequence_length=T,
    )
    x = _text_data(names)  # the backbone as built: a dict of inputs, fed a dict
    model = keras.Model(backbone.input, L.Dense(VOCAB)(backbone.output["sequence_output"]))
    watched, result = _check_hub(model, x)
    assert any(w.path.endswith("transformer_layer_0/self_attention_layer") for w in watched)
    picture = next(p for k, p in result.tokens.items() if k.startswith("attention/"))
    assert np.all(picture.values[..., T - 3 :] < 1e-6)  # padded keys get no attention


def _decoder_reference(
    backbone: keras.Model, x: dict[str, np.ndarray], gemma: bool
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
    """numpy's attention figures (by attention path) and gated-MLP hidden units (by down
    projection path, `(ROWS, T, F)`) of a KerasHub Gemma or Llama backbone, from each
    layer's own projections and rotary embedding: scaling, soft-capping, the causal and
    padding mask and the softmax in numpy; padded queries left out."""
    real = x["padding_mask"].astype(bool)
    keys = real[:, None, :] & np.tril(np.ones((T, T), bool))[None]
    figures, hidden = {}, {}
    for i in range(2):
        name = f"decoder_block_{i}" if gemma else f"transformer_layer_{i}"
        block = backbone.get_layer(name)
        h = keras.Model(backbone.input, block.input[0])(x)
        if gemma:
            att, path = block.attention, f"{name}/attention"
            n = block.pre_attention_norm(h)

            def rope(t: Any, att: Any = att) -> np.ndarray:
                r = numpy_of(att.rope_layer(t, start_index=0))  # Gemma's own layout after
                return np.stack(np.split(r, 2, axis=-1), axis=-1).reshape(r.shape)

            q, k = rope(att.query_dense(n)), rope(att.key_dense(n))
            q = q.reshape(*q.shape[:2], k.shape[2], -1, q.shape[-1]) / math.sqrt(q.shape[-1])
            z = np.einsum("btkgh,bskh->bkgts", q, k).reshape(len(q), -1, T, T)
            z = np.tanh(z / att.logit_soft_cap) * att.logit_soft_cap
            attended = att(n, attention_mask=keys.astype("int32"))
            m = block.pre_ffw_norm(h + attended)
            g, up, down = block.gating_ffw(m), block.gating_ffw_2(m), f"{name}/ffw_linear"
            g = numpy_of(g)
            act = 0.5 * g * (1 + np.tanh(math.sqrt(2 / math.pi) * (g + 0.044715 * g**3)))
        else:
            att, path = block._self_attention_layer, f"{name}/self_attention_layer"
            n = block._self_attention_layernorm(h)
            rotary = att.rotary_embedding_layer
            q = numpy_of(rotary(att._query_dense(n), start_index=0))
            k = numpy_of(rotary(att._key_dense(n), start_index=0))
            k = np.repeat(k, q.shape[2] // k.shape[2], axis=2)
            z = np.einsum("bquh,bkuh->buqk", q, k) / math.sqrt(q.shape[-1])
            attended = att(n, attention_mask=keys.astype("int32"))
            m = block._feedforward_layernorm(h + attended)
            g = numpy_of(block._feedforward_gate_dense(m))
            up, down = block._feedforward_intermediate_dense(m), f"{name}/feedforward_output_dense"
            act = g / (1 + np.exp(-g))  # SiLU
        figures[path] = attention_reference(z[:ROWS], keys[:ROWS], real[:ROWS])
        hidden[down] = (act * numpy_of(up))[:ROWS]
    return figures, hidden


def _check_decoder(backbone: keras.Model, gemma: bool) -> None:
    """One check of a tiny Gemma or Llama on padded probes: the attention figures and each
    block's gated-MLP dormant units (role "mlp", at the down projection's input) equal
    numpy's (`_decoder_reference`)."""
    lengths = np.array([9, 5, 12, 7, 6, 8])
    x = {
        "token_ids": RNG.integers(1, VOCAB, (6, T)).astype("int32"),
        "padding_mask": (np.arange(T)[None, :] < lengths[:, None]).astype("int32"),
    }
    figures, hidden = _decoder_reference(backbone, x, gemma)
    real = x["padding_mask"][:ROWS].astype(bool)
    first = next(iter(hidden.values()))
    mean_abs = np.abs(first[real]).mean(axis=0)
    tau = between(mean_abs / mean_abs.mean())
    watched = resolve_layers(backbone, None, {k: v[:2] for k, v in x.items()})
    assert {w.path: w.channels for w in watched if w.role == "mlp"} == {
        p: h.shape[-1] for p, h in hidden.items()
    }
    feed = [x[t.name] for t in backbone.inputs]
    result = CheckPipeline(
        backbone, watched, stats_samples=ROWS, signals=False, dormant_threshold=tau
    ).run(feed)
    for path, want in figures.items():
        got = dict(result.stats[path].transformer or {})
        for metric, value in want.items():
            assert got[metric] == pytest.approx(value, rel=2e-4, abs=2e-6), (path, metric)
    for path, h in hidden.items():
        dormant = result.stats[path].dormant
        np.testing.assert_array_equal(dormant, dormant_reference(h, real, tau), err_msg=path)
    assert 0 < result.stats[next(iter(hidden))].dormant.sum() < first.shape[-1]


#: The tiny Gemma and Llama decoders: grouped-query attention (2 query heads, 1 key/value).
DECODER = {
    "vocabulary_size": VOCAB,
    "num_layers": 2,
    "num_query_heads": 2,
    "num_key_value_heads": 1,
    "hidden_dim": D,
    "intermediate_dim": 2 * D,
}


def test_keras_hub_gemma(tmp_path: Path) -> None:
    """Gemma (soft-capped logits): a fit with the monitor, then a check equal to numpy's."""
    hub = _hub()
    names = ["token_ids", "padding_mask"]
    backbone = hub.models.GemmaBackbone(**DECODER, head_dim=16, attention_logit_soft_cap=4.0)
    x = _text_data(names)  # probes as a dict of arrays feed the bare backbone as it is
    backbone.compile("adam", "mse")
    _fit_hub(backbone, x, np.zeros((8, T, D), "float32"), tmp_path)
    _check_decoder(backbone, gemma=True)


def test_keras_hub_llama() -> None:
    hub = _hub()
    backbone = hub.models.LlamaBackbone(**DECODER)
    _check_decoder(backbone, gemma=False)


class _SoftmaxHead(keras.layers.Layer):
    """A classifier head holding a Dense and a Softmax: no attention layer."""

    def __init__(self, classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(classes)
        self.softmax = keras.layers.Softmax()

    def call(self, x: Any) -> Any:
        return self.softmax(self.dense(x))


def test_a_cnn_with_a_custom_softmax_head_keeps_its_cnn_defaults() -> None:
    """A custom layer holding a Softmax beside one Dense is a head, not attention: the CNN's
    default layers are the same as with a plain Dense head, none given a transformer role."""

    def cnn(head: keras.layers.Layer) -> keras.Model:
        inputs = keras.Input((16, 16, 3))
        x = keras.layers.Conv2D(4, 3, name="conv1")(inputs)
        x = keras.layers.ReLU(name="relu1")(x)
        x = keras.layers.MaxPooling2D(name="pool1")(x)
        x = keras.layers.Conv2D(8, 3, name="conv2")(x)
        x = keras.layers.Activation("relu", name="relu2")(x)
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        return keras.Model(inputs, head(x))

    custom = resolve_layers(cnn(_SoftmaxHead(3, name="head")), None)
    plain = resolve_layers(cnn(keras.layers.Dense(3, activation="softmax", name="head")), None)
    assert [w.path for w in custom] == [w.path for w in plain]
    assert all(not w.role for w in custom)


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="which layers: host logic, once")
def test_keras_hub_dinov2_swiglu_mlp_is_watched_at_its_hidden_units() -> None:
    """DINOv2's SwiGLU FFN makes gate and up in one Dense (`weights_in`, 2F) and multiplies
    them in `call`: its hidden units (F) are watched at `weights_out`'s input, role mlp."""
    hub = _hub()
    backbone = hub.models.DINOV2Backbone(
        patch_size=4,
        num_layers=2,
        hidden_dim=16,
        num_heads=2,
        intermediate_dim=32,
        layer_scale_init_value=1.0,
        num_register_tokens=2,
        use_swiglu_ffn=True,
        image_shape=(16, 16, 3),
    )
    x = RNG.normal(size=(4, 16, 16, 3)).astype("float32")
    watched = resolve_layers(backbone, None, x[:2])
    mlps = [w for w in watched if w.role == "mlp"]
    assert [w.path for w in mlps] == [f"encoder/layers/{i}/mlp/weights_out" for i in (0, 1)]
    result = CheckPipeline(backbone, watched, signals=False).run(x)
    for w in mlps:
        hidden = int(w.layer.kernel.shape[0])  # F, the down projection's inputs
        assert hidden != 16 and result.stats[w.path].filters == hidden
        assert result.stats[w.path].dormant.shape == (hidden,)
