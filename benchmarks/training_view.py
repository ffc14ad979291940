"""What the training-mode view of issue 19 costs a check, side by side, interleaved.

ResNet50 (`weights=None`) at `--size` px in `Sequential([Input, base, pooling, Dense])`, the
default layers and statistics (no maps), `--stats` statistics samples before `--probes`
probes (and, with `--stats 0`, the probes alone). Each arm is a `CheckPipeline` compiled
once; then the arms' checks run in turn (A B C ... A B C ...), `--repeats` rounds, and the
medians are printed against the inference view's (moving statistics, what the checks cost
before issue 19).

On TensorFlow, the arms also try other ways of running the training view's
BatchNormalizations (`--variants`), by swapping `actwatch.check.capture._fused` while their
pipeline compiles:

- `fused2` (what runs): a fused training-mode kernel on the statistics rows, a fused
  inference-mode kernel on the probes with those moments, and a concat;
- `fused1`: the fused training-mode kernel on the statistics rows for the moments only, then
  one fused inference-mode kernel over all rows (no concat; the statistics rows are
  normalised twice);
- `moments`: `tf.nn.moments` of the statistics rows, then one fused inference-mode kernel;
- `generic`: Keras ops (`ops.moments`, `ops.batch_normalization`), as on other backends.

    .venv/bin/python benchmarks/training_view.py --repeats 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--stats", type=int, default=64, help="statistics samples (0: none).")
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--variants",
        default="fused2,fused1",
        help="TensorFlow only: the ways to run the training view, comma-separated.",
    )
    return parser.parse_args(argv)


def variants() -> dict[str, Callable[..., Any]]:
    """`_fused` replacements: `(x, scale, offset, epsilon, rows) -> normalised x`."""
    import tensorflow as tf

    from actwatch.check import capture

    def kernel(x: Any, scale: Any, offset: Any, epsilon: float) -> Any:
        channels = int(x.shape[-1])
        return lambda t, **kw: tf.compat.v1.nn.fused_batch_norm(
            t,
            scale=tf.ones(channels, x.dtype) if scale is None else scale,
            offset=tf.zeros(channels, x.dtype) if offset is None else offset,
            epsilon=epsilon,
            data_format="NHWC",
            **kw,
        )

    def fused1(x: Any, scale: Any, offset: Any, epsilon: float, rows: int) -> Any:
        run = kernel(x, scale, offset, epsilon)
        if not rows:
            return run(x, is_training=True)[0]
        _, mean, unbiased = run(x[:rows], is_training=True)[:3]
        n = float(rows * int(x.shape[1]) * int(x.shape[2]))
        variance = unbiased * max(n - 1.0, 0.0) / max(n, 1.0)
        return run(x, mean=mean, variance=variance, is_training=False)[0]

    def moments(x: Any, scale: Any, offset: Any, epsilon: float, rows: int) -> Any:
        run = kernel(x, scale, offset, epsilon)
        if not rows:
            return run(x, is_training=True)[0]
        mean, variance = tf.nn.moments(x[:rows], axes=[0, 1, 2])
        return run(x, mean=mean, variance=variance, is_training=False)[0]

    return {"fused2": capture._fused, "fused1": fused1, "moments": moments}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    from actwatch.check import capture
    from actwatch.check.layers import resolve_layers
    from actwatch.check.pipeline import CheckPipeline
    from actwatch.demo import make_dataset, seed_everything

    seed_everything(0)
    size = args.size
    base = keras.applications.ResNet50(
        include_top=False, weights=None, input_shape=(size,) * 2 + (3,)
    )
    model = keras.Sequential(
        [
            keras.Input((size, size, 3)),
            base,
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(5),
        ]
    )
    x, _ = make_dataset(args.stats + args.probes, size, seed=1)
    x = np.asarray(keras.applications.resnet50.preprocess_input(x * 255.0), "float32")
    watched = resolve_layers(model, None, x[:1])
    backend = keras.backend.backend()
    names = [v for v in args.variants.split(",") if v] if backend == "tensorflow" else ["view"]
    swaps = variants() if backend == "tensorflow" else {}
    original = capture._fused
    arms: dict[str, Callable[[], Any]] = {}
    setups = [("inference", args.stats, True), *[(n, args.stats, False) for n in names]]
    if args.stats:  # the probes alone too: no statistics samples
        setups += [("inference/probes", 0, True), ("view/probes", 0, False)]
    for name, rows, inference in setups:
        batch = x if rows else x[args.stats :]
        pipeline = CheckPipeline(
            model, watched, stats_samples=rows, draw=False, inference=inference
        )
        if name == "generic":
            arms[name] = _generic(pipeline, batch)
            continue
        capture._fused = swaps.get(name, original)
        try:
            start = time.perf_counter()
            pipeline.run(batch)  # traced with this variant
            print(f"{name}: first check {time.perf_counter() - start:.1f} s", flush=True)
        finally:
            capture._fused = original
        arms[name] = _bound(pipeline, batch)
    arms["forward"] = _bound_forward(model, x)
    wall: dict[str, list[float]] = {name: [] for name in arms}
    cpu: dict[str, list[float]] = {name: [] for name in arms}
    for run in arms.values():
        run()  # warm
    for _ in range(args.repeats):
        for name, run in arms.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    print(
        f"ResNet50 {size} px, {args.stats} statistics samples + {args.probes} probes, "
        f"{len(watched)} layers, {backend}, {args.repeats} interleaved rounds; ms, and the "
        "ratio to the inference view of the same batch (process CPU time: every thread)"
    )
    print(f"  {'arm':18s} {'CPU median':>18s} {'wall median':>18s} {'wall min':>18s}")
    for name in arms:
        ref = "inference/probes" if name.endswith("/probes") else "inference"
        cells = []
        for series, pick in ((cpu, statistics.median), (wall, statistics.median), (wall, min)):
            value, base_value = pick(series[name]), pick(series[ref])
            cells.append(f"{value * 1e3:10.0f} {value / base_value - 1:+7.1%}")
        print(f"  {name:18s} " + " ".join(cells))
    return 0


def _bound(pipeline: Any, x: Any) -> Callable[[], Any]:
    return lambda: pipeline.run(x)


def _bound_forward(model: Any, x: Any) -> Callable[[], Any]:
    return lambda: model.predict_on_batch(x)


def _generic(pipeline: Any, x: Any) -> Callable[[], Any]:
    """The generic path: `fused` off (what a differentiated call takes)."""
    from actwatch.check import capture

    original = capture.batch_normalized

    def unfused(
        norm: Any, inputs: Any, mask: Any = None, *, rows: int = 0, fused: bool = False
    ) -> Any:
        return original(norm, inputs, mask, rows=rows, fused=False)

    capture.batch_normalized = unfused
    try:
        start = time.perf_counter()
        pipeline.run(x)
        print(f"generic: first check {time.perf_counter() - start:.1f} s", flush=True)
    finally:
        capture.batch_normalized = original
    return _bound(pipeline, x)


if __name__ == "__main__":
    raise SystemExit(main())
