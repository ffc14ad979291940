"""Attention-logit growth at high learning rates, as the monitor logs and alerts it (issue 20).

After Wortsman et al. 2023 ("Small-scale proxies for large-scale Transformer training
instabilities", arXiv 2309.14322): a 2-block pre-LN causal language model (width 128, 4 heads,
GELU MLP of width 512, 32 tokens) learns a random Markov chain over 64 tokens with AdamW
(weight decay 0.1, linear warmup to the peak rate) at several peak rates, with and without
QK-layernorm. `ActivationMonitor` checks it every `--every` batches; a `Divergence` callback
finds the first batch whose loss is non-finite or above 1.5x the lowest so far. The script
prints, per run, the attention figures by step (read back from the event files with
TensorBoard's reader), the batch loss, the attention alerts (`logit_growth`,
`attention_collapse`, `massive_activation`) and whether one came at a check before the loss
diverged (without QK-norm) or none came (with it).

    KERAS_BACKEND=jax python benchmarks/attention_logits.py --log-dir /tmp/sweep \
        --json sweep.json --figure benchmarks/attention_logits.png
    python benchmarks/attention_logits.py --rates 3e-2 0.3 --qk-norm on --warmup 0
    actwatch report /tmp/sweep          # the logits and entropy against step, per run

About 8 minutes on 2 CPU cores with JAX. Never imports TensorFlow unless the backend is it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from typing import Any

import keras
import numpy as np
from keras import layers, ops

import actwatch

VOCAB, TOKENS, WIDTH, HEADS = 64, 32, 128, 4
#: The loss diverged at the first batch whose loss is non-finite or above this many times the
#: lowest batch loss so far.
DIVERGENCE = 1.5
ATTENTION_ALERTS = ("logit_growth", "attention_collapse", "massive_activation")
METRICS = ("attention_logit_max", "attention_entropy", "attention_entropy_min")


def markov(samples: int, seed: int = 0, tokens: int = TOKENS) -> tuple[np.ndarray, np.ndarray]:
    """Token sequences from a random Markov chain (each token has 4 likely successors);
    targets are the next tokens."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(VOCAB, VOCAB)) * 0.5
    for row in logits:
        row[rng.choice(VOCAB, 4, replace=False)] += 4.0
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    seq = np.zeros((samples, tokens + 1), dtype=np.int32)
    seq[:, 0] = rng.integers(0, VOCAB, samples)
    cumulative = p.cumsum(1)
    for t in range(1, tokens + 1):
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


