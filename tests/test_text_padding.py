"""Padded tokens count nowhere (issue 20): a BERT-like probe set with a `padding_mask` and a
model with an `Embedding(mask_zero=True)`, whose attention, token and MLP figures equal
numpy's over the real tokens only (and not the figures with the padding in)."""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import pytest

from actwatch.check.layers import resolve_layers
from actwatch.check.padding import validity_rule
from actwatch.check.pipeline import CheckPipeline

L = keras.layers
#: Each test starts from `RNG` and Keras' seed set anew from it (tests/conftest.py).
SEED = 21
RNG = np.random.default_rng(SEED)


VOCAB, T, D = 24, 12, 32
#: The check's statistics samples (the probes come after them).
ROWS = 4


def numpy_of(t: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(t), dtype=np.float64)


def attention_reference(z: np.ndarray, keys: np.ndarray, queries: np.ndarray) -> dict[str, float]:
    """The attention figures from logits `z` `(B, H, T, S)` as the layer computes them, the
    keys each query may attend `keys` (broadcastable to `(B, T, S)`) and the real queries
    `queries` `(B, T)`: softmax, entropy over the queries with >= 2 keys, all in numpy."""
    keys = np.broadcast_to(keys, (z.shape[0], z.shape[2], z.shape[3]))[:, None]
    shifted = np.where(keys, z, -np.inf)
    shifted = shifted - np.max(np.where(keys, z, -1e30), axis=-1, keepdims=True)
    e = np.where(keys, np.exp(shifted), 0.0)
    a = e / np.maximum(e.sum(-1, keepdims=True), 1e-300)
    valid = np.broadcast_to(keys, z.shape) & queries[:, None, :, None]
    n = valid.sum(-1)
    counted = n >= 2
    plogp = np.where(valid & (a > 0), a * np.log(np.where(a > 0, a, 1.0)), 0.0).sum(-1)
    entropy = -plogp / np.log(np.maximum(n, 2))
    heads = [entropy[:, h][counted[:, h]].mean() for h in range(z.shape[1])]
    return {
        "attention_entropy": float(entropy[counted].mean()),
        "attention_entropy_min": float(min(heads)),
        "attention_logit_max": float(np.abs(z)[valid].max()),
        "attention_sink": float(a[..., 0][counted].mean()),
    }


def token_reference(x: np.ndarray, real: np.ndarray) -> dict[str, float]:
    """A block's token figures from its output `x` `(N, T, D)` over the tokens `real`."""
    norms = np.linalg.norm(x, axis=-1)
    similarity = []
    for sample, kept in zip(x, real, strict=True):
        units = sample[kept] / np.linalg.norm(sample[kept], axis=-1, keepdims=True)
        cosine = units @ units.T
        similarity.append(cosine[~np.eye(len(units), dtype=bool)].mean())
    ms = (x[real] ** 2).mean(axis=0)
    return {
        "token_norm_ratio": float(norms[real].max() / np.median(norms[real])),
        "token_similarity": float(np.mean(similarity)),
        "kurtosis": float((ms**2).mean() / ms.mean() ** 2),
    }


def dormant_reference(h: np.ndarray, real: np.ndarray, tau: float) -> np.ndarray:
    """tau-dormant units of `h` `(N, T, C)` over the tokens `real` (Sokar et al.)."""
    mean_abs = np.abs(h[real]).mean(axis=0)
    return mean_abs / mean_abs.mean() <= tau


def between(scores: np.ndarray) -> float:
    """A threshold halfway between two of `scores` (a quarter up): no unit sits on it."""
    s = np.sort(scores)
    k = len(s) // 4
    return float((s[k] + s[k + 1]) / 2)


def assert_figures(got: dict[str, float], want: dict[str, float], padded: dict[str, float]) -> None:
    """`got` equals `want` (real tokens) and not `padded` (the padding counted in)."""
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=2e-4, abs=2e-6), name
    assert any(abs(got[n] - padded[n]) > 1e-3 * max(abs(padded[n]), 1e-3) for n in want), (
        "the padding changes nothing here: the test proves nothing",
        got,
        padded,
    )


