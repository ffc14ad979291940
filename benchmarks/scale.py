"""What a check costs on real backbones at 224x224 (issue 10, part 3).

For each `keras.applications` backbone (`weights=None`: no download) nested in a
transfer-learning model `Sequential([Input, base, GlobalAveragePooling2D, Dense])`, with 4
probes and the default `ActivationMonitor`, prints side by side: watched and drawn layers, the
probes' forward pass, what a check blocks the training thread for, the first check's extra
compile time next to the model's own first-epoch compile, bytes written per check, alerts in
a healthy run (Adam 1e-3, a few epochs of tiny generated data), and how long `actwatch
report` takes over a log of `--checks` checks. It ends with PASS/FAIL lines for the targets
of issue 10 (they are defined on ResNet50 at 224 px; other sizes and backends print them as
information).

    .venv/bin/python benchmarks/scale.py                          # all four, 224 px, TF
    .venv/bin/python benchmarks/scale.py --backbones resnet50     # the targets alone
    .venv/bin/python benchmarks/scale.py --trust --epochs 2       # issue 19: no false dead
    KERAS_BACKEND=jax .venv/bin/python benchmarks/scale.py --quick
    KERAS_BACKEND=torch .venv/bin/python benchmarks/scale.py --quick

This script never imports TensorFlow unless the backend is TensorFlow.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

BACKBONES = ("resnet50", "mobilenetv2", "efficientnetb0", "convnexttiny")

#: Targets of issue 10, on ResNet50 at 224x224 with 4 probes and the default monitor.
TARGET_BACKBONE = "resnet50"
TARGET_SIZE = 224
BLOCKING_SLACK_S = 0.010
BYTES_PER_CHECK = 4_000_000
REPORT_S = 15.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Cost of actwatch.ActivationMonitor on real backbones (issue 10).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--backbones",
        default=",".join(BACKBONES),
        help=f"comma-separated, from {', '.join(BACKBONES)}.",
    )
    parser.add_argument("--size", type=int, default=None, help="input side in px (default 224).")
    parser.add_argument("--probes", type=int, default=4, help="probe images.")
    parser.add_argument(
        "--checks",
        type=int,
        default=None,
        help="checks written for the report timing (default 50); also the checks whose "
        "blocking time is measured alone.",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs of the healthy run (default 3)."
    )
    parser.add_argument(
        "--samples", type=int, default=16, help="training images (2 batches of 8 by default)."
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 64 px, 2 epochs, 5 checks (unless given).",
    )
    parser.add_argument(
        "--backend",
        choices=("tensorflow", "jax", "torch"),
        default=None,
        help="Keras backend; defaults to $KERAS_BACKEND, else tensorflow.",
    )
    parser.add_argument(
        "--sink-priority",
        choices=[
            "idle",
            "nice",
            "normal",
        ],  # actwatch.events.sink.PRIORITIES (keras not imported yet)
        default="idle",
        help="the background writer thread's CPU priority (idle: actwatch's default).",
    )
    parser.add_argument(
        "--trust",
        action="store_true",
        help="issue 19's acceptance instead (benchmarks/trust.py): inputs through each "
        "family's preprocess_input, then dead filters against a training-mode pass.",
    )
    parser.add_argument("--log-dir", default=None, help="where events go (default: a temp dir).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.backbones = [b.strip().lower() for b in args.backbones.split(",") if b.strip()]
    unknown = [b for b in args.backbones if b not in BACKBONES]
    if unknown or not args.backbones:
        parser.error(f"--backbones: unknown {unknown}; choose from {', '.join(BACKBONES)}")
    args.size = args.size or (64 if args.quick else TARGET_SIZE)
    args.checks = args.checks or (5 if args.quick else 50)
    args.epochs = args.epochs or (2 if args.quick else 3)
    if args.size < 32 or args.probes < 1 or args.checks < 2 or args.epochs < 2:
        parser.error("--size must be >= 32, --probes >= 1, --checks >= 2, --epochs >= 2")
    if args.samples < args.batch_size:
        parser.error("--samples must be at least --batch-size")
    return args


# Must run before keras is imported.
ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    os.environ["KERAS_BACKEND"] = ARGS.backend or os.environ.get("KERAS_BACKEND") or "tensorflow"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import actwatch  # noqa: E402
from actwatch.demo import make_dataset, seed_everything  # noqa: E402
from actwatch.events.runs import read_run  # noqa: E402
from actwatch.report import write_report  # noqa: E402

APPLICATIONS = {
    "resnet50": "ResNet50",
    "mobilenetv2": "MobileNetV2",
    "efficientnetb0": "EfficientNetB0",
    "convnexttiny": "ConvNeXtTiny",
}


def transfer_model(backbone: str, size: int, classes: int, seed: int) -> keras.Model:
    """`Sequential([Input, base, GlobalAveragePooling2D, Dense])`, Adam 1e-3, trainable."""
    seed_everything(seed)
    app = getattr(keras.applications, APPLICATIONS[backbone])
    base = app(include_top=False, weights=None, input_shape=(size, size, 3))
    model = keras.Sequential(
        [
            keras.Input((size, size, 3)),
            base,
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    return model


class EpochTimes(keras.callbacks.Callback):
    """Wall time of each epoch; put it first (start) and last (end) in the list."""

    def __init__(self) -> None:
        super().__init__()
        self.starts: list[float] = []
        self.ends: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.starts.append(time.perf_counter())

    @property
    def seconds(self) -> list[float]:
        return [e - s for s, e in zip(self.starts, self.ends, strict=True)]


class ForwardAfterEpoch(keras.callbacks.Callback):
    """Times the probes' forward pass at each epoch end of a plain fit: right after training.

    A check inside a fit runs right after the last training batch, with the caches (and, on
    TensorFlow's CPU, oneDNN's primitive cache) filled by the training step; this is the same
    forward pass measured in those conditions, to compare the in-fit blocking with.
    """

    def __init__(self, probes: Any) -> None:
        super().__init__()
        self.probes = probes
        self.seconds: list[float] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        start = time.perf_counter()
        self.model.predict_on_batch(self.probes)
        self.seconds.append(time.perf_counter() - start)


class FlushAtEnd(keras.callbacks.Callback):
    """Put before the monitor: at train end, waits until its writer has written every check.

    The monitor's own close waits at most 60 s; on a busy machine the writer thread (at idle
    priority) can be further behind, and the drawn layers are counted from the events file.
    """

    def __init__(self, monitor: actwatch.ActivationMonitor) -> None:
        super().__init__()
        self.monitor = monitor
        self.seconds = 0.0

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        start = time.perf_counter()
        self.monitor.flush()
        self.seconds = time.perf_counter() - start


class EpochEnd(keras.callbacks.Callback):
    """Put last: stamps epoch ends and records the monitor's timings after each check."""

    def __init__(self, times: EpochTimes, monitor: actwatch.ActivationMonitor | None) -> None:
        super().__init__()
        self.times = times
        self.monitor = monitor
        self.checks: list[dict[str, float]] = []
        self._seen: dict[str, float] | None = None

    def record(self) -> None:
        if self.monitor is not None and self.monitor.timings is not self._seen:
            if self._seen is not None and self.checks:  # the update ratio came after the copy
                self.checks[-1].update(self._seen)
            self._seen = self.monitor.timings
            self.checks.append(dict(self.monitor.timings))

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.record()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.record()
        self.times.ends.append(time.perf_counter())


