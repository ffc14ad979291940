"""The offline report: actwatch's event files as one self-contained HTML page, no TensorBoard.

Every directory under LOGDIR holding `events.out.tfevents.*` files is a run; runs are shown
side by side (a healthy learning rate next to one that kills filters, say). For each run the
report shows the per-layer zero fraction and Hoyer sparsity over the steps (the "blobby to
sparse" story), a layer x step heatmap of the dead fraction, each layer's filter grid of
probe 0 at the first, middle and last check, and the alerts. Every check is kept (TensorBoard
keeps 10 images per tag unless told otherwise). The figures are also written as PNG files in
a folder next to the page.

Reading: the events go through TensorBoard's own read path (`Event` protos, then its
`data_compat` and `dataclass_compat` layers). When TensorFlow is already imported (the
TensorFlow backend), TensorBoard's `EventFileLoader` reads the records with TensorFlow's C
reader. Otherwise the records are read here, with the same framing `sink.EventFileWriter`
writes and the C CRC32C: TensorBoard's TensorFlow-free stub checks CRCs in pure Python (about
9 MB/s, minutes for a long run's images), and importing TensorFlow off its backend is what
actwatch promises not to do.

```python
actwatch.report.write_report("logs", "reports/report.html")
```
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image
from tensorboard import data_compat, dataclass_compat
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.util import tensor_util

from . import _html, tags
from .sink import masked_crc32c

__all__ = ["RunLog", "find_runs", "read_run", "write_report"]

logger = logging.getLogger("actwatch")

EVENT_FILE = re.compile(r"^events\.out\.tfevents\.")
_FILTERS_PROBE0 = re.compile(r"^filters/(?P<layer>.+)/probe_0$")
#: Metrics drawn as curves over the steps, with their axis labels.
CURVES = {"zero_fraction": "zero fraction (sparsity)", "hoyer": "Hoyer sparsity"}


# Reading ---------------------------------------------------------------------------------


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
        layers: the watched layer paths, in the order the logs first name them.
    """

    name: str
    path: Path
    files: list[Path] = field(default_factory=list)
    scalars: dict[str, dict[int, float]] = field(default_factory=dict)
    grids: dict[str, dict[int, bytes]] = field(default_factory=dict)
    alerts: list[tuple[int, str]] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)

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

    def last(self, tag: str) -> float | None:
        values = self.scalars.get(tag)
        return values[max(values)] if values else None

    def _see_layer(self, layer: str) -> None:
        if layer not in self._seen:
            self._seen.add(layer)
            self.layers.append(layer)

    def __post_init__(self) -> None:
        self._seen: set[str] = set(self.layers)


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
        if any(EVENT_FILE.match(f) for f in files):
            runs.append(Path(directory))
    if not runs:
        raise FileNotFoundError(
            f"No TensorBoard event files (events.out.tfevents.*) under {os.fspath(logdir)!r}. "
            "Pass the `log_dir` given to ActivationMonitor, or a folder above several runs."
        )
    return sorted(runs)


def _event_files(run: Path) -> list[Path]:
    # Event file names start with the creation time, so name order is write order.
    return sorted(p for p in run.iterdir() if EVENT_FILE.match(p.name) and p.is_file())


def _records(path: Path) -> Iterator[bytes]:
    """Raw records of a TFRecord file, CRC-checked; stops at a truncated or corrupt record."""
    with open(path, "rb") as handle:
        offset = 0
        while True:
            header = handle.read(12)
            if len(header) < 12:
                return  # the end, or a header still being written
            (length,) = struct.unpack("<Q", header[:8])
            (header_crc,) = struct.unpack("<I", header[8:])
            if header_crc != masked_crc32c(header[:8]):
                _warn_corrupt(path, offset, "header")
                return
            data = handle.read(length)
            footer = handle.read(4)
            if len(data) < length or len(footer) < 4:
                return  # a record still being written: read what is complete
            if struct.unpack("<I", footer)[0] != masked_crc32c(data):
                _warn_corrupt(path, offset, "data")
                return
            offset += 16 + length
            yield data


