"""What a check costs on transformers and CNN backbones, side by side (issue 20, item 8).

Builds, with random weights (nothing is downloaded), ViT-B/16 at 224 px (KerasHub's
`ViTBackbone` with ViT-B/16's config: patch 16, 12 layers, 12 heads, hidden 768, MLP 3072),
BERT-base at 128 tokens (`BertBackbone`: 12 layers, 12 heads, hidden 768, intermediate 3072,
vocabulary 30522; probes as a dict of token_ids / padding_mask / segment_ids) and the four
`keras.applications` backbones of `scale.py` (nested in the same transfer-learning model), each
under a small classification head, with 4 probes and the default `ActivationMonitor`. Then, in
one process and interleaved (model after model, round after round, so the machine's other load
hits every model alike), it measures per model:

- the probes' forward pass, `model.predict_on_batch(probes)`, warm (median of 3 per round);
- the check's own forward pass ("view fwd"): the training view the check runs (each
  BatchNormalization that `fit` runs in training mode on the probes' own statistics), through
  the monitor's extractor with its watched layers captured and one sum per layer brought
  back, compiled as the check is: the floor of any check that reads those layers as training
  sees them (on TensorFlow, `predict_on_batch` folds inference BatchNormalization into the
  convolutions, which the training view cannot);
- **blocking per check**: the monitor's `timings["blocking"]`, each check made by calling the
  monitor's epoch hooks on the model and flushed so its pictures are written alone;
- **MB per check over a 4-check run**: the bytes of the run's event files after its 4th check
  (the monitor's first check before the first epoch, then 3 epoch ends), divided by 4.

Each model's monitor makes 4 checks (the bytes), then one check per round: blocking is the
median over the rounds, and the ratio blocking / forward the median of each round's ratio.
It ends with PASS/FAIL lines for the target of issue 20 (blocking <= 2 x forward + 10 ms,
<= 4 MB per check), for every model.

    KERAS_BACKEND=jax .venv/bin/python benchmarks/scale_transformers.py
    KERAS_BACKEND=jax .venv/bin/python benchmarks/scale_transformers.py --models vit,bert
    KERAS_BACKEND=jax .venv/bin/python benchmarks/scale_transformers.py --quick  # small sizes

This script never imports TensorFlow unless the backend is TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CNNS = ("resnet50", "mobilenetv2", "efficientnetb0", "convnexttiny")
MODELS = ("vit", "bert", *CNNS)
BLOCKING_SLACK_S = 0.010
BYTES_PER_CHECK = 4_000_000
RUN_CHECKS = 4


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Cost of actwatch.ActivationMonitor on transformers and CNNs (issue 20).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--models", default=",".join(MODELS), help=f"from {', '.join(MODELS)}")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (checks).")
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument(
        "--quick", action="store_true", help="64 px, 2 layers, 32 tokens: a smoke run."
    )
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), default=None)
    parser.add_argument("--log-dir", default=None, help="kept; by default a temporary dir.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="intra-op threads of the backend (0: its default). 1 on a shared machine: a "
        "parallel op of a 2-thread pool waits for a thread another process holds (~7 ms "
        "an op on PyTorch), which the check's many small ops pay far more than the forward.",
    )
    args = parser.parse_args(argv)
    args.models = [m.strip().lower() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown or not args.models:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    return args


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    os.environ["KERAS_BACKEND"] = ARGS.backend or os.environ.get("KERAS_BACKEND") or "jax"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if ARGS.threads and os.environ["KERAS_BACKEND"] == "jax":  # read when XLA starts
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
            f"intra_op_parallelism_threads={ARGS.threads}"
        )

import keras  # noqa: E402
import numpy as np  # noqa: E402

import actwatch  # noqa: E402
from actwatch.demo import make_dataset, seed_everything  # noqa: E402
from actwatch.events.runs import read_run  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scale import transfer_model  # noqa: E402


def vit_model(quick: bool, seed: int) -> keras.Model:
    import keras_hub

    seed_everything(seed)
    size = 64 if quick else 224
    backbone = keras_hub.models.ViTBackbone(
        image_shape=(size, size, 3),
        patch_size=16,
        num_layers=2 if quick else 12,
        num_heads=12,
        hidden_dim=768,
        mlp_dim=3072,
    )
    head = keras.layers.Dense(5, activation="softmax")(backbone.output[:, 0])
    model = keras.Model(backbone.inputs, head)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    return model


def bert_model(quick: bool, seed: int, tokens: int) -> keras.Model:
    import keras_hub

    seed_everything(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=30522,
        num_layers=2 if quick else 12,
        num_heads=12,
        hidden_dim=768,
        intermediate_dim=3072,
        max_sequence_length=512,
    )
    inputs = {
        name: keras.Input((tokens,), dtype="int32", name=name)
        for name in ("token_ids", "segment_ids", "padding_mask")
    }
    pooled = backbone(inputs)["pooled_output"]
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(pooled))
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    return model


def text_probes(n: int, tokens: int, seed: int) -> dict[str, np.ndarray]:
    """Random token ids, the last probes padded (lengths from `tokens` down to half)."""
    rng = np.random.default_rng(seed)
    lengths = np.linspace(tokens, tokens // 2, n).astype(int)
    mask = (np.arange(tokens)[None, :] < lengths[:, None]).astype("int32")
    ids = rng.integers(1000, 30522, size=(n, tokens)).astype("int32") * mask
    return {"token_ids": ids, "segment_ids": np.zeros_like(ids), "padding_mask": mask}


@dataclass
class Row:
    name: str
    model: Any
    probes: Any
    monitor: Any = None
    log_dir: str = ""
    watched: int = 0
    drawn: int = 0
    run_bytes: int = 0
    checks_done: int = 0
    forward: list[float] = field(default_factory=list)
    view: list[float] = field(default_factory=list)
    view_forward: Any = None
    blocking: list[float] = field(default_factory=list)
    device: list[float] = field(default_factory=list)
    background: list[dict[str, float]] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)

    @property
    def ratios(self) -> list[float]:
        return [b / f for b, f in zip(self.blocking, self.forward, strict=False)]


def build(name: str, args: argparse.Namespace, root: str) -> Row:
    quick = args.quick
    if name == "vit":
        model = vit_model(quick, args.seed)
        probes, _ = make_dataset(args.probes, 64 if quick else 224, seed=args.seed + 1)
    elif name == "bert":
        tokens = 32 if quick else 128
        model = bert_model(quick, args.seed, tokens)
        probes = text_probes(args.probes, tokens, args.seed + 1)
    else:
        size = 64 if quick else 224
        model = transfer_model(name, size, 5, args.seed)
        probes, _ = make_dataset(args.probes, size, seed=args.seed + 1)
    row = Row(name, model, probes, log_dir=os.path.join(root, name))
    row.monitor = actwatch.ActivationMonitor(probes, row.log_dir)
    row.monitor.set_model(model)
    row.monitor.set_params({"epochs": RUN_CHECKS + args.rounds, "steps": 1, "verbose": 0})
    row.monitor.on_train_begin()
    return row


def check(row: Row, *, timed: bool) -> None:
    """One check through the monitor's hooks: the first epoch's begin checks before it, then
    each epoch end checks."""
    monitor = row.monitor
    if row.checks_done == 0:
        monitor.on_epoch_begin(0)
    else:
        epoch = row.checks_done - 1
        if epoch:
            monitor.on_epoch_begin(epoch)
        monitor.on_epoch_end(epoch, {})
    monitor.flush()
    row.checks_done += 1
    if timed:
        row.blocking.append(monitor.timings["blocking"])
        row.device.append(monitor.timings["device"])
        row.background.append(dict(monitor.sink_stats.last_check))


def bytes_by_kind(log_dir: str) -> dict[str, int]:
    """Serialized bytes per tag kind (`filters`, `heatmap`, `attention`, ...) and event type."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out: dict[str, int] = {}
    for path in Path(log_dir).rglob("*tfevents*"):
        for event in EventFileLoader(str(path)).Load():
            if not event.HasField("summary"):
                out["(other events)"] = out.get("(other events)", 0) + event.ByteSize()
                continue
            for value in event.summary.value:
                kind = value.tag.split("/")[0]
                if value.HasField("tensor") and value.tensor.dtype == 7:  # DT_STRING: images
                    kind = f"{kind} (image)"
                out[kind] = out.get(kind, 0) + value.ByteSize()
    return out