@dataclass
class Row:
    """Every figure measured for one backbone."""

    backbone: str
    watched: int = 0
    drawn: int = 0
    forward: float = 0.0  # model.predict_on_batch(probes), warm, median
    forward_fit: float = 0.0  # the same, at the epoch ends of a plain fit (after epoch 1)
    predict: float = 0.0  # model.predict(probes), warm, median
    plain_epochs: list[float] = field(default_factory=list)
    monitored_epochs: list[float] = field(default_factory=list)
    fit_checks: list[dict[str, float]] = field(default_factory=list)
    loop_checks: list[dict[str, float]] = field(default_factory=list)
    loop_sink: list[dict[str, float]] = field(default_factory=list)
    fit_bytes: int = 0
    fit_sink_checks: int = 0
    images_skipped: int = 0
    alerts: int = 0
    alerts_per_layer: dict[str, int] = field(default_factory=dict)
    report_checks: int = 0
    report_seconds: float = 0.0
    report_bytes: int = 0
    writer_behind: float = 0.0  # waiting for the writer at the end of the healthy fit

    @property
    def model_compile(self) -> float:
        """The model's own first-epoch compile: epoch 1 minus epoch 2 of the plain fit."""
        return max(0.0, self.plain_epochs[0] - statistics.median(self.plain_epochs[1:]))

    @property
    def blocking_fit(self) -> float:
        """Median blocking of the checks in the healthy fit after the first one."""
        return statistics.median(c["blocking"] for c in self.fit_checks[1:])

    @property
    def update_ratio_fit(self) -> float:
        """Median time the update ratio's comparison took at the batch after a check, after
        the first (which compiles it)."""
        values = [c["update_ratio"] for c in self.fit_checks[1:] if "update_ratio" in c]
        return statistics.median(values) if values else float("nan")

    @property
    def blocking_alone(self) -> float:
        return statistics.median(c["blocking"] for c in self.loop_checks[1:])

    @property
    def device_alone(self) -> float:
        return statistics.median(c["device"] for c in self.loop_checks[1:])

    @property
    def first_check(self) -> float:
        return self.fit_checks[0]["blocking"]

    @property
    def first_check_extra(self) -> float:
        """The first check's blocking time beyond a warm check's: compiling the pipeline."""
        return max(0.0, self.first_check - self.blocking_alone)

    @property
    def bytes_per_check(self) -> float:
        """Median bytes of a check with its images, written alone (flushed)."""
        return statistics.median(s["bytes"] for s in self.loop_sink[1:])

    @property
    def fit_average_bytes(self) -> float:
        return self.fit_bytes / max(self.fit_sink_checks, 1)

    @property
    def most_alerts(self) -> int:
        return max(self.alerts_per_layer.values(), default=0)

    def background(self, key: str) -> float:
        return statistics.median(s[key] for s in self.loop_sink[1:])


