"""What the learning-rate figures of issue 13 cost per check, on the demo workload.

The demo CNN (64x64 images, 5 conv blocks, Adam) and 256 labelled statistics samples, as
`actwatch demo` runs them. Timed, each after a warm-up call (the first call's compile time is
printed apart):

- the update-to-weight ratio: the device copy of the watched kernels at a check
  (`UpdateRatios.snapshot`) plus the comparison after the next training step
  (`UpdateRatios.measure`);
- the gradients of activations (`stats_data=(x, y)`): the check with labels, one compiled
  forward and backward pass over the statistics samples with the default statistics and the
  gradients' per-layer reductions (`CheckPipeline(labels=...)` without maps), against the
  forward pass alone (the extractor, each output reduced to its sum) and the check without
  labels (`CheckPipeline` without maps) on the same samples;
- one training step (`train_on_batch`, batch 32), for scale.

    KERAS_BACKEND=jax python benchmarks/learning_rate.py
    python benchmarks/learning_rate.py --repeats 5 --samples 128

Prints medians in ms. Never imports TensorFlow unless the backend is TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import platform
from collections.abc import Sequence

from common import timed  # beside this file


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Per-check cost of update ratios and gradients of activations (issue 13).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed calls of each.")
    parser.add_argument("--samples", type=int, default=256, help="labelled stats samples.")
    parser.add_argument("--size", type=int, default=64, help="image side (the demo's: 64).")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import keras

    from actwatch.check.extract import Extractor
    from actwatch.check.layers import resolve_layers
    from actwatch.check.pipeline import CheckPipeline
    from actwatch.demo import build_model, make_dataset, seed_everything
    from actwatch.diagnose.updates import UpdateRatios

    seed_everything(0)
    model = build_model(args.size)
    x, y = make_dataset(args.samples + 32, args.size, seed=1)
    xs, ys = x[: args.samples], y[: args.samples]
    xb, yb = x[args.samples :], y[args.samples :]
    model.train_on_batch(xb, yb)  # the optimizer's slots exist, as mid-training
    watched = resolve_layers(model, None)
    print(
        f"backend {keras.backend.backend()}, {platform.machine()}, {os.cpu_count()} CPUs; "
        f"demo CNN at {args.size} px, {len(watched)} watched layers, "
        f"{args.samples} stats samples, {args.repeats} repeats (median ms)"
    )

    step_first, step = timed(lambda: model.train_on_batch(xb, yb), args.repeats)
    updates = UpdateRatios(watched)
    weights = sum(
        int(keras.ops.size(v))
        for found in updates.layers.values()
        for layer in found
        for v in layer.trainable_weights
    )

    def ratio() -> None:
        updates.snapshot(0)
        updates.measure()

    ratio_first, ratio_ms = timed(ratio, args.repeats)
    alone = Extractor(model, watched).make_runner(lambda outs: [keras.ops.sum(o) for o in outs])
    alone_first, alone_ms = timed(lambda: alone(xs), args.repeats)
    forward = CheckPipeline(model, watched, draw=False)
    fwd_first, fwd = timed(lambda: forward.run(xs), args.repeats)
    labelled = CheckPipeline(model, watched, draw=False, labels=(ys, None))
    grad_first, grad = timed(lambda: labelled.run(xs), args.repeats)

    print(f"training step (batch 32)           {step:8.1f}   (first {step_first:.0f})")
    print(
        f"update ratio: snapshot + measure   {ratio_ms:8.1f}   (first {ratio_first:.0f}; "
        f"{len(updates.layers)} layers, {weights} weights)"
    )
    print(f"forward pass alone                 {alone_ms:8.1f}   (first {alone_first:.0f})")
    print(f"check forward + statistics         {fwd:8.1f}   (first {fwd_first:.0f})")
    print(f"check with labels (+ gradients)    {grad:8.1f}   (first {grad_first:.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
