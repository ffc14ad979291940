"""The network-level figures of every run of a sweep, read lightly (no images kept).

A sweep of 50 runs is read for its table (the report's summary, the tab's run table) without
holding any run's images or histograms: for each run its `network/...` scalars over the steps,
its learning rate, its HParams (`actwatch.events.hparams`) and how many alerts it raised.
Reading goes through `actwatch.events.reader`, the one reader of runs.
"""

from __future__ import annotations

import fnmatch
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from tensorboard.plugins.hparams import metadata as hparams_metadata

from actwatch.events import reader, tags
from actwatch.events.hparams import HParamValue

__all__ = ["FINAL_METRICS", "RunFinals", "choose", "read_finals", "read_sweep"]

#: The network figures a sweep is compared by (tags `network/{metric}`), at the last check.
FINAL_METRICS = ("dead_fraction", "zero_fraction", "dormant_fraction", "update_ratio")


@dataclass
class RunFinals:
    """One run's network figures and hyperparameters.

    Attributes:
        name: the run's name (its directory relative to LOGDIR, as TensorBoard names it).
        path: its directory.
        series: `{metric: [(step, value), ...]}` of every `network/{metric}` scalar, by step.
        hparams: its HParams (optimizer, learning rate, ... and the user's), {} without.
        alerts: how many alerts it raised.
        first_learning_rate: the first `network/learning_rate` logged, or None.
        has_layers: whether it holds actwatch's per-layer figures or pictures.
    """

    name: str
    path: Path
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    hparams: dict[str, HParamValue] = field(default_factory=dict)
    alerts: int = 0
    first_learning_rate: float | None = None
    has_layers: bool = False

    def final(self, metric: str) -> float | None:
        """The last value of `network/{metric}`; None when never logged."""
        points = self.series.get(metric)
        return points[-1][1] if points else None

    @property
    def learning_rate(self) -> float | None:
        """The initial learning rate: the HParams' one, else the first one logged."""
        value = self.hparams.get("learning_rate")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return self.first_learning_rate

    @property
    def optimizer(self) -> str:
        value = self.hparams.get("optimizer")
        return value if isinstance(value, str) else ""

    @property
    def is_actwatch(self) -> bool:
        """Whether actwatch wrote this run (it has network figures)."""
        return self.has_layers or any(m in self.series for m in tags.HEADLINE_METRICS)


def read_finals(name: str, path: str | os.PathLike[str]) -> RunFinals:
    """Read one run's network scalars, learning rate, HParams and alert count."""
    run = RunFinals(name=name, path=Path(path))
    values = reader.Values()
    points: dict[str, dict[int, float]] = {}
    prefix = f"{tags.NETWORK}/"
    for file in reader.event_files(path):
        for _, event in reader.events(file):
            for value in event.summary.value:
                if value.tag == hparams_metadata.SESSION_START_INFO_TAG:
                    run.hparams = _session_hparams(value.metadata.plugin_data.content)
            for item in values.items(event):
                run.has_layers = run.has_layers or bool(item.layer)
                if item.kind == reader.SCALAR and item.tag.startswith(prefix):
                    points.setdefault(item.tag[len(prefix) :], {})[item.step] = item.value
                elif item.kind == reader.TEXT and item.tag == tags.ALERTS:
                    run.alerts += len(tags.parse_alerts(item.step, item.value, []))
    rates = points.pop("learning_rate", {})
    run.first_learning_rate = rates[min(rates)] if rates else None
    run.series = {m: sorted(v.items()) for m, v in points.items()}
    return run


def _session_hparams(content: bytes) -> dict[str, HParamValue]:
    """The hyperparameters of a session start info (`hparams.summary_values`)."""
    try:
        info = hparams_metadata.parse_session_start_info_plugin_data(content)
    except (DecodeError, ValueError):
        return {}
    out: dict[str, HParamValue] = {}
    for name, value in info.hparams.items():
        kind = value.WhichOneof("kind")
        if kind == "number_value":
            number = value.number_value
            out[name] = int(number) if number.is_integer() and abs(number) < 2**53 else number
        elif kind == "string_value":
            out[name] = value.string_value
        elif kind == "bool_value":
            out[name] = value.bool_value
    return out


def read_sweep(logdir: str | os.PathLike[str]) -> list[RunFinals]:
    """Every run under `logdir` that actwatch wrote, by name (`reader.run_dirs`)."""
    runs = []
    for name, path in reader.run_dirs(logdir):
        run = read_finals(path.resolve().name if name == "." else name, path)
        if run.is_actwatch:
            runs.append(run)
    return runs


def choose(names: list[str], patterns: list[str] | None) -> list[str]:
    """The names matching any of `patterns` (exact names or globs: `lr_*`, `sweep/?3`), in
    their order; all of them without patterns.

    Raises:
        ValueError: a pattern that matches no run, naming the runs there are.
    """
    if not patterns:
        return list(names)
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            shown = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")
            raise ValueError(
                f"Invalid value for --runs: {pattern!r} matches no run. Runs: {shown}. Pass run "
                "names or globs such as 'lr_*' (quote them in the shell)."
            )
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def finite(value: float | None) -> float | None:
    """`value`, or None when it is missing or not finite."""
    return value if value is not None and math.isfinite(value) else None