def test_bert_padding_counts_nowhere() -> None:
    """KerasHub BERT (one layer) on probes padded by 3 to 7 tokens: attention (padded
    queries out; BERT masks only keys), the block's token figures and the GELU MLP's
    dormant units equal numpy's over the real tokens."""
    hub = pytest.importorskip("keras_hub")
    backbone = hub.models.BertBackbone(
        vocabulary_size=VOCAB,
        num_layers=1,
        num_heads=2,
        hidden_dim=D,
        intermediate_dim=2 * D,
        max_sequence_length=T,
    )
    lengths = np.array([9, 5, 12, 7, 6, 8])
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype("int32")
    x = {
        "token_ids": RNG.integers(1, VOCAB, (6, T)).astype("int32") * mask,
        "segment_ids": np.zeros((6, T), "int32"),
        "padding_mask": mask,
    }
    block = backbone.get_layer("transformer_layer_0")
    mha = block._self_attention_layer
    h = keras.Model(backbone.input, backbone.get_layer("embeddings_dropout").output)(x)
    keys = mask.astype(bool)[:, None, :]
    attended = mha(h, h, attention_mask=keys)
    hidden = numpy_of(
        block._feedforward_intermediate_dense(block._self_attention_layer_norm(h + attended))
    )[:ROWS]
    real = mask[:ROWS].astype(bool)
    mean_abs = np.abs(hidden[real]).mean(axis=0)
    tau = between(mean_abs / mean_abs.mean())
    watched = resolve_layers(backbone, None, {k: v[:2] for k, v in x.items()})
    roles = {w.path: w.role for w in watched if w.role}
    mlp = next(p for p, r in roles.items() if r == "mlp")
    feed = [x[t.name] for t in backbone.inputs]
    result = CheckPipeline(
        backbone, watched, stats_samples=ROWS, signals=False, dormant_threshold=tau
    ).run(feed)

    q = numpy_of(mha._query_dense(h))[:ROWS]
    k = numpy_of(mha._key_dense(h))[:ROWS]
    z = np.einsum("bthd,bshd->bhts", q, k) / math.sqrt(q.shape[-1])
    got = dict(result.stats["transformer_layer_0/self_attention_layer"].transformer or {})
    assert_figures(
        got,
        attention_reference(z, keys[:ROWS], real),
        attention_reference(z, keys[:ROWS], np.ones_like(real)),
    )
    out = numpy_of(keras.Model(backbone.input, block.output)(x))[:ROWS]
    got = dict(result.stats["transformer_layer_0"].transformer or {})
    assert_figures(got, token_reference(out, real), token_reference(out, np.ones_like(real)))
    dormant = result.stats[mlp].dormant
    np.testing.assert_array_equal(dormant, dormant_reference(hidden, real, tau))
    assert 0 < dormant.sum() < dormant.size


