"""A run read whole for the report: its scalars, probe-0 filter grids, alerts, histograms, top-k.

Reading goes through `actwatch.events.reader`, the one reader of runs (the dashboard's index
uses it too): records read with the C CRC32C, damaged ones skipped, each value classified and
its tag parsed there. No TensorFlow import, on any backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from actwatch.events import reader, tags
from actwatch.events.histograms import bin_counts
from actwatch.events.reader import event_files, find_runs

__all__ = ["RunLog", "event_files", "find_runs", "read_run"]


@dataclass
class RunLog:
    """What one run's event files hold that the report draws.

    Attributes:
        name: the run's directory relative to LOGDIR (its own name when it is LOGDIR).
        path: the run's directory.
        files: its event files, in the order they were read.
        scalars: `{tag: {step: value}}` for every scalar tag (a later write of a step wins).
        grids: `{layer: {step: PNG bytes}}`, the filter grid of probe 0 at each check.
        alerts: `(step, Markdown text)` of each check that raised alerts, in step order.
        histograms: `{layer: {step: counts}}`, each check's activation histogram as counts
            over `actwatch.events.histograms.HISTOGRAM_EDGES`' bins.
        topk: `{layer: {step: PNG bytes}}`, the top-k strips (`topk/{layer}`) of each check.
        pictures: `{kind: {layer: {step: PNG bytes}}}`, transformers' pictures of probe 0
            (`kind` `tags.TOKENS` or `tags.ATTENTION`) at each check.
        layers: the watched layer paths in network order (`reader.LayerOrder`).
    """

    name: str
    path: Path
    files: list[Path] = field(default_factory=list)
    scalars: dict[str, dict[int, float]] = field(default_factory=dict)
    grids: dict[str, dict[int, bytes]] = field(default_factory=dict)
    alerts: list[tuple[int, str]] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)
    histograms: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    topk: dict[str, dict[int, bytes]] = field(default_factory=dict)
    pictures: dict[str, dict[str, dict[int, bytes]]] = field(default_factory=dict)

    @property
    def steps(self) -> list[int]:
        """Steps of every check, sorted."""
        steps: set[int] = set()
        for layer in self.layers:
            steps.update(self.scalars.get(tags.layer_tag("zero_fraction", layer), {}))
        return sorted(steps)

    def series(self, metric: str, layer: str) -> tuple[list[int], list[float]]:
        """`(steps, values)` of a per-layer metric, sorted by step."""
        points = sorted(self.scalars.get(tags.layer_tag(metric, layer), {}).items())
        return [s for s, _ in points], [v for _, v in points]

    def scalars_layers(self, metric: str) -> list[str]:
        """The layers with a `{metric}/{layer}` scalar, watched layers first, in order."""
        prefix = f"{metric}/"
        found = [t[len(prefix) :] for t in self.scalars if t.startswith(prefix)]
        return [x for x in self.layers if x in found] + [x for x in found if x not in self.layers]

    def last(self, tag: str) -> float | None:
        values = self.scalars.get(tag)
        return values[max(values)] if values else None

    def alert_list(self) -> list[tags.LoggedAlert]:
        """Every alert parsed from the alerts' texts (`tags.parse_alerts`), in step order."""
        return [a for step, text in self.alerts for a in tags.parse_alerts(step, text, self.layers)]


class Progress(Protocol):
    """Told how many bytes of events were read (a progress bar, say)."""

    def advance(self, amount: float) -> None: ...


def read_run(
    run: str | os.PathLike[str], name: str | None = None, progress: Progress | None = None
) -> RunLog:
    """Read one run directory's actwatch scalars, images, histograms and alerts."""
    path = Path(run)
    log = RunLog(name=name or path.name, path=path)
    values = reader.Values()
    order = reader.LayerOrder()
    for file in event_files(path):
        log.files.append(file)
        done = 0
        for record, event in reader.events(file):
            if progress is not None:
                size = len(record.payload) + 16
                done += size
                progress.advance(size)
            for item in values.items(event):
                _take(log, order, item)
        if progress is not None:
            progress.advance(max(0, file.stat().st_size - done))
    log.layers = order.layers
    log.alerts.sort(key=lambda item: item[0])
    return log


def _take(log: RunLog, order: reader.LayerOrder, item: reader.Item) -> None:
    if item.kind == reader.SCALAR:
        log.scalars.setdefault(item.tag, {})[item.step] = item.value
        if item.layer:
            order.see(item)
    elif item.kind == reader.IMAGE:
        if item.metric in tags.PROBE_IMAGES:
            order.see(item)
            if item.metric == tags.FILTERS and item.probe == 0:
                log.grids.setdefault(item.layer, {})[item.step] = item.value
            elif item.metric in (tags.TOKENS, tags.ATTENTION) and item.probe == 0:
                layers = log.pictures.setdefault(item.metric, {})
                layers.setdefault(item.layer, {})[item.step] = item.value
        elif item.metric == tags.TOPK:
            log.topk.setdefault(item.layer, {})[item.step] = item.value
    elif item.kind == reader.HISTOGRAM and item.layer:
        log.histograms.setdefault(item.layer, {})[item.step] = bin_counts(item.value)
    elif item.kind == reader.TEXT and item.tag == tags.ALERTS:
        log.alerts.append((item.step, item.value))
