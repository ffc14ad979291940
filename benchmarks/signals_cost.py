"""What each signal of issue 12 costs per check, on the demo workload (benchmarks/overhead.py's).

Builds one `CheckPipeline` per variant on the same demo CNN and probes, and times them
interleaved (round robin, so a noisy machine slows every variant alike): the device call
(forward + statistics + maps + signals + copy to the host, what blocks the training thread),
then on the background thread the rendering of the new images (colorful dimension, top-k
strips) and their PNG bytes. Variants:

- `base`: the statistics and maps of before issue 12 (signals off);
- `+scalars`: signal propagation and outliers (rms, channel moments, max |a|, median);
- `+histograms`: and the activation histograms;
- `+rank`: and the feature rank (effective rank, srank); this is the default;
- `+topk`: the default with `topk=4` (opt-in).

    python benchmarks/signals_cost.py                       # probes only, as the demo
    python benchmarks/signals_cost.py --stats-samples 256   # with stats_data of 256 images

Then, as `overhead.py`'s check loop does, whole checks of `ActivationMonitor`s on one model
(epoch-end hook, sink flushed after each): one whose pipeline has the signals off, one with
the defaults, one with `topk=4`, interleaved; what blocks the training thread and the bytes
each check writes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--probes", type=int, default=4)
    parser.add_argument("--stats-samples", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--checks", type=int, default=60, help="whole checks per monitor")
    args = parser.parse_args()

    import keras

    from actwatch.check.image_files import display_pictures
    from actwatch.check.images import default_drawn
    from actwatch.check.layers import resolve_layers
    from actwatch.check.pipeline import CheckPipeline
    from actwatch.demo import build_model, make_dataset, seed_everything
    from actwatch.events.histograms import HistogramHistory
    from actwatch.render.png import encode_png
    from actwatch.render.tiles import INFERNO_LUT as _LUT
    from actwatch.render.tiles import distribution_image, topk_image

    seed_everything(0)
    model = build_model(args.size)
    x, _ = make_dataset(args.probes + args.stats_samples, args.size, seed=1)
    x = x.astype("float32")
    watched = resolve_layers(model, None)
    common = {"stats_samples": args.stats_samples, "drawn": default_drawn}
    variants = {
        "base": {"signals": False},
        "+scalars": {"histograms": False, "feature_rank": False},
        "+histograms": {"feature_rank": False},
        "+rank (default)": {},
        "+topk=4 (opt-in)": {"topk": 4},
    }
    pipelines = {n: CheckPipeline(model, watched, **common, **kw) for n, kw in variants.items()}
    results = {}
    for name, pipeline in pipelines.items():  # compile
        start = time.perf_counter()
        results[name] = pipeline.run(x)
        print(f"first call (compiles) {name:>18}: {time.perf_counter() - start:6.2f} s")
    times: dict[str, list[float]] = {n: [] for n in pipelines}
    for _ in range(args.repeats):
        for name, pipeline in pipelines.items():
            start = time.perf_counter()
            pipeline.run(x)
            times[name].append(time.perf_counter() - start)
    forward = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        model.predict_on_batch(x[args.stats_samples :])
        forward.append(time.perf_counter() - start)

    print(
        f"\nbackend {keras.backend.backend()}, demo CNN {args.size} px, {args.probes} probes, "
        f"{args.stats_samples} stats samples, {len(watched)} watched layers, "
        f"{args.repeats} rounds"
    )
    print(f"probes' forward (predict_on_batch)   {statistics.median(forward) * 1e3:7.2f} ms")
    base = statistics.median(times["base"])
    previous = base
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"device call {name:>18}   {median * 1e3:7.2f} ms  (+{(median - previous) * 1e3:5.2f} "
            f"ms over the line above, +{(median - base) * 1e3:5.2f} ms over base)"
        )
        previous = median

    # Background thread: the new images and their PNG bytes.
    result = results["+topk=4 (opt-in)"]
    history = HistogramHistory()
    for _ in range(10):  # the colorful dimension after 10 checks
        for path, s in result.stats.items():
            assert s.histogram is not None
            history.add(path, s.histogram)
    drawn = set(result.maps)
    snapshot = history.snapshot(drawn)
    samples = display_pictures(x[: args.stats_samples] if args.stats_samples else x)
    assert samples is not None
    for label, render in [
        ("colorful dimension", lambda: [distribution_image(h, _LUT) for h in snapshot.values()]),
        ("top-k strips", lambda: [topk_image(t, samples) for t in result.topk.values()]),
    ]:
        spent, encoded = [], 0
        for _ in range(10):
            start = time.perf_counter()
            images = render()
            pngs = [encode_png(image, 1) for image in images]
            spent.append(time.perf_counter() - start)
            encoded = sum(len(p) for p in pngs)
        print(
            f"{label:>18} (background): render + PNG {statistics.median(spent) * 1e3:6.2f} ms, "
            f"{encoded / 1e3:6.1f} kB per check ({len(drawn)} drawn layers)"
        )
    hist_bytes = sum(int(np.count_nonzero(s.histogram)) * 3 * 8 + 60 for s in result.stats.values())
    print(f"{'histograms':>18}: about {hist_bytes / 1e3:.1f} kB per check in the events file")
    monitor_checks(model, x[args.stats_samples :], args.checks, stats=x[: args.stats_samples])


def monitor_checks(model: Any, probes: np.ndarray, checks: int, stats: np.ndarray) -> None:
    """Whole checks of monitors with the signals off, the defaults and topk=4, interleaved."""
    import tempfile

    import actwatch
    from actwatch.check.pipeline import CheckPipeline

    stats_data = stats if len(stats) else None
    monitors = {
        "signals off": actwatch.ActivationMonitor(
            probes, tempfile.mkdtemp(), stats_data=stats_data
        ),
        "defaults": actwatch.ActivationMonitor(probes, tempfile.mkdtemp(), stats_data=stats_data),
        "topk=4": actwatch.ActivationMonitor(
            probes, tempfile.mkdtemp(), stats_data=stats_data, topk=4
        ),
    }
    for name, monitor in monitors.items():
        monitor.set_model(model)
        monitor.set_params({"epochs": checks + 5, "steps": 1, "verbose": 0})
        monitor.on_train_begin()
        if name == "signals off":  # the pipeline of before issue 12 (private, benchmark only)
            old = monitor._session.pipeline
            monitor._session.pipeline = CheckPipeline(
                model,
                old.watched,
                stats_samples=len(stats),
                drawn=default_drawn_rule(),
                signals=False,
            )
    blocking: dict[str, list[float]] = {n: [] for n in monitors}
    written: dict[str, list[float]] = {n: [] for n in monitors}
    for i in range(checks + 5):
        for name, monitor in monitors.items():
            monitor.on_epoch_begin(i)
            monitor.on_epoch_end(i, {})
            monitor.flush()
            if i >= 5:
                blocking[name].append(monitor.timings["blocking"])
                sink = monitor.sink_stats
                assert sink is not None
                written[name].append(sink.last_check["bytes"])
    print(f"\nwhole checks ({checks} each, interleaved, after 5 warm-up checks):")
    for name in monitors:
        print(
            f"  {name:>12}: blocks {statistics.median(blocking[name]) * 1e3:6.2f} ms, "
            f"writes {statistics.median(written[name]) / 1e6:5.2f} MB per check"
        )
    for monitor in monitors.values():
        monitor.on_train_end()


def default_drawn_rule() -> Any:
    from actwatch.check.images import default_drawn

    return default_drawn


if __name__ == "__main__":
    main()
