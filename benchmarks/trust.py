"""Issue 19's acceptance: are the dead filters the monitor alerts on dead as training sees them?

Run through `scale.py --trust` (which sets the backend before Keras is imported):

    .venv/bin/python benchmarks/scale.py --trust --backbones resnet50,mobilenetv2 --epochs 2

For each backbone at 224 px (`weights=None`, trained from scratch with Adam 1e-3), the images
and probes go through the family's own `preprocess_input` (from 0-255 pixels), and a default
`ActivationMonitor` watches the fit. Right after each of its checks a callback calls the
backbone's watched layers itself, in training mode (`training=True` in a
`keras.StatelessScope`, dropout rates set to 0), on the same probes, and counts:

- dead: filters the monitor's `last_stats` calls dead (ReLU-like layers);
- false dead: those of them whose output is > 0 for some probe and position in that pass;
- inference dead: filters dead in the inference-mode pass (`training=False`), the view the
  monitor used before issue 19, for contrast.

It also times the monitor's compiled call (`timings["device"]`) against the probes' forward
pass (`predict_on_batch`), both warm, medians.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

import actwatch
from actwatch.demo import make_dataset

FAMILIES = {
    "resnet50": keras.applications.resnet50,
    "mobilenetv2": keras.applications.mobilenet_v2,
    "efficientnetb0": keras.applications.efficientnet,
    "convnexttiny": keras.applications.convnext,
}


@dataclass
class TrustRow:
    """The acceptance figures of one backbone."""

    backbone: str
    checks: list[dict[str, int]] = field(default_factory=list)  # per check: the counts
    dead_alerts: int = 0
    alerted_filters: int = 0
    false_alerted: int = 0
    device: list[float] = field(default_factory=list)
    forward: float = 0.0
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    skipped: int = 0  # watched layers inside a nested block of the backbone: not compared
    kinds: dict[str, int] = field(default_factory=dict)  # every alert, by kind

    @property
    def false_dead(self) -> int:
        return sum(c["false_dead"] for c in self.checks)


@contextlib.contextmanager
def no_dropout(model: keras.Model) -> Iterator[None]:
    """Dropout rates at 0 for the reference pass (the monitor keeps dropout off too)."""
    saved = [(layer, layer.rate) for layer in model._flatten_layers() if hasattr(layer, "rate")]
    try:
        for layer, _ in saved:
            layer.rate = 0.0
        yield
    finally:
        for layer, rate in saved:
            layer.rate = rate


class Compare(keras.callbacks.Callback):
    """Put right after the monitor: after each of its checks, the reference passes."""

    def __init__(self, monitor: Any, base: keras.Model, probes: Any, row: TrustRow) -> None:
        super().__init__()
        self.monitor, self.base, self.probes, self.row = monitor, base, probes, row
        self.seen: Any = None
        self.alerts_seen = 0
        self.reference: keras.Model | None = None
        self.names: list[str] = []

    def compare(self) -> None:
        stats = self.monitor.last_stats
        if stats is self.seen or not stats:
            return
        self.seen = stats
        if self.reference is None:
            own = {layer.name for layer in self.base.layers}  # not inside a nested block
            self.names = [p.split("/")[-1] for p in stats if p.split("/")[-1] in own]
            self.row.skipped = len(stats) - len(self.names)
            layers = [self.base.get_layer(n) for n in self.names]
            self.reference = keras.Model(self.base.input, [layer.output for layer in layers])
        with no_dropout(self.base), keras.StatelessScope():
            trained = self.reference(self.probes, training=True)
        inferred = self.reference(self.probes, training=False)
        alive: dict[str, np.ndarray] = {}
        counts = {"dead": 0, "false_dead": 0, "inference_dead": 0, "layers_dead": 0}
        for path, layer_stats in stats.items():
            name = path.split("/")[-1]
            if name not in self.names:
                continue
            a = keras.ops.convert_to_numpy(trained[self.names.index(name)])
            b = keras.ops.convert_to_numpy(inferred[self.names.index(name)])
            alive[name] = a.reshape(-1, a.shape[-1]).max(axis=0) > 0
            if not layer_stats.nonnegative:  # "dead" is written only for ReLU-like outputs
                continue
            counts["inference_dead"] += int((b.reshape(-1, b.shape[-1]).max(axis=0) <= 0).sum())
            dead = np.asarray(layer_stats.dead, bool)
            counts["layers_dead"] += int(dead.any())
            counts["dead"] += int(dead.sum())
            counts["false_dead"] += int((dead & alive[name]).sum())
        self.row.checks.append(counts)
        self.row.device.append(self.monitor.timings.get("device", float("nan")))
        for alert in self.monitor.alerts[self.alerts_seen :]:
            self.row.kinds[alert.kind] = self.row.kinds.get(alert.kind, 0) + 1
            if alert.kind == "dead":
                self.row.dead_alerts += 1
                self.row.alerted_filters += len(alert.dead_filters)
                mask = alive.get(alert.layer.split("/")[-1])
                if mask is not None:
                    self.row.false_alerted += int(mask[list(alert.dead_filters)].sum())
        self.alerts_seen = len(self.monitor.alerts)

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.compare()

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.compare()
        if logs and "loss" in logs:
            self.row.losses.append(float(logs["loss"]))


def images(n: int, size: int, seed: int, backbone: str) -> tuple[np.ndarray, np.ndarray]:
    """Generated 0-255 images through the family's own `preprocess_input`, and labels."""
    x, y = make_dataset(n, size, seed=seed)
    return np.asarray(FAMILIES[backbone].preprocess_input(x * 255.0), "float32"), y


