"""The tab's run table: every run under the log directory with its final network figures.

The route `sweep` of the plugin answers `{"metrics": [...], "runs": [{"name", "learning_rate",
"optimizer", "alerts", "checks", "final": {metric: v}, "series": {metric: [v, ...]}}]}`, one
entry per run with actwatch data, by name; `final` holds each of `finals.FINAL_METRICS` at the
last check (null when never logged or not finite), `series` at most `SPARK_POINTS` values per
metric over the steps (for the sparklines). Each run is read with `actwatch.events.finals`
(network scalars, HParams and alerts; images are skipped) and read again only when its events
files grew, so a sweep of 50 runs is read once and then kept.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from actwatch.events import finals, reader
from actwatch.events.finals import RunFinals

__all__ = ["SPARK_POINTS", "RunsTable"]

#: At most this many values per sparkline (evenly picked over the steps, the last one kept).
SPARK_POINTS = 40


class RunsTable:
    """Each run's final figures, kept until its events files change."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[tuple[tuple[str, int, int], ...], dict[str, Any]]] = {}

    def rows(self, runs: dict[str, Path]) -> dict[str, Any]:
        """The `sweep` answer for `runs` (`{name: directory}`, the runs with actwatch data)."""
        out = []
        for name in sorted(runs):
            path = runs[name]
            key = _files_key(path)
            cached = self._cache.get(name)
            if cached is None or cached[0] != key:
                cached = (key, _row(finals.read_finals(name, path)))
                self._cache[name] = cached
            out.append(cached[1])
        for gone in set(self._cache) - set(runs):
            del self._cache[gone]
        return {"metrics": list(finals.FINAL_METRICS), "runs": out}


def _files_key(path: Path) -> tuple[tuple[str, int, int], ...]:
    """What changes when a run's events files do: their names, sizes and modification times."""
    key = []
    for file in reader.event_files(path):
        try:
            found = os.stat(file)
        except OSError:
            continue
        key.append((os.fspath(file), found.st_size, found.st_mtime_ns))
    return tuple(key)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _row(run: RunFinals) -> dict[str, Any]:
    series = {}
    for metric in finals.FINAL_METRICS:
        values = [v for _, v in run.series.get(metric, [])]
        if len(values) > SPARK_POINTS:
            picks = [round(i * (len(values) - 1) / (SPARK_POINTS - 1)) for i in range(SPARK_POINTS)]
            values = [values[i] for i in picks]
        series[metric] = [_finite(v) for v in values]
    steps = {step for points in run.series.values() for step, _ in points}
    return {
        "name": run.name,
        "learning_rate": _finite(run.learning_rate),
        "optimizer": run.optimizer,
        "alerts": run.alerts,
        "checks": len(run.series.get("dead_fraction", [])) or len(steps),
        "final": {m: _finite(run.final(m)) for m in finals.FINAL_METRICS},
        "series": series,
    }
