"""The report's page: every run under LOGDIR read back and drawn as one self-contained HTML file.

Every directory under LOGDIR holding `events.out.tfevents.*` files is a run (read by
`actwatch.events.runs`); runs are shown side by side (a healthy learning rate next to one
that kills filters, say). For each run the report shows the per-layer zero fraction and Hoyer
sparsity over the steps (the "blobby to sparse" story), a layer x step heatmap of the dead
fraction, each layer's filter grid of probe 0 at the first, middle and last check, the
activation histograms and fastai's colorful dimension of every layer, each drawn layer's top-k
strips at the last check (when `topk` was on), and the alerts. Every check is kept
(TensorBoard keeps 10 images per tag unless told otherwise). The figures
(`actwatch.report.figures`) are also written as PNG files in a folder next to the page.

```python
actwatch.report.write_report("logs", "reports/report.html")
```
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from matplotlib.figure import Figure

from actwatch.events import tags
from actwatch.events.finals import read_sweep
from actwatch.events.reader import local_logdir
from actwatch.events.runs import RunLog, event_files, find_runs, read_run
from actwatch.render import figures as drawing
from actwatch.render import html as _html
from actwatch.report import figures, sweep
from actwatch.report.pictures import NOTE as PICTURES_NOTE
from actwatch.report.pictures import picture_rows
from actwatch.report.progress import ProgressBar

__all__ = ["write_report"]


# The page ---------------------------------------------------------------------------------


def _picked_steps(steps: Sequence[int]) -> list[tuple[str, int]]:
    """The first, middle and last of the sorted `steps` (fewer when there are fewer)."""
    if not steps:
        return []
    if len(steps) == 1:
        return [("first", steps[0])]
    middle = [("middle", steps[len(steps) // 2])] if len(steps) > 2 else []
    return [("first", steps[0]), *middle, ("last", steps[-1])]


_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")


def _markdown_line(text: str) -> str:
    """One alert line: escaped, then `**bold**` and `` `code` `` (the only Markdown used)."""
    escaped = _html.esc(text)
    return _CODE.sub(r"<code>\1</code>", _BOLD.sub(r"<strong>\1</strong>", escaped))


def _alert_items(log: RunLog) -> list[str]:
    """Each alert of the run as it was written (`tags.parse_alerts`), one list item."""
    return [f"<li>step {a.step}: {_markdown_line(a.markdown)}</li>" for a in log.alert_list()]


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
    runs: Sequence[str] | None = None,
    all_figures: bool = False,
) -> Path:
    """Write the HTML report of every actwatch run under `logdir`; return its path.

    Of a sweep (more than `sweep.FIGURE_RUNS + 1` runs, or runs chosen with `runs`), the page
    starts with a table of every run's final figures and
    a scatter of learning rate against final dead fraction (`actwatch.report.sweep`); per-run
    figures follow for a few runs (`runs`, or the highest, median and lowest final dead
    fraction), for all of them with `all_figures`.

    The page is self-contained (images inline); its figures are also written as PNG files in
    the folder `<output stem>_figures` next to it.

    Args:
        logdir: the `log_dir` of an `ActivationMonitor`, or a folder above several runs.
        output: the HTML file to write; its folder is created. Defaults to `report.html`.
        progress: draw a progress bar on stderr. Defaults to None: only when stderr is a
            terminal.
        runs: run names or globs (`"lr_*"`): the runs in the table, and drawn when few.
            Defaults to None: every run.
        all_figures: draw every chosen run's figures. Defaults to False.

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
    root = local_logdir(logdir)  # a URL (s3://...): its local copy, brought up to date
    run_dirs = find_runs(root)
    found = read_sweep(root) if len(run_dirs) > 1 or runs else []
    plan = sweep.plan(found, list(runs or []), all_figures)
    left_out = {r.path for r in found} - set(plan.paths())  # runs with no figures drawn
    run_dirs = [r for r in run_dirs if r not in left_out]
    stream = sys.stderr
    show = stream.isatty() if progress is None else progress
    total = sum(f.stat().st_size for r in run_dirs for f in event_files(r))
    bar = ProgressBar(total, "reading events", "MB", stream=stream) if show else None
    logs: list[RunLog] = []
    skipped: list[str] = []
    for run in run_dirs:
        name = run.relative_to(root).as_posix()
        log = read_run(run, name=run.resolve().name if name == "." else name, progress=bar)
        if log.layers:
            logs.append(log)
        else:
            skipped.append(log.name)
    if bar is not None:
        bar.close()
    if not logs:
        raise ValueError(
            f"No actwatch data under {os.fspath(logdir)!r}: the event files of the runs "
            f"{skipped} hold no actwatch tags (such as `zero_fraction/<layer>`). Were they "
            "written by another callback, such as keras.callbacks.TensorBoard? Pass the "
            "`log_dir` given to ActivationMonitor, or a folder above such runs."
        )
    head = ""
    if plan.summary:
        scatter = sweep.scatter_png(plan.runs)
        if scatter is not None:
            _html.write_png(out.with_name(f"{out.stem}_figures") / "sweep-scatter.png", scatter)
        head = plan.html(scatter)
    body = head + _render(logs, skipped, root, out, show, stream)
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
    colours = drawing.colours(layers)
    count = len(runs) * 2 + sum(1 for log in runs for layer in log.layers if log.grids.get(layer))
    count += 2 * sum(1 for log in runs if log.histograms)
    learning = {log.name: figures.learning_figure(log, colours) for log in runs}
    count += sum(1 for figure in learning.values() if figure is not None)
    # The signal curves, also for runs without histograms (written with histograms=False).
    signal_curves = {log.name: figures.signals_figure(log, colours) for log in runs}
    count += sum(1 for figure in signal_curves.values() if figure is not None)
    bar = ProgressBar(count, "drawing figures", "figures", stream=stream) if show else None

    def save(figure: Figure, name: str) -> bytes:
        png = drawing.figure_png(figure)
        _html.write_png(figures_dir / name, png)
        if bar is not None:
            bar.advance(1)
        return png

    prefixes = {log.name: f"{i:02d}-{_html.slug(log.name)}" for i, log in enumerate(runs)}
    curves, dead = [], []
    for log in runs:
        prefix = prefixes[log.name]
        png = save(figures.curves_figure(log, colours), f"{prefix}-sparsity.png")
        curves.append(_figure_html(png, f"sparsity curves of run {log.name}", _run_caption(log)))
        png = save(figures.dead_figure(log), f"{prefix}-dead-fraction.png")
        dead.append(_figure_html(png, f"dead fraction of run {log.name}", _run_caption(log)))

    learning_cells = []
    for log in runs:
        figure = learning[log.name]
        if figure is None:
            learning_cells.append(
                f'<p class="missing">{_run_caption(log)}: no update ratios or gradients logged</p>'
            )
            continue
        png = save(figure, f"{prefixes[log.name]}-learning-rate.png")
        caption = _run_caption(log)
        learning_cells.append(_figure_html(png, f"learning-rate curves of run {log.name}", caption))

    signal_cells = []
    for log in runs:
        prefix = prefixes[log.name]
        if log.histograms:
            png = save(figures.histograms_figure(log), f"{prefix}-histograms.png")
            cell = _figure_html(png, f"activation histograms of run {log.name}", _run_caption(log))
        else:
            cell = f'<p class="missing">{_run_caption(log)}: no histograms logged</p>'
        signals_plot = signal_curves[log.name]
        if signals_plot is not None:
            png = save(signals_plot, f"{prefix}-signals.png")
            caption = f"{_run_caption(log)}: signal propagation, outliers, feature rank"
            cell += _figure_html(png, f"signals of run {log.name}", caption)
        if log.histograms:
            png = save(figures.distribution_figure(log), f"{prefix}-colorful-dimension.png")
            caption = f"{_run_caption(log)}: colorful dimension"
            cell += _figure_html(png, f"colorful dimension of run {log.name}", caption)
        signal_cells.append(cell)

    topk_rows = []
    for number, layer in enumerate(layers):
        cells = []
        for log in runs:
            strips = log.topk.get(layer)
            if not strips:
                continue
            step = max(strips)
            name = f"{prefixes[log.name]}-topk-{number:02d}-{_html.slug(layer)}.png"
            _html.write_png(figures_dir / name, strips[step])
            caption = f"{_run_caption(log)}, step {step}"
            cells.append(_figure_html(strips[step], f"top-k of {layer} in run {log.name}", caption))
        if cells:
            topk_rows.append(f"<h3>{_html.esc(layer)}</h3>{_runs_row(cells)}")
    if not topk_rows:
        topk_rows.append(
            '<p class="missing">No top-k strips logged: pass topk=4 (and stats_data) to '
            "ActivationMonitor.</p>"
        )

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
            png = save(drawing.steps_figure(layer, pngs), name)
            steps = ", ".join(f"{label} {step}" for label, step, _ in pngs)
            caption = f"{_run_caption(log)}, steps: {_html.esc(steps)}"
            cells.append(_figure_html(png, f"filters of {layer} in run {log.name}", caption))
        filter_rows.append(f"<h3>{_html.esc(layer)}</h3>{_runs_row(cells)}")
    pictures = picture_rows(runs, layers, prefixes, figures_dir, _figure_html, _run_caption)
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
<a href="#learning">Learning rate</a><a href="#filters">Filter grids</a>
{'<a href="#transformers">Tokens and attention</a>' if pictures else ""}
<a href="#histograms">Histograms</a><a href="#topk">Top-k</a><a href="#alerts">Alerts</a></nav>
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
<section id="learning"><h2>Learning rate: update ratios, gradients, sharpness</h2>
<p class="note">Left: how far one training step after each check moved each layer's weights,
||dW|| / ||W||; about 1e-3 is healthy (dashed), above 1e-1 or below 1e-5 (dotted) for
<code>patience</code> checks raises a learning-rate alert. Right, when
<code>stats_data=(x, y)</code> has labels: the RMS of the loss gradient with respect to each
layer's output (vanishing or exploding gradients). Last, with <code>sharpness=True</code>: the
loss Hessian's top eigenvalue against the optimizer's stability edge (2/lr for gradient
descent, 38/lr of the preconditioned sharpness for Adam), which training drives it up to.
Green triangles on the dead-fraction map
above mark checks where <code>revive="redo"</code> re-initialised dead filters.</p>
{_runs_row(learning_cells)}</section>
<section id="filters"><h2>Filter grids of probe 0</h2>
<p class="note">Each layer's filters at the first, middle and last check that has images. Each
tile is scaled to its own range; red crossed tiles are dead filters, magenta pixels
non-finite values.</p>
{"".join(filter_rows)}</section>
{f'<section id="transformers"><h2>Tokens and attention</h2>{PICTURES_NOTE}' if pictures else ""}
{"".join(pictures) + "</section>" if pictures else ""}
<section id="histograms"><h2>Activation histograms and the colorful dimension</h2>
<p class="note">Each layer's activations on the statistics data in fixed symmetric log bins (a
bin around 0, two an octave from 2^-20 (about 1e-6) to 2^20 (about 1e6) on each side), at the
first and last check; the signals over the steps (RMS and average channel variance: signal
propagation, Brock et al. 2021; max |a| / median |a|: massive activations, Sun et al. 2024;
effective rank of the features, Roy and Vetterli 2007); and fastai's colorful dimension: the
bins (rows, largest values at the top) over the checks (columns), brightness log(1 + count).
Collapse, saturation and dying show as shapes.</p>
{_runs_row(signal_cells)}</section>
<section id="topk"><h2>What each filter responds to (top-k)</h2>
<p class="note">For each drawn filter (left to right, top to bottom) the statistics samples
whose activation peaks highest, highest first, the peak outlined in green; last check.</p>
{"".join(topk_rows)}</section>
<section id="alerts" class="alerts"><h2>Alerts</h2>
{_runs_row(alert_cells)}</section>"""