@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="the padding's ops are test_bert_padding_counts_nowhere's: runs once, on PyTorch",
)
def test_mask_zero_embedding_padding_counts_nowhere() -> None:
    """A functional model whose Embedding(mask_zero=True) hides id 0: its block's token
    figures leave the zeros out (MultiHeadAttention's own query mask already does)."""
    tokens = keras.Input((T,), dtype="int32")
    e = L.Embedding(VOCAB, D, mask_zero=True, name="embed")(tokens)
    h = L.MultiHeadAttention(2, D // 2, name="mha")(e, e, use_causal_mask=True)
    a = L.Add(name="res")([e, h])
    m = L.Dense(2 * D, activation="gelu", name="mlp")(a)
    block = L.Add(name="block")([a, L.Dense(D, name="proj")(m)])
    model = keras.Model(tokens, L.Dense(VOCAB, name="head")(block))
    lengths = np.array([10, 4, 12, 7, 6, 8])
    mask = np.arange(T)[None, :] < lengths[:, None]
    x = (RNG.integers(1, VOCAB, (6, T)) * mask).astype("int32")
    (table,) = model.get_layer("embed").get_weights()
    table[0] *= 100.0  # padding stands out: its values would top any figure it counted in
    model.get_layer("embed").set_weights([table])
    watched = resolve_layers(model, None, x[:2])
    assert {w.path: w.role for w in watched if w.role}["block"] == "block"
    result = CheckPipeline(model, watched, stats_samples=ROWS, signals=True).run(x)
    out = numpy_of(keras.Model(tokens, block)(x))[:ROWS]
    real = mask[:ROWS]
    got = dict(result.stats["block"].transformer or {})
    assert_figures(got, token_reference(out, real), token_reference(out, np.ones_like(real)))
    # The MLP's dead and dormant units are over the real tokens; its max_abs over every
    # position (the padded ones, ~100x here, are not the eager call's: a fully masked query
    # row is undefined, and the check takes the explicit attention path, not the fused one).
    hidden = numpy_of(keras.Model(tokens, m)(x))[:ROWS]
    assert result.stats["mlp"].max_abs > 10.0 * np.abs(hidden[real]).max()


def test_the_ids_are_read_from_the_input_that_feeds_the_masked_embedding() -> None:
    """With two 2-D integer inputs, the real tokens are the ids of the one feeding the
    `Embedding(mask_zero=True)`, not the first (here a segment-id input of all zeros)."""
    segments = keras.Input((T,), dtype="int32", name="segments")
    words = keras.Input((T,), dtype="int32", name="words")
    e = L.Embedding(VOCAB, D, mask_zero=True, name="embed")(words)
    s = L.Embedding(2, D, name="segment_embed")(segments)
    model = keras.Model([segments, words], L.Add()([e, s]))
    ids = np.array([[3, 4, 0, 0] + [0] * (T - 4)] * 2, dtype="int32")
    rule = validity_rule(model)
    for feed in ([np.zeros_like(ids), ids], {"segments": np.zeros_like(ids), "words": ids}):
        valid = np.asarray(keras.ops.convert_to_numpy(rule(feed)))
        np.testing.assert_array_equal(valid, ids != 0)


def _padded_lm() -> keras.Model:
    """A causal LM over `{"token_ids", "padding_mask"}` that does not zero its padding (the
    mask only read by actwatch), whose padding id 0 embeds 1000x larger than any word; the
    same weights at every call."""
    keras.utils.set_random_seed(SEED)
    ids = keras.Input((T,), dtype="int32", name="token_ids")
    mask = keras.Input((T,), dtype="int32", name="padding_mask")
    x = L.Embedding(VOCAB, D, name="embed")(ids)
    x = x + 0.0 * keras.ops.expand_dims(keras.ops.cast(mask, "float32"), -1)
    y = L.MultiHeadAttention(2, D // 2, name="mha")(x, x, use_causal_mask=True)
    x = L.Add(name="res")([x, y])
    y = L.Dense(D, name="proj")(L.Dense(2 * D, activation="gelu", name="mlp")(x))
    x = L.Add(name="block")([x, y])
    model = keras.Model({"token_ids": ids, "padding_mask": mask}, L.Dense(VOCAB, name="head")(x))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    (table,) = model.get_layer("embed").get_weights()
    table[0] *= 1000.0
    model.get_layer("embed").set_weights([table])
    return model


def test_padding_counts_nowhere_under_fit_with_dict_probes(tmp_path: Any) -> None:
    """Through `fit` and the monitor (dict probes as KerasHub feeds them), on every backend:
    the block's token figures and the MLP's maximum over the real tokens leave the padding
    out; the same probes with every token marked real see it (1000x the words)."""
    import actwatch

    ids = RNG.integers(1, VOCAB, (8, T)).astype("int32")
    data = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    lengths = np.array([T, T // 2])
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype("int32")
    padded = {"token_ids": ids[:2] * mask, "padding_mask": mask}
    seen = {}
    every = {**padded, "padding_mask": np.ones_like(mask)}
    for name, probes in (("padded", padded), ("all real", every)):
        model = _padded_lm()  # the same weights, the same batches: the same activations
        monitor = actwatch.ActivationMonitor(probes, str(tmp_path / name.replace(" ", "_")))
        model.fit(data, np.roll(ids, -1, axis=1), batch_size=4, epochs=1, verbose=0,
                  shuffle=False, callbacks=[monitor])  # fmt: skip
        seen[name] = monitor.last_stats
    block = dict(seen["padded"]["block"].transformer or {})
    everything = dict(seen["all real"]["block"].transformer or {})
    assert block["token_norm_ratio"] < 10.0 < 100.0 < everything["token_norm_ratio"]
    assert not block["massive_activation"]
    # The MLP's units: dormant over the real tokens (the padding's 1000x would make every
    # unit but the padding's largest look dormant), its max_abs over every position.
    assert seen["padded"]["mlp"].dormant.mean() < seen["all real"]["mlp"].dormant.mean()
    assert seen["padded"]["mlp"].max_abs == pytest.approx(seen["all real"]["mlp"].max_abs, rel=1e-4)