def _warn_corrupt(path: Path, offset: int, part: str) -> None:
    logger.warning(
        "actwatch report: the record at byte %d of %s failed its %s CRC check; the rest of "
        "that file is skipped. The file is damaged (a copy cut short or edited?).",
        offset,
        path,
        part,
    )


def _events(path: Path) -> Iterator[event_pb2.Event]:
    """Events of one file through TensorBoard's read path (see the module docstring)."""
    if sys.modules.get("tensorflow") is not None:
        from tensorboard.backend.event_processing import event_file_loader

        return iter(event_file_loader.EventFileLoader(str(path)).Load())
    return _events_without_tensorflow(path)


def _events_without_tensorflow(path: Path) -> Iterator[event_pb2.Event]:
    """What TensorBoard's `EventFileLoader.Load` yields, with the records read here."""
    initial_metadata: dict[str, summary_pb2.SummaryMetadata] = {}
    for record in _records(path):
        event = data_compat.migrate_event(event_pb2.Event.FromString(record))
        yield from dataclass_compat.migrate_event(event, initial_metadata)


def read_run(
    run: str | os.PathLike[str], name: str | None = None, progress: _Progress | None = None
) -> RunLog:
    """Read one run directory's actwatch scalars, probe-0 filter grids and alerts."""
    path = Path(run)
    log = RunLog(name=name or path.name, path=path)
    plugins: dict[str, str] = {}  # summary metadata is written with a tag's first value only
    for file in _event_files(path):
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
        elif plugin == text_metadata.PLUGIN_NAME and tag == tags.ALERTS:
            text = value.tensor.string_val[0] if value.tensor.string_val else b""
            log.alerts.append((step, text.decode("utf-8", errors="replace")))


# Progress ----------------------------------------------------------------------------------


class _Progress:
    """A one-line progress bar on stderr, drawn at most 10 times a second."""

    WIDTH = 30

    def __init__(self, total: float, label: str, unit: str, *, stream: TextIO) -> None:
        self.total = max(float(total), 1.0)
        self.label = label
        self.unit = unit
        self.stream = stream
        self.done = 0.0
        self._drawn_at = 0.0

    def advance(self, amount: float) -> None:
        self.done = min(self.total, self.done + amount)
        now = time.monotonic()
        if now - self._drawn_at >= 0.1 or self.done >= self.total:
            self._drawn_at = now
            self._draw()

    def close(self) -> None:
        if self.done < self.total or not self._drawn_at:
            self.done = self.total
            self._draw()
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self) -> None:
        share = self.done / self.total
        filled = round(share * self.WIDTH)
        if self.unit == "MB":
            count = f"{self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB"
        else:
            count = f"{self.done:.0f}/{self.total:.0f} {self.unit}"
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r{self.label} [{bar}] {share:4.0%} {count}")
        self.stream.flush()


# Figures -----------------------------------------------------------------------------------


