"""The sharpness of issue 19: the edge of stability at toy scale, and what a check costs.

`eos`: full-batch gradient descent (Keras SGD, no momentum, one batch of all samples) on a
16-64-64-4 tanh MLP regression (512 samples, targets from a random teacher net of the same
shape times 3, mean squared error, Glorot weights drawn with numpy so every backend starts
alike), at three rates; the sharpness (`Sharpness.measure`) every `--every` steps. Prints the
table (sharpness, and 2/lr) and draws sharpness and 2/lr against step, one colour per rate,
to a PNG (`--figure`, under the git-ignored `logs/` by default). Cohen et al. (ICLR 2021):
the sharpness rises until it reaches 2/lr and then hovers there.

`cost`: one check on the demo CNN (`actwatch.demo.build_model`, 64x64 images, 5 conv blocks,
Adam after one step, so the preconditioned sharpness is measured too) with 256 labelled
samples: `measure` with all products run (`tolerance=0`, 20 + 20 Hessian-vector products),
`measure` warm-started at the same weights (the default tolerance stops it early), and one
forward pass of the labelled samples (`predict_on_batch`), each after a warm-up call (the
first call, with its compilation, is printed apart).

    KERAS_BACKEND=jax python benchmarks/sharpness.py
    KERAS_BACKEND=torch python benchmarks/sharpness.py --part cost --repeats 3

Prints medians in ms. Never imports TensorFlow unless the backend is TensorFlow.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import statistics
import time
from collections.abc import Sequence

import numpy as np
from common import teacher_regression, timed  # beside this file


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The edge of stability and the per-check cost of the sharpness (issue 19).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--part", choices=("eos", "cost", "both"), default="both")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.3, 0.4])
    parser.add_argument("--steps", type=int, default=3000, help="gradient descent steps.")
    parser.add_argument("--every", type=int, default=50, help="steps between measurements.")
    parser.add_argument("--print-every", type=int, default=250, help="steps between rows.")
    parser.add_argument("--samples", type=int, default=512, help="MLP regression samples.")
    parser.add_argument("--figure", default="logs/sharpness_eos.png", help="the PNG written.")
    parser.add_argument("--cost-samples", type=int, default=256, help="labelled CNN samples.")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each.")
    return parser.parse_args(argv)


def edge_of_stability(lr: float, args: argparse.Namespace) -> list[tuple[int, float, float]]:
    """[(step, sharpness, loss)] of full-batch gradient descent at `lr`."""
    from actwatch.check.sharpness import Sharpness

    model, x, y = teacher_regression(lr, args.samples)
    sharpness = Sharpness(model, x, y)
    xs, ys = np.tile(x, (args.every, 1)), np.tile(y, (args.every, 1))  # an epoch: `every` steps
    trace = []
    for step in range(0, args.steps + 1, args.every):
        value = sharpness.measure().sharpness
        trace.append((step, value, float(model.evaluate(x, y, verbose=0))))
        if step < args.steps:
            model.fit(xs, ys, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
    return trace


def run_eos(args: argparse.Namespace) -> None:
    traces = {}
    for lr in args.rates:
        start = time.perf_counter()
        traces[lr] = edge_of_stability(lr, args)
        print(f"lr {lr}: {time.perf_counter() - start:.1f} s")
    print()
    print("step   " + "".join(f"   lr {lr:<5} (2/lr {2 / lr:6.2f})" for lr in args.rates))
    for index, (step, *_) in enumerate(traces[args.rates[0]]):
        if step % args.print_every and step != args.steps:
            continue
        row = "".join(
            f"   {traces[lr][index][1]:8.3f}  loss {traces[lr][index][2]:.4f}" for lr in args.rates
        )
        print(f"{step:5d}{row}")

    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for lr, colour in zip(args.rates, itertools.cycle(plt.cm.tab10.colors), strict=False):
        steps = [t[0] for t in traces[lr]]
        ax.plot(steps, [t[1] for t in traces[lr]], color=colour, label=f"lr {lr}")
        ax.axhline(2 / lr, color=colour, linestyle="--", linewidth=1)
    ax.set_yscale("log")
    shown = [t[1] for trace in traces.values() for t in trace] + [2 / lr for lr in args.rates]
    ticks = [2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 40, 60, 80, 100, 200, 400]
    ax.set_yticks([t for t in ticks if min(shown) / 1.2 <= t <= max(shown) * 1.2])
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("step (full-batch gradient descent)")
    ax.set_ylabel("sharpness (top Hessian eigenvalue)")
    ax.set_title("Sharpness rises to 2/lr (dashed) and hovers there")
    ax.legend()
    os.makedirs(os.path.dirname(args.figure) or ".", exist_ok=True)
    fig.savefig(args.figure, bbox_inches="tight", dpi=120)
    print(f"\nfigure: {args.figure}")


def run_cost(args: argparse.Namespace) -> None:
    import keras

    from actwatch.check.sharpness import Sharpness
    from actwatch.demo import build_model, make_dataset, seed_everything

    seed_everything(0)
    model = build_model()
    x, y = make_dataset(args.cost_samples + 32, seed=1)
    xs, ys = x[: args.cost_samples], y[: args.cost_samples]
    model.train_on_batch(x[args.cost_samples :], y[args.cost_samples :])  # Adam's slots
    weights = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    print(
        f"backend {keras.backend.backend()}, {platform.machine()}, {os.cpu_count()} CPUs; "
        f"demo CNN, {weights} trainable weights, {args.cost_samples} labelled samples, "
        f"{args.repeats} repeats (median ms)"
    )
    forward_first, forward = timed(lambda: model.predict_on_batch(xs), args.repeats)
    full = Sharpness(model, xs, ys, tolerance=0.0)
    results = []

    def measure_full() -> None:
        results.append(full.measure())

    full_first, full_ms = timed(measure_full, args.repeats)
    last = results[-1]
    products = last.iterations_run + last.preconditioned_iterations_run
    warm = Sharpness(model, xs, ys)
    warm.measure()
    runs = []

    def measure_warm() -> None:
        runs.append(warm.measure())

    _, warm_ms = timed(measure_warm, args.repeats)
    warm_products = statistics.median(
        r.iterations_run + r.preconditioned_iterations_run for r in runs
    )
    print(
        f"forward pass ({args.cost_samples} samples)      {forward:9.1f}   "
        f"(first {forward_first:.0f})"
    )
    print(
        f"measure, {products} products              {full_ms:9.1f}   (first {full_first:.0f}, "
        f"compile included); {full_ms / forward:.0f}x the forward pass, "
        f"{full_ms / products:.1f} ms a product"
    )
    print(
        f"measure, warm-started              {warm_ms:9.1f}   ({warm_products:g} products); "
        f"{warm_ms / forward:.0f}x the forward pass"
    )
    print(
        f"sharpness {last.sharpness:.4g}, preconditioned {last.preconditioned:.4g}, "
        f"threshold {last.threshold:.4g} ({last.threshold_of}), ratio {last.ratio:.3g}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.part in ("eos", "both"):
        run_eos(args)
    if args.part in ("cost", "both"):
        run_cost(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