def make_monitor(probes: Any, log_dir: str, priority: str) -> actwatch.ActivationMonitor:
    """The default monitor; its writer thread at `priority` (the Sink's private argument)."""
    monitor = actwatch.ActivationMonitor(probes, log_dir)
    monitor._sink_options = {"priority": priority}
    return monitor


def median_seconds(fn: Any, repeats: int = 5, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(backbone: str, args: argparse.Namespace, root: str) -> Row:
    row = Row(backbone)
    x, y = make_dataset(args.samples, args.size, seed=args.seed)
    probes, _ = make_dataset(args.probes, args.size, seed=args.seed + 1)
    classes = 5  # make_dataset's shapes

    say(f"[{backbone}] plain fit ({args.epochs} epochs, no monitor)")
    model = transfer_model(backbone, args.size, classes, args.seed)
    times = EpochTimes()
    after = ForwardAfterEpoch(probes)
    model.fit(
        x,
        y,
        batch_size=args.batch_size,
        epochs=args.epochs,
        callbacks=[times, after, EpochEnd(times, None)],
        verbose=0,
    )
    row.plain_epochs = times.seconds
    row.forward_fit = statistics.median(after.seconds[1:])
    row.forward = median_seconds(lambda: model.predict_on_batch(probes))
    row.predict = median_seconds(lambda: model.predict(probes, verbose=0))
    del model

    say(f"[{backbone}] healthy fit with the monitor ({args.epochs} epochs)")
    model = transfer_model(backbone, args.size, classes, args.seed)
    fit_dir = os.path.join(root, backbone, "fit")
    monitor = make_monitor(probes, fit_dir, args.sink_priority)
    times = EpochTimes()
    tail = EpochEnd(times, monitor)
    flush = FlushAtEnd(monitor)
    model.fit(
        x,
        y,
        batch_size=args.batch_size,
        epochs=args.epochs,
        callbacks=[times, flush, monitor, tail],
        verbose=0,
    )
    row.writer_behind = flush.seconds
    tail.record()  # the train-end check, if any
    row.monitored_epochs = times.seconds
    row.fit_checks = tail.checks
    row.watched = len(monitor.last_stats)
    row.alerts = len(monitor.alerts)
    row.alerts_per_layer = dict(collections.Counter(a.layer for a in monitor.alerts))
    sink = monitor.sink_stats
    assert sink is not None
    row.fit_bytes, row.fit_sink_checks = sink.bytes_written, sink.checks
    row.images_skipped = sink.images_skipped
    row.drawn = len(read_run(fit_dir).grids)

    say(f"[{backbone}] {args.checks} checks alone (each flushed), then actwatch report")
    loop_dir = os.path.join(root, backbone, "checks")
    loop = make_monitor(probes, loop_dir, args.sink_priority)
    loop.set_model(model)
    loop.set_params({"epochs": args.checks, "steps": 1, "verbose": 0})
    loop.on_train_begin()
    loop_sink = loop.sink_stats
    assert loop_sink is not None
    for i in range(args.checks):
        loop.on_epoch_begin(i)  # as Keras calls the hooks; the first one also checks
        loop.on_epoch_end(i, {})
        loop.flush()
        row.loop_checks.append(dict(loop.timings))
        row.loop_sink.append(dict(loop_sink.last_check))
    loop.on_train_end()
    row.report_checks = loop_sink.checks
    out = os.path.join(root, backbone, "report.html")
    start = time.perf_counter()
    write_report(loop_dir, out, progress=False)
    row.report_seconds = time.perf_counter() - start
    row.report_bytes = os.path.getsize(out)
    return row


# Output ---------------------------------------------------------------------------------


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def warm(epochs: list[float]) -> float:
    """Median of the epochs after the first (which compiles)."""
    return statistics.median(epochs[1:])


def per_check(row: Row) -> str:
    return "/".join(f"{c['blocking'] * 1e3:.0f}" for c in row.fit_checks)


def table(rows: list[Row]) -> list[str]:
    lines: list[tuple[str, list[str]]] = [
        ("watched layers", [str(r.watched) for r in rows]),
        ("drawn layers (grids written)", [str(r.drawn) for r in rows]),
        ("probes' forward (predict_on_batch)", [ms(r.forward) for r in rows]),
        ("probes' model.predict", [ms(r.predict) for r in rows]),
        ("probes' forward at an epoch end", [ms(r.forward_fit) for r in rows]),
        ("blocking per check, in fit", [ms(r.blocking_fit) for r in rows]),
        ("  each check in fit", [per_check(r) for r in rows]),
        ("update ratio, at the batch after (warm)", [ms(r.update_ratio_fit) for r in rows]),
        ("blocking per check, alone", [ms(r.blocking_alone) for r in rows]),
        ("  of which the device call", [ms(r.device_alone) for r in rows]),
        ("first check (compiles)", [ms(r.first_check) for r in rows]),
        ("first check's extra compile", [ms(r.first_check_extra) for r in rows]),
        ("model's first-epoch compile", [ms(r.model_compile) for r in rows]),
        ("epoch without monitor (warm)", [ms(warm(r.plain_epochs)) for r in rows]),
        ("epoch with monitor (warm)", [ms(warm(r.monitored_epochs)) for r in rows]),
        ("bytes per check (alone)", [mb(r.bytes_per_check) for r in rows]),
        ("bytes per check (fit average)", [mb(r.fit_average_bytes) for r in rows]),
        ("grids (render, background)", [ms(r.background("render")) for r in rows]),
        ("PNG encoding (background)", [ms(r.background("encode")) for r in rows]),
        ("event writing (background)", [ms(r.background("write")) for r in rows]),
        ("checks in the healthy fit", [str(len(r.fit_checks)) for r in rows]),
        ("checks whose images were skipped", [str(r.images_skipped) for r in rows]),
        ("writer behind at the fit's end", [ms(r.writer_behind) for r in rows]),
        ("alerts in the healthy fit", [str(r.alerts) for r in rows]),
        ("most alerts of one layer", [str(r.most_alerts) for r in rows]),
        ("report: checks in the log", [str(r.report_checks) for r in rows]),
        ("report: time", [ms(r.report_seconds) for r in rows]),
        ("report: HTML size", [mb(r.report_bytes) for r in rows]),
    ]  # fmt: skip
    width = max(len(name) for name, _ in lines)
    cols = [max(len(r.backbone), *(len(v[i]) for _, v in lines)) for i, r in enumerate(rows)]
    header = (
        " " * width + "  " + "  ".join(r.backbone.rjust(c) for r, c in zip(rows, cols, strict=True))
    )
    out = [header]
    for name, values in lines:
        cells = "  ".join(v.rjust(c) for v, c in zip(values, cols, strict=True))
        out.append(f"{name.ljust(width)}  {cells}")
    return out


def targets(rows: list[Row], args: argparse.Namespace, backend: str) -> list[str]:
    row = next((r for r in rows if r.backbone == TARGET_BACKBONE), None)
    if row is None:
        return [f"--    targets: not run ({TARGET_BACKBONE} not among --backbones)"]
    where = (
        ""
        if args.size == TARGET_SIZE and args.probes == 4 and backend == "tensorflow"
        else f" (info: the targets are for 224 px, 4 probes, TensorFlow; this is {args.size} "
        f"px, {args.probes} probes, {backend})"
    )
    limit = 2 * row.forward + BLOCKING_SLACK_S
    limit_fit = 2 * row.forward_fit + BLOCKING_SLACK_S
    checks = [
        (
            row.blocking_alone <= limit,
            f"blocking per check alone {ms(row.blocking_alone)} <= 2 x forward "
            f"({ms(row.forward)}) + 10 ms = {ms(limit)}",
        ),
        (
            row.blocking_fit <= limit_fit,
            f"blocking per check in fit {ms(row.blocking_fit)} <= 2 x forward at an epoch end "
            f"({ms(row.forward_fit)}) + 10 ms = {ms(limit_fit)}",
        ),
        (
            row.bytes_per_check <= BYTES_PER_CHECK,
            f"{row.bytes_per_check / 1e6:.2f} MB per check <= {BYTES_PER_CHECK / 1e6:.0f} MB",
        ),
        (
            row.first_check_extra <= row.model_compile,
            f"first check's extra compile {ms(row.first_check_extra)} <= the model's "
            f"first-epoch compile {ms(row.model_compile)}",
        ),
        (
            row.report_seconds <= REPORT_S,
            f"actwatch report over {row.report_checks} checks {ms(row.report_seconds)} "
            f"<= {REPORT_S:.0f} s",
        ),
    ]
    lines = [f"{'PASS' if ok else 'FAIL'}  {TARGET_BACKBONE}: {text}" for ok, text in checks]
    if where:
        lines.append(where.strip())
    if row.report_checks < 50:
        lines.append(f"(info: the report target is for 50 checks; the log has {row.report_checks})")
    return lines


def main(args: argparse.Namespace) -> int:
    backend = keras.backend.backend()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")),
                cpu,
            )
    except OSError:
        pass
    print(
        f"actwatch {actwatch.__version__}, keras {keras.__version__}, backend {backend}, "
        f"python {platform.python_version()}, {os.cpu_count()} CPUs ({cpu})"
    )
    print(
        f"{args.size}x{args.size}, {args.probes} probes, default monitor; healthy fit: Adam "
        f"1e-3, {args.epochs} epochs of {args.samples} images in batches of {args.batch_size}; "
        f"report over {args.checks} checks"
    )
    root = args.log_dir or tempfile.mkdtemp(prefix="actwatch-scale-")
    if args.trust:
        import trust  # beside this file: issue 19's acceptance

        try:
            return trust.main(args, root, transfer_model)
        finally:
            if args.log_dir is None:
                shutil.rmtree(root, ignore_errors=True)
    rows = []
    try:
        for backbone in args.backbones:
            started = time.perf_counter()
            rows.append(measure(backbone, args, root))
            say(f"[{backbone}] done in {time.perf_counter() - started:.0f} s")
    finally:
        if args.log_dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print()
    print("\n".join(table(rows)))
    print()
    print(f"== targets (issue 10: {TARGET_BACKBONE}, {TARGET_SIZE} px, 4 probes, TensorFlow) ==")
    print("\n".join(targets(rows, args, backend)))
    print(f"(tensorflow imported: {sys.modules.get('tensorflow') is not None})")
    return 0


if __name__ == "__main__":
    assert ARGS is not None
    sys.exit(main(ARGS))