def run(backbone: str, args: Any, log_dir: str, build: Any) -> TrustRow:
    """One backbone: a monitored fit from scratch and the reference passes at each check."""
    row = TrustRow(backbone)
    started = time.perf_counter()
    x, y = images(args.samples, args.size, args.seed, backbone)
    probes, _ = images(args.probes, args.size, args.seed + 1, backbone)
    model = build(backbone, args.size, 5, args.seed)
    base = model.layers[0]
    monitor = actwatch.ActivationMonitor(probes, log_dir)
    compare = Compare(monitor, base, probes, row)
    model.fit(
        x,
        y,
        batch_size=args.batch_size,
        epochs=args.epochs,
        callbacks=[monitor, compare],
        verbose=0,
    )
    compare.compare()  # the train-end check, if any
    model.predict_on_batch(probes)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        model.predict_on_batch(probes)
        times.append(time.perf_counter() - start)
    row.forward = statistics.median(times)
    row.seconds = time.perf_counter() - started
    return row


def table(rows: list[TrustRow]) -> list[str]:
    def warm_device(r: TrustRow) -> float:
        return statistics.median(r.device[1:]) if len(r.device) > 1 else float("nan")

    lines = [
        ("checks", [str(len(r.checks)) for r in rows]),
        ("watched layers not compared (nested)", [str(r.skipped) for r in rows]),
        ("training loss by epoch", ["/".join(f"{v:.2f}" for v in r.losses) for r in rows]),
        ("alerts of any kind", [
            ", ".join(f"{k} {v}" for k, v in sorted(r.kinds.items())) or "0" for r in rows]),
        ("dead alerts", [str(r.dead_alerts) for r in rows]),
        ("filters in dead alerts", [str(r.alerted_filters) for r in rows]),
        ("  of which alive in training mode", [str(r.false_alerted) for r in rows]),
        ("dead filters, all checks", [str(sum(c["dead"] for c in r.checks)) for r in rows]),
        ("false dead (alive in training mode)", [str(r.false_dead) for r in rows]),
        ("inference view's dead, all checks", [
            str(sum(c["inference_dead"] for c in r.checks)) for r in rows]),
        ("check's device call (warm, median)", [f"{warm_device(r) * 1e3:.0f} ms" for r in rows]),
        ("probes' forward (predict_on_batch)", [f"{r.forward * 1e3:.0f} ms" for r in rows]),
        ("check / forward", [f"{warm_device(r) / r.forward:.1f}x" for r in rows]),
        ("wall time of the run", [f"{r.seconds:.0f} s" for r in rows]),
    ]  # fmt: skip
    width = max(len(name) for name, _ in lines)
    cols = [max(len(r.backbone), *(len(v[i]) for _, v in lines)) for i, r in enumerate(rows)]
    out = [
        " " * width + "  " + "  ".join(r.backbone.rjust(c) for r, c in zip(rows, cols, strict=True))
    ]
    for name, values in lines:
        out.append(
            f"{name.ljust(width)}  "
            + "  ".join(v.rjust(c) for v, c in zip(values, cols, strict=True))
        )
    total = sum(r.false_dead + r.false_alerted for r in rows)
    out.append(f"{'PASS' if total == 0 else 'FAIL'}  0 false dead filters (found {total})")
    return out


def main(args: Any, root: str, build: Any) -> int:
    rows = []
    for backbone in args.backbones:
        print(f"[{backbone}] trust run ({args.epochs} epochs)", file=sys.stderr, flush=True)
        rows.append(run(backbone, args, f"{root}/{backbone}-trust", build))
    print("\n".join(table(rows)))
    return 0 if all(r.false_dead + r.false_alerted == 0 for r in rows) else 1
