"""Reading actwatch runs back from their events files: scalars, probe-0 filter grids, alerts,
activation histograms and top-k strips.

Every directory under LOGDIR holding `events.out.tfevents.*` files is a run. The events go
through TensorBoard's own read path (`Event` protos, then its `data_compat` and
`dataclass_compat` layers). When TensorFlow is already imported (the TensorFlow backend),
TensorBoard's `EventFileLoader` reads the records with TensorFlow's C reader. Otherwise the
records are read by `records.read_records`, with the C CRC32C: TensorBoard's TensorFlow-free
stub checks CRCs in pure Python (about 9 MB/s, minutes for a long run's images), and
importing TensorFlow off its backend is what actwatch promises not to do.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from tensorboard import data_compat, dataclass_compat
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.util import tensor_util

from actwatch.events import tags
from actwatch.events.histograms import bin_counts
from actwatch.events.records import EVENT_FILE_PREFIX, read_records

__all__ = ["RunLog", "event_files", "find_runs", "read_run"]

_FILTERS_PROBE0 = re.compile(r"^filters/(?P<layer>.+)/probe_0$")
_HISTOGRAM = re.compile(r"^histogram/(?P<layer>.+)$")
_TOPK = re.compile(r"^topk/(?P<layer>.+)$")


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
        layers: the watched layer paths, in the order the logs first name them.
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

    def _see_layer(self, layer: str) -> None:
        if layer not in self._seen:
            self._seen.add(layer)
            self.layers.append(layer)

    def __post_init__(self) -> None:
        self._seen: set[str] = set(self.layers)


class Progress(Protocol):
    """Told how many bytes of events were read (a progress bar, say)."""

    def advance(self, amount: float) -> None: ...


def find_runs(logdir: str | os.PathLike[str]) -> list[Path]:
    """Every directory under `logdir` (itself included) that holds event files, sorted."""
    root = Path(logdir)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise FileNotFoundError(
            f"Invalid value for LOGDIR: {os.fspath(logdir)!r} {what}. Pass the `log_dir` given "
            "to ActivationMonitor (one run) or a folder above several runs (to compare them)."
        )
    runs = []
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        if any(f.startswith(EVENT_FILE_PREFIX) for f in files):
            runs.append(Path(directory))
    if not runs:
        raise FileNotFoundError(
            f"No TensorBoard event files (events.out.tfevents.*) under {os.fspath(logdir)!r}. "
            "Pass the `log_dir` given to ActivationMonitor, or a folder above several runs."
        )
    return sorted(runs)


def event_files(run: Path) -> list[Path]:
    """The events files of one run directory, in write order."""
    # Event file names start with the creation time, so name order is write order.
    return sorted(p for p in run.iterdir() if p.name.startswith(EVENT_FILE_PREFIX) and p.is_file())


def _events(path: Path) -> Iterator[event_pb2.Event]:
    """Events of one file through TensorBoard's read path (see the module docstring)."""
    if sys.modules.get("tensorflow") is not None:
        from tensorboard.backend.event_processing import event_file_loader

        return iter(event_file_loader.EventFileLoader(str(path)).Load())
    return _events_without_tensorflow(path)


def _events_without_tensorflow(path: Path) -> Iterator[event_pb2.Event]:
    """What TensorBoard's `EventFileLoader.Load` yields, with the records read by `records`."""
    initial_metadata: dict[str, summary_pb2.SummaryMetadata] = {}
    for record in read_records(path):
        event = data_compat.migrate_event(event_pb2.Event.FromString(record.payload))
        yield from dataclass_compat.migrate_event(event, initial_metadata)


def read_run(
    run: str | os.PathLike[str], name: str | None = None, progress: Progress | None = None
) -> RunLog:
    """Read one run directory's actwatch scalars, probe-0 filter grids and alerts."""
    path = Path(run)
    log = RunLog(name=name or path.name, path=path)
    plugins: dict[str, str] = {}  # summary metadata is written with a tag's first value only
    for file in event_files(path):
        log.files.append(file)
        done = 0
        for event in _events(file):
            if progress is not None:
                size = event.ByteSize() + 16
                done += size
                progress.advance(size)
            if event.HasField("summary"):
                _take(log, event.step, event.summary, plugins)
        if progress is not None:
            progress.advance(max(0, file.stat().st_size - done))
    log.alerts.sort(key=lambda item: item[0])
    return log


def _take(log: RunLog, step: int, summary: summary_pb2.Summary, plugins: dict[str, str]) -> None:
    for value in summary.value:
        tag = value.tag
        plugin = value.metadata.plugin_data.plugin_name
        if plugin:
            plugins[tag] = plugin
        else:
            plugin = plugins.get(tag, "")
        if plugin == scalar_metadata.PLUGIN_NAME:
            number = float(tensor_util.make_ndarray(value.tensor).reshape(-1)[0])
            log.scalars.setdefault(tag, {})[step] = number
            metric, _, layer = tag.partition("/")
            if metric in tags.METRICS and layer:
                log._see_layer(layer)
        elif plugin == image_metadata.PLUGIN_NAME:
            match = _FILTERS_PROBE0.match(tag)
            if match and len(value.tensor.string_val) >= 3:
                layer = match.group("layer")
                log._see_layer(layer)
                log.grids.setdefault(layer, {})[step] = value.tensor.string_val[2]
            topk = _TOPK.match(tag)
            if topk and len(value.tensor.string_val) >= 3:
                log.topk.setdefault(topk.group("layer"), {})[step] = value.tensor.string_val[2]
        elif plugin == histogram_metadata.PLUGIN_NAME:
            match = _HISTOGRAM.match(tag)
            if match:
                buckets = tensor_util.make_ndarray(value.tensor)
                log.histograms.setdefault(match.group("layer"), {})[step] = bin_counts(buckets)
        elif plugin == text_metadata.PLUGIN_NAME and tag == tags.ALERTS:
            text = value.tensor.string_val[0] if value.tensor.string_val else b""
            log.alerts.append((step, text.decode("utf-8", errors="replace")))