def _colours(layers: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """One colour per layer, the same in every run."""
    cmap = colormaps["tab10" if len(layers) <= 10 else "tab20"]
    return {layer: tuple(cmap(i % cmap.N)) for i, layer in enumerate(layers)}


def _curves_figure(log: RunLog, colours: dict[str, tuple[float, ...]]) -> Figure:
    figure = Figure(figsize=(11, 3.8), layout="constrained")
    for i, (metric, label) in enumerate(CURVES.items()):
        axes = figure.add_subplot(1, len(CURVES), i + 1)
        for layer in log.layers:
            steps, values = log.series(metric, layer)
            if steps:
                axes.plot(
                    steps,
                    values,
                    marker="." if len(steps) < 40 else None,
                    color=colours[layer],
                    label=_html.plain(layer),
                    linewidth=1.4,
                )
        network = sorted(log.scalars.get(tags.network_tag(metric), {}).items())
        if network:
            axes.plot(
                [s for s, _ in network],
                [v for _, v in network],
                color="black",
                linestyle="--",
                linewidth=1.6,
                label="network (mean)",
            )
        axes.set_ylim(-0.02, 1.02)
        axes.set_xlabel("step (training batches)")
        axes.set_title(label)
        axes.grid(alpha=0.3)
    handles, labels = figure.axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside right upper", fontsize=8)
    return figure


def _dead_figure(log: RunLog) -> Figure:
    steps = log.steps
    index = {s: i for i, s in enumerate(steps)}
    matrix = np.full((len(log.layers), max(len(steps), 1)), np.nan)
    for row, layer in enumerate(log.layers):
        for step, value in zip(*log.series("dead_fraction", layer), strict=True):
            matrix[row, index[step]] = value
    height = 1.2 + 0.28 * len(log.layers)
    figure = Figure(figsize=(11, height), layout="constrained")
    axes = figure.add_subplot(1, 1, 1)
    cmap = colormaps["Reds"].with_extremes(bad="#dddddd")
    image = axes.imshow(
        np.ma.masked_invalid(matrix),
        aspect="auto",
        cmap=cmap,
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
    )
    axes.set_yticks(range(len(log.layers)), [_html.plain(layer) for layer in log.layers])
    ticks = np.unique(np.linspace(0, max(len(steps) - 1, 0), min(len(steps), 8)).round())
    axes.set_xticks(ticks, [str(steps[int(t)]) for t in ticks] if steps else [])
    axes.set_xlabel("step of the check")
    axes.set_title("dead fraction per layer (grey: not recorded)")
    figure.colorbar(image, ax=axes, label="dead filters / filters", fraction=0.03)
    return figure


def _picked_steps(steps: Sequence[int]) -> list[tuple[str, int]]:
    """The first, middle and last of the sorted `steps` (fewer when there are fewer)."""
    if not steps:
        return []
    if len(steps) == 1:
        return [("first", steps[0])]
    middle = [("middle", steps[len(steps) // 2])] if len(steps) > 2 else []
    return [("first", steps[0]), *middle, ("last", steps[-1])]


def _grids_figure(layer: str, pngs: Sequence[tuple[str, int, bytes]]) -> Figure:
    images = [np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for _, _, png in pngs]
    h = max(i.shape[0] for i in images)
    w = max(i.shape[1] for i in images)
    scale = min(3.6 / max(w / 100, 0.1), 3.6 / max(h / 100, 0.1), 3.0)
    tile_w, tile_h = max(w / 100 * scale, 1.6), max(h / 100 * scale, 1.2)
    figure = Figure(figsize=(tile_w * len(images) + 0.4, tile_h + 0.6), layout="constrained")
    for i, ((label, step, _), image) in enumerate(zip(pngs, images, strict=True)):
        axes = figure.add_subplot(1, len(images), i + 1)
        axes.imshow(image, interpolation="nearest")
        axes.set_title(f"{label} check: step {step}", fontsize=9)
        axes.set_axis_off()
    figure.suptitle(_html.plain(layer), fontsize=10)
    return figure


# The page ----------------------------------------------------------------------------------


_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")


def _markdown_line(text: str) -> str:
    """One alert line: escaped, then `**bold**` and `` `code` `` (the only Markdown used)."""
    escaped = _html.esc(text)
    return _CODE.sub(r"<code>\1</code>", _BOLD.sub(r"<strong>\1</strong>", escaped))


def _alert_items(log: RunLog) -> list[str]:
    items = []
    for step, text in log.alerts:
        for part in text.split("\n\n"):
            line = part.strip()
            if line.startswith("- "):
                line = line[2:]
            if line:
                items.append(f"<li>step {step}: {_markdown_line(line)}</li>")
    return items


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.{digits}f}"


def _summary_table(runs: Sequence[RunLog]) -> str:
    rows = []
    for log in runs:
        steps = log.steps
        lr = log.last(tags.LEARNING_RATE)
        rows.append(
            [
                log.name,
                len(steps),
                f"{steps[0]}-{steps[-1]}" if steps else "-",
                len(log.layers),
                _fmt(log.last(tags.network_tag("zero_fraction"))),
                _fmt(log.last(tags.network_tag("hoyer"))),
                _fmt(log.last(tags.network_tag("dead_fraction"))),
                len(_alert_items(log)),
                "-" if lr is None else f"{lr:g}",
            ]
        )
    headers = [
        "run",
        "checks",
        "steps",
        "layers",
        "zero fraction",
        "Hoyer",
        "dead fraction",
        "alerts",
        "learning rate",
    ]
    return _html.table(headers, rows)


def _figure_html(png: bytes, alt: str, caption: str) -> str:
    """A figure: `alt` is plain text (escaped here), `caption` is markup."""
    return f"<figure>{_html.img(png, alt)}<figcaption>{caption}</figcaption></figure>"


def _run_caption(log: RunLog) -> str:
    return f'run <span class="run">{_html.esc(log.name)}</span>'


def _runs_row(cells: Sequence[str]) -> str:
    return '<div class="runs">' + "".join(f"<div>{c}</div>" for c in cells) + "</div>"


def write_report(
    logdir: str | os.PathLike[str],
    output: str | os.PathLike[str] = "report.html",
    *,
    progress: bool | None = None,
) -> Path:
    """Write the HTML report of every actwatch run under `logdir`; return its path.

    The page is self-contained (images inline); its figures are also written as PNG files in
    the folder `<output stem>_figures` next to it.

    Args:
        logdir: the `log_dir` of an `ActivationMonitor`, or a folder above several runs.
        output: the HTML file to write; its folder is created. Defaults to `report.html`.
        progress: draw a progress bar on stderr. Defaults to None: only when stderr is a
            terminal.

    Returns:
        The path of the HTML file.

    Example:

    ```python
    path = actwatch.report.write_report("logs", "reports/report.html")
    ```
    """
    out = Path(output)
    if out.is_dir():
        raise IsADirectoryError(
            f"Invalid value for the output: {os.fspath(output)!r} is a directory. Pass a file "
            "name such as report.html."
        )
    run_dirs = find_runs(logdir)
    root = Path(logdir)
    stream = sys.stderr
    show = stream.isatty() if progress is None else progress
    total = sum(f.stat().st_size for r in run_dirs for f in _event_files(r))
    bar = _Progress(total, "reading events", "MB", stream=stream) if show else None
    runs: list[RunLog] = []
    skipped: list[str] = []
    for run in run_dirs:
        name = run.relative_to(root).as_posix()
        log = read_run(run, name=run.resolve().name if name == "." else name, progress=bar)
        if log.layers:
            runs.append(log)
        else:
            skipped.append(log.name)
    if bar is not None:
        bar.close()
    if not runs:
        raise ValueError(
            f"No actwatch data under {os.fspath(logdir)!r}: the event files of the runs "
            f"{skipped} hold no actwatch tags (such as `zero_fraction/<layer>`). Were they "
            "written by another callback, such as keras.callbacks.TensorBoard? Pass the "
            "`log_dir` given to ActivationMonitor, or a folder above such runs."
        )
    body = _render(runs, skipped, root, out, show, stream)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_html.page(f"actwatch report: {os.fspath(logdir)}", body), encoding="utf-8")
    return out


def _render(
    runs: Sequence[RunLog],
    skipped: Sequence[str],
    root: Path,
    out: Path,
    show: bool,
    stream: TextIO,
) -> str:
    figures_dir = out.with_name(f"{out.stem}_figures")
    layers: list[str] = []
    for log in runs:
        layers.extend(layer for layer in log.layers if layer not in layers)
    colours = _colours(layers)
    count = len(runs) * 2 + sum(1 for log in runs for layer in log.layers if log.grids.get(layer))
    bar = _Progress(count, "drawing figures", "figures", stream=stream) if show else None

    def save(figure: Figure, name: str) -> bytes:
        png = _html.figure_png(figure)
        _html.write_png(figures_dir / name, png)
        if bar is not None:
            bar.advance(1)
        return png

    prefixes = {log.name: f"{i:02d}-{_html.slug(log.name)}" for i, log in enumerate(runs)}
    curves, dead = [], []
    for log in runs:
        prefix = prefixes[log.name]
        png = save(_curves_figure(log, colours), f"{prefix}-sparsity.png")
        curves.append(_figure_html(png, f"sparsity curves of run {log.name}", _run_caption(log)))
        png = save(_dead_figure(log), f"{prefix}-dead-fraction.png")
        dead.append(_figure_html(png, f"dead fraction of run {log.name}", _run_caption(log)))

    filter_rows = []
    for number, layer in enumerate(layers):
        cells = []
        for log in runs:
            grids = log.grids.get(layer, {})
            picks = _picked_steps(sorted(grids))
            if not picks:
                reason = "not watched" if layer not in log.layers else "no filter grids logged"
                cells.append(f'<p class="missing">{_run_caption(log)}: {reason}</p>')
                continue
            pngs = [(label, step, grids[step]) for label, step in picks]
            name = f"{prefixes[log.name]}-filters-{number:02d}-{_html.slug(layer)}.png"
            png = save(_grids_figure(layer, pngs), name)
            steps = ", ".join(f"{label} {step}" for label, step, _ in pngs)
            caption = f"{_run_caption(log)}, steps: {_html.esc(steps)}"
            cells.append(_figure_html(png, f"filters of {layer} in run {log.name}", caption))
        filter_rows.append(f"<h3>{_html.esc(layer)}</h3>{_runs_row(cells)}")
    if bar is not None:
        bar.close()

    alert_cells = []
    for log in runs:
        items = _alert_items(log)
        listing = f"<ol>{''.join(items)}</ol>" if items else '<p class="missing">no alerts</p>'
        alert_cells.append(f"<h3>{_html.esc(log.name)}</h3>{listing}")

    skipped_note = ""
    if skipped:
        names = ", ".join(_html.esc(s) for s in skipped)
        skipped_note = f'<p class="note">Skipped (no actwatch tags): {names}.</p>'
    return f"""<h1>actwatch report</h1>
<p class="note">Log directory <code>{_html.esc(root)}</code>, {len(runs)} run(s). Figures are
also in <code>{_html.esc(figures_dir.name)}/</code> next to this page.</p>
{skipped_note}
<nav><a href="#runs">Runs</a><a href="#sparsity">Sparsity</a><a href="#dead">Dead filters</a>
<a href="#filters">Filter grids</a><a href="#alerts">Alerts</a></nav>
<section id="runs"><h2>Runs</h2>
<p class="note">Figures at the last check; zero fraction, Hoyer and dead fraction over all
watched layers.</p>
{_summary_table(runs)}</section>
<section id="sparsity"><h2>Sparsity over training</h2>
<p class="note">Zero fraction: the share of activations that are &lt;= 0. Hoyer sparsity of each
filter map: 0 for a flat, blobby map, 1 for a single hot pixel. Both usually rise as filters
specialise: blobby maps become sparse and localised.</p>
{_runs_row(curves)}</section>
<section id="dead"><h2>Dead filters</h2>
<p class="note">The share of each layer's filters that output &lt;= 0 for every sample at a
check. A band that turns red and stays red is filters dying, usually from too high a learning
rate.</p>
{_runs_row(dead)}</section>
<section id="filters"><h2>Filter grids of probe 0</h2>
<p class="note">Each layer's filters at the first, middle and last check that has images. Each
tile is scaled to its own range; red crossed tiles are dead filters, magenta pixels
non-finite values.</p>
{"".join(filter_rows)}</section>
<section id="alerts" class="alerts"><h2>Alerts</h2>
{_runs_row(alert_cells)}</section>"""
