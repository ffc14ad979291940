"""Attention-logit growth at high learning rates, as the monitor logs it (issue 20).

After Wortsman et al. 2023 ("Small-scale proxies for large-scale Transformer training
instabilities", arXiv 2309.14322): a 2-block pre-LN causal language model (width 128, 4 heads,
GELU MLP of width 512, 32 tokens) learns a random Markov chain over 64 tokens with AdamW
(weight decay 0.1, no warmup) at several learning rates. `ActivationMonitor` checks it every
`--every` batches; the script reads `attention_logit_max/{layer}` and `attention_entropy/...`
back from the run's event files with TensorBoard's reader, and prints them by step, with the
loss and the steps where a `logit_growth` alert fired.

    KERAS_BACKEND=jax python benchmarks/attention_logits.py
    python benchmarks/attention_logits.py --steps 320 --every 32 --rates 1e-3 3e-2 0.3
    python benchmarks/attention_logits.py --qk-norm   # queries and keys layer-normalised

A few minutes on 2 CPU cores with JAX. Never imports TensorFlow unless the backend is it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

import keras
import numpy as np
from keras import layers, ops

import actwatch

VOCAB, TOKENS, WIDTH, HEADS = 64, 32, 128, 4


def markov(samples: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token sequences from a random Markov chain (each token has 4 likely successors);
    targets are the next tokens."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(VOCAB, VOCAB)) * 0.5
    for row in logits:
        row[rng.choice(VOCAB, 4, replace=False)] += 4.0
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    seq = np.zeros((samples, TOKENS + 1), dtype=np.int32)
    seq[:, 0] = rng.integers(0, VOCAB, samples)
    cumulative = p.cumsum(1)
    for t in range(1, TOKENS + 1):
        u = rng.random(samples)[:, None]
        seq[:, t] = np.minimum((u > cumulative[seq[:, t - 1]]).sum(1), VOCAB - 1)
    return seq[:, :-1], seq[:, 1:]


class QKNormAttention(layers.MultiHeadAttention):
    """MultiHeadAttention with layer-normalised queries and keys (QK-layernorm, Dehghani et
    al. 2023; Wortsman et al. 2023)."""

    def build(self, query_shape: Any, value_shape: Any, key_shape: Any = None) -> None:
        super().build(query_shape, value_shape, key_shape)
        self.q_norm = layers.LayerNormalization(epsilon=1e-6)
        self.k_norm = layers.LayerNormalization(epsilon=1e-6)
        self.q_norm.build((None, None, self._num_heads, self._key_dim))
        self.k_norm.build((None, None, self._num_heads, self._key_dim))

    def _compute_attention(self, query: Any, key: Any, *args: Any, **kwargs: Any) -> Any:
        return super()._compute_attention(self.q_norm(query), self.k_norm(key), *args, **kwargs)


def language_model(qk_norm: bool = False, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    attention = QKNormAttention if qk_norm else layers.MultiHeadAttention
    tokens = keras.Input((TOKENS,), dtype="int32")
    x = layers.Embedding(VOCAB, WIDTH)(tokens)
    x = x + layers.Embedding(TOKENS, WIDTH)(ops.arange(TOKENS))[None]
    for i in range(2):
        h = layers.LayerNormalization(name=f"ln_attn_{i}")(x)
        h = attention(HEADS, WIDTH // HEADS, name=f"attention_{i}")(h, h, use_causal_mask=True)
        x = layers.Add(name=f"residual_attn_{i}")([x, h])
        h = layers.LayerNormalization(name=f"ln_mlp_{i}")(x)
        h = layers.Dense(4 * WIDTH, activation="gelu", name=f"mlp_{i}")(h)
        h = layers.Dense(WIDTH, name=f"mlp_out_{i}")(h)
        x = layers.Add(name=f"block_{i}")([x, h])
    x = layers.LayerNormalization(name="ln_final")(x)
    return keras.Model(tokens, layers.Dense(VOCAB, name="logits")(x))


def run(lr: float, args: argparse.Namespace, log_dir: str) -> dict[str, Any]:
    x, y = markov(args.samples)
    model = language_model(args.qk_norm)
    model.compile(
        keras.optimizers.AdamW(lr, weight_decay=0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    alerts: list[actwatch.Alert] = []
    monitor = actwatch.ActivationMonitor(
        x[:4],
        log_dir,
        stats_data=x[:32],
        every_n_batches=args.every,
        images=False,
        histograms=False,
        on_alert=alerts.append,
        update_ratio_bounds=None,
    )
    epochs = max(1, args.steps * args.batch // args.samples)
    start = time.perf_counter()
    history = model.fit(x, y, batch_size=args.batch, epochs=epochs, callbacks=[monitor], verbose=0)
    seconds = time.perf_counter() - start
    return {"history": history.history, "alerts": alerts, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[1e-3, 3e-2, 0.3])
    parser.add_argument("--steps", type=int, default=320)
    parser.add_argument("--every", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--qk-norm", action="store_true")
    args = parser.parse_args()
    print(
        f"attention_logits: backend {keras.backend.backend()}, keras {keras.__version__}, "
        f"{os.cpu_count()} CPUs, qk_norm={args.qk_norm}, {args.steps} steps, check every "
        f"{args.every} batches"
    )
    for lr in args.rates:
        log_dir = tempfile.mkdtemp(prefix=f"attention_logits_{lr:g}_")
        result = run(lr, args, log_dir)
        losses = ", ".join(f"{v:.3g}" for v in result["history"]["loss"])
        print(f"\nlr {lr:g}: {result['seconds']:.0f} s; loss per epoch: {losses}")
        print_table(log_dir)
        for alert in result["alerts"]:
            if alert.kind == "logit_growth":
                print(f"  alert at step {alert.step}: {alert.layer} logit {alert.count}")


def print_table(log_dir: str) -> None:
    """Steps x (logit max, entropy) per attention layer, from the event files."""
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util

    acc = ea.EventAccumulator(log_dir, size_guidance={ea.TENSORS: 0})
    acc.Reload()
    series: dict[str, dict[int, float]] = {}
    for tag in acc.Tags()["tensors"]:
        metric = tag.partition("/")[0]
        if metric in ("attention_logit_max", "attention_entropy"):
            series[tag] = {
                e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)
            }
    steps = sorted({s for values in series.values() for s in values})
    names = sorted(series)
    print("  step " + " ".join(f"{n.replace('attention_', ''):>28}" for n in names))
    for step in steps:
        row = " ".join(f"{series[n].get(step, float('nan')):>28.4g}" for n in names)
        print(f"  {step:>4} {row}")


if __name__ == "__main__":
    main()