def event_bytes(log_dir: str) -> int:
    return sum(p.stat().st_size for p in Path(log_dir).rglob("*tfevents*"))


def forward(row: Row) -> float:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        row.model.predict_on_batch(row.probes)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def view_forward(row: Row) -> float:
    """The check's forward pass alone (see the module's docstring), median of 3."""
    if row.view_forward is None:
        from keras import ops

        from actwatch.check.extract import Extractor

        watched = row.monitor._session.pipeline.watched  # the monitor's own layers
        # As the check builds it (`CheckPipeline`): attention layers read at their softmax.
        attention = [(w.path, w.layer) for w in watched if w.role == "attention"]
        extractor = Extractor(row.model, watched, attention=attention)
        row.view_forward = extractor.make_runner(lambda outs: [ops.sum(o) for o in outs])
        row.view_forward(row.probes)  # compiles
    times = []
    for _ in range(3):
        start = time.perf_counter()
        row.view_forward(row.probes)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms"


def set_threads(threads: int, backend: str) -> None:
    """The backend's intra-op threads (before its first op), when `threads` is not 0."""
    if not threads:
        return
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
    elif backend == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def main(args: argparse.Namespace) -> int:
    backend = keras.backend.backend()
    set_threads(args.threads, backend)
    print(
        f"actwatch {actwatch.__version__}, keras {keras.__version__}, backend {backend}, "
        f"python {platform.python_version()}, {os.cpu_count()} CPUs; {args.probes} probes, "
        f"{args.rounds} interleaved rounds{' (quick)' if args.quick else ''}"
        f"{f', {args.threads} intra-op threads' if args.threads else ''}"
    )
    root = args.log_dir or tempfile.mkdtemp(prefix="actwatch-scale-tf-")
    rows: list[Row] = []
    try:
        for name in args.models:
            say(f"[{name}] build, warm forward, {RUN_CHECKS}-check run")
            row = build(name, args, root)
            forward(row)  # compiles predict
            view_forward(row)  # compiles the check's forward alone
            while row.checks_done < RUN_CHECKS:
                check(row, timed=False)
            row.run_bytes = event_bytes(row.log_dir)
            row.kinds = bytes_by_kind(row.log_dir)
            row.watched = len(row.monitor.last_stats)
            rows.append(row)
        for r in range(args.rounds):
            say(f"round {r + 1}/{args.rounds}")
            for row in rows:
                row.forward.append(forward(row))
                row.view.append(view_forward(row))
                check(row, timed=True)
        for row in rows:
            row.monitor.on_train_end()
            run = read_run(row.log_dir)
            layers = set(run.grids)
            for pictures in run.pictures.values():
                layers.update(pictures)
            row.drawn = len(layers)
    finally:
        if args.log_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print()
    head = (
        f"{'model':<15}{'watched':>8}{'drawn':>6}{'forward':>9}{'view fwd':>9}{'blocking':>10}"
        f"{'ratio':>7}"
        f"{'(min-max)':>13}{'device':>9}{'render':>8}{'encode':>8}{'MB/check':>9}"
    )
    print(head)
    lines = []
    for row in rows:
        fwd, blk = statistics.median(row.forward), statistics.median(row.blocking)
        view = statistics.median(row.view)
        ratio = statistics.median(row.ratios)
        bg = {
            k: statistics.median(b.get(k, 0.0) for b in row.background)
            for k in ("render", "encode")
        }
        mbc = row.run_bytes / RUN_CHECKS / 1e6
        print(
            f"{row.name:<15}{row.watched:>8}{row.drawn:>6}{ms(fwd):>9}{ms(view):>9}{ms(blk):>10}"
            f"{ratio:>6.2f}x"
            f"{f'{min(row.ratios):.2f}-{max(row.ratios):.2f}':>13}{ms(statistics.median(row.device)):>9}"
            f"{ms(bg['render']):>8}{ms(bg['encode']):>8}{mbc:>9.2f}"
        )
        limit = 2 * fwd + BLOCKING_SLACK_S
        lines.append(
            f"{'PASS' if blk <= limit else 'FAIL'}  {row.name}: blocking {ms(blk)} <= 2 x "
            f"forward ({ms(fwd)}) + 10 ms = {ms(limit)} (the check's own forward: "
            f"{ms(view)}, blocking {blk / view:.2f}x it)"
        )
        lines.append(
            f"{'PASS' if mbc * 1e6 <= BYTES_PER_CHECK else 'FAIL'}  {row.name}: {mbc:.2f} MB "
            f"per check over a {RUN_CHECKS}-check run <= 4 MB"
        )
    print()
    print(f"bytes per check of the {RUN_CHECKS}-check run, by tag kind (kB):")
    for row in rows:
        top = sorted(row.kinds.items(), key=lambda kv: -kv[1])
        print(f"  {row.name}: " + ", ".join(f"{k} {v / RUN_CHECKS / 1e3:.0f}" for k, v in top))
    print()
    print("\n".join(lines))
    print(f"(tensorflow imported: {sys.modules.get('tensorflow') is not None})")
    return 0


if __name__ == "__main__":
    assert ARGS is not None
    sys.exit(main(ARGS))