class Positions(layers.Layer):
    """Adds a learned embedding of each position (a layer of its own: an `Embedding` called
    on a constant while the graph is built is a constant to torch's autograd)."""

    def __init__(self, tokens: int, width: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tokens = tokens
        self.embedding = layers.Embedding(tokens, width)

    def build(self, input_shape: Any) -> None:
        self.embedding.build((self.tokens,))

    def call(self, x: Any) -> Any:
        return x + self.embedding(ops.arange(self.tokens))[None]


def language_model(
    qk_norm: bool = False,
    seed: int = 0,
    *,
    width: int = WIDTH,
    tokens: int = TOKENS,
    blocks: int = 2,
) -> keras.Model:
    """The pre-LN causal LM (`blocks` blocks of `HEADS` heads), QK-layernorm or not."""
    keras.utils.set_random_seed(seed)
    attention = QKNormAttention if qk_norm else layers.MultiHeadAttention
    ids = keras.Input((tokens,), dtype="int32")
    x = layers.Embedding(VOCAB, width)(ids)
    x = Positions(tokens, width)(x)
    for i in range(blocks):
        h = layers.LayerNormalization(name=f"ln_attn_{i}")(x)
        h = attention(HEADS, width // HEADS, name=f"attention_{i}")(h, h, use_causal_mask=True)
        x = layers.Add(name=f"residual_attn_{i}")([x, h])
        h = layers.LayerNormalization(name=f"ln_mlp_{i}")(x)
        h = layers.Dense(4 * width, activation="gelu", name=f"mlp_{i}")(h)
        h = layers.Dense(width, name=f"mlp_out_{i}")(h)
        x = layers.Add(name=f"block_{i}")([x, h])
    x = layers.LayerNormalization(name="ln_final")(x)
    return keras.Model(ids, layers.Dense(VOCAB, name="logits")(x))


class Divergence(keras.callbacks.Callback):
    """Each training batch's own loss (from Keras' running mean over the epoch), and the
    first step at which the loss diverged: non-finite, or above `factor` times the lowest
    batch loss so far. Steps count batches, as the monitor's do: the loss of step `s` is the
    loss of the s-th batch, taken with the weights after `s - 1` updates."""

    def __init__(self, factor: float = DIVERGENCE) -> None:
        super().__init__()
        self.factor = factor
        self.losses: list[float] = []
        self.diverged: int | None = None
        self._mean = 0.0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._mean = 0.0

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        mean = float((logs or {}).get("loss", float("nan")))
        loss = (batch + 1) * mean - batch * self._mean  # equal batches: the batch's own loss
        self._mean = mean
        self.losses.append(loss)
        lowest = min((v for v in self.losses[:-1] if math.isfinite(v)), default=math.inf)
        if self.diverged is None and (not math.isfinite(loss) or loss > self.factor * lowest):
            self.diverged = len(self.losses)


def run(lr: float, args: argparse.Namespace, log_dir: str, qk_norm: bool) -> dict[str, Any]:
    x, y = markov(args.samples)
    model = language_model(qk_norm)
    rate: Any = lr
    if args.warmup:  # linear from 0 to lr over the first `warmup` steps, then constant
        rate = keras.optimizers.schedules.CosineDecay(
            0.0, args.steps, alpha=1.0, warmup_target=lr, warmup_steps=args.warmup
        )
    model.compile(
        keras.optimizers.AdamW(rate, weight_decay=0.1),
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
    divergence = Divergence()
    epochs = max(1, args.steps * args.batch // args.samples)
    start = time.perf_counter()
    model.fit(
        x, y, batch_size=args.batch, epochs=epochs, callbacks=[monitor, divergence], verbose=0
    )
    seconds = time.perf_counter() - start
    attention = [(a.step, a.kind, a.layer) for a in alerts if a.kind in ATTENTION_ALERTS]
    return {
        "lr": lr,
        "qk_norm": qk_norm,
        "seconds": seconds,
        "losses": divergence.losses,
        "diverged": divergence.diverged,
        "alerts": attention,
        "first_alert": min((s for s, _, _ in attention), default=None),
        "series": read_series(log_dir),
        "log_dir": log_dir,
    }


def verdict(result: dict[str, Any]) -> str:
    """Whether the run shows what the acceptance asks: an attention alert at a check before
    the loss diverged (without QK-norm), none with QK-norm."""
    first, diverged = result["first_alert"], result["diverged"]
    if result["qk_norm"]:
        return "ok: no attention alert" if first is None else f"ALERT at step {first}"
    if diverged is None:
        return "no divergence" + ("" if first is None else f"; alert at step {first}")
    if first is None:
        return f"MISSED: diverged at step {diverged}, no alert"
    early = "ok: alert before" if first < diverged else "LATE: alert not before"
    return f"{early} divergence (alert step {first}, diverged step {diverged})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[1e-3, 3e-2, 0.3, 1.0, 3.0])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--every", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=64, help="linear warmup steps (0: none)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--qk-norm", choices=["off", "on", "both"], default="both")
    parser.add_argument("--log-dir", default=None, help="one run per folder under it")
    parser.add_argument("--figure", default=None, help="PNG: logit max and entropy by step")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    print(
        f"attention_logits: backend {keras.backend.backend()}, keras {keras.__version__}, "
        f"{os.cpu_count()} CPUs, {args.steps} steps, warmup {args.warmup}, check every "
        f"{args.every} batches"
    )
    root = args.log_dir or tempfile.mkdtemp(prefix="attention_logits_")
    variants = {"off": [False], "on": [True], "both": [False, True]}[args.qk_norm]
    results = []
    for qk_norm in variants:
        for lr in args.rates:
            name = f"lr_{lr:g}" + ("_qknorm" if qk_norm else "")
            result = run(lr, args, os.path.join(root, name), qk_norm)
            results.append(result)
            print(f"\n{name}: {result['seconds']:.0f} s; {verdict(result)}")
            print_table(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.figure:
        figure(results, args.figure)
    print(f"\nlogs: {root} (actwatch report {root})")


def read_series(log_dir: str) -> dict[str, dict[int, float]]:
    """`{tag: {step: value}}` of the attention figures, from the event files."""
    from tensorboard.backend.event_processing import event_accumulator as ea
    from tensorboard.util import tensor_util

    acc = ea.EventAccumulator(log_dir, size_guidance={ea.TENSORS: 0})
    acc.Reload()
    series: dict[str, dict[int, float]] = {}
    for tag in acc.Tags()["tensors"]:
        if tag.partition("/")[0] in METRICS:
            series[tag] = {
                e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)
            }
    return series


def print_table(result: dict[str, Any]) -> None:
    """Steps x attention figures per layer, the batch loss at each step, the alerts."""
    series = result["series"]
    steps = sorted({s for values in series.values() for s in values})
    names = sorted(series)
    losses = result["losses"]
    short = [n.replace("attention_", "").replace("entropy", "ent") for n in names]
    print("  step   loss " + " ".join(f"{n:>22}" for n in short))
    for step in steps:
        loss = losses[step - 1] if 0 < step <= len(losses) else float("nan")
        row = " ".join(f"{series[n].get(step, float('nan')):>22.4g}" for n in names)
        print(f"  {step:>4} {loss:>6.3g} {row}")
    for step, kind, layer in result["alerts"]:
        print(f"  alert at step {step}: {kind} {layer}")


def figure(results: list[dict[str, Any]], path: str) -> None:
    """Largest logit (log scale) and mean entropy of the first attention layer by step, one
    curve per rate; without QK-norm on the left, with it on the right; a dot where the loss
    diverged, a triangle at the first attention alert."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = sorted({r["qk_norm"] for r in results})
    fig, axes = plt.subplots(2, len(variants), figsize=(6 * len(variants), 7), squeeze=False)
    for col, qk_norm in enumerate(variants):
        for r in (r for r in results if r["qk_norm"] == qk_norm):
            for row, metric in enumerate(("attention_logit_max", "attention_entropy")):
                values = r["series"].get(f"{metric}/attention_0", {})
                steps = sorted(values)
                ax = axes[row][col]
                (line,) = ax.plot(steps, [values[s] for s in steps], label=f"lr {r['lr']:g}")
                marks = [(r["diverged"], "o"), (r["first_alert"], "^")]
                for step, marker in marks:
                    if step is not None and steps:
                        near = min(steps, key=lambda s: abs(s - step))
                        ax.plot([near], [values[near]], marker, color=line.get_color())
        title = "with QK-layernorm" if qk_norm else "without QK-norm"
        axes[0][col].set(yscale="log", title=title, ylabel="largest attention logit")
        axes[1][col].set(xlabel="step", ylabel="attention entropy (block 0)", ylim=(0, 1.05))
        axes[0][col].legend(fontsize=8)
    fig.suptitle("attention_0: o = loss diverged, ^ = first attention alert")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
