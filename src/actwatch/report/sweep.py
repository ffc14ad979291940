"""The report of a sweep: a summary table of every run, learning rate against final dead fraction,
and the runs whose figures are drawn.

A log directory of many runs (a learning-rate sweep, say) is read lightly first
(`actwatch.events.finals`: network scalars, HParams, alert counts; no images). From
`FIGURE_RUNS + 2` runs on, or when runs are chosen, the page starts with one row per run and a
scatter of the initial learning rate against the final dead fraction. Per-run figures follow
for a few runs only (`FIGURE_RUNS`): the chosen ones (`runs=` names or globs), or the one with
the highest final dead fraction, the lowest and the median; `all_figures=True` draws every
run, as the report of a few runs does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure

from actwatch.events import finals
from actwatch.events.finals import RunFinals
from actwatch.render import figures as drawing
from actwatch.render import html as _html

__all__ = ["FIGURE_RUNS", "Sweep", "plan"]

#: How many runs get their figures drawn without `all_figures` (when more were chosen).
FIGURE_RUNS = 3


@dataclass
class Sweep:
    """What the report draws of a log directory: `runs` in the table (shown with `summary`),
    figures for `drawn`."""

    runs: list[RunFinals]
    drawn: list[RunFinals]
    summary: bool = False

    def paths(self) -> list[Path]:
        return [run.path for run in self.drawn]

    def html(self, scatter_png: bytes | None) -> str:
        """The summary section."""
        scatter = (
            _html.img(scatter_png, "learning rate against final dead fraction")
            if scatter_png is not None
            else '<p class="missing">No learning rate logged: no scatter.</p>'
        )
        drawn = ", ".join(_html.esc(r.name) for r in self.drawn)
        return f"""<section id="sweep"><h1>Sweep: {len(self.runs)} runs</h1>
<p class="note">Every run at its last check: the network's dead, zero and tau-dormant fraction
(over all watched layers) and the median update-to-weight ratio; the learning rate is the
initial one (its HParams, else the first logged). Figures below are drawn for: {drawn}. Choose
runs with <code>--runs NAME_OR_GLOB</code>, or draw every run with
<code>--all-figures</code>.</p>
{table(self.runs)}
<figure>{scatter}<figcaption>Initial learning rate (log scale) against the final dead
fraction, one point per run.</figcaption></figure></section>
"""


def plan(
    runs: Sequence[RunFinals], patterns: list[str] | None = None, all_figures: bool = False
) -> Sweep:
    """The runs matching `patterns` (all without) for the table, and those drawn: all with
    `all_figures` or when at most `FIGURE_RUNS + 1` were chosen, else the highest final dead
    fraction, the lowest and the median."""
    chosen_names = set(finals.choose([r.name for r in runs], patterns))
    chosen = [r for r in runs if r.name in chosen_names]
    # A few runs side by side (the page's own table lists them) need no sweep summary.
    summary = bool(patterns) or len(chosen) > FIGURE_RUNS + 1
    if all_figures or len(chosen) <= FIGURE_RUNS + 1:
        return Sweep(runs=chosen, drawn=chosen, summary=summary)
    ranked = sorted(chosen, key=_dead)  # ties in name order
    picks = [ranked[0], ranked[len(ranked) // 2], ranked[-1]][:FIGURE_RUNS]
    drawn = [r for r in chosen if any(r is p for p in picks)]
    return Sweep(runs=chosen, drawn=drawn, summary=True)


def _dead(run: RunFinals) -> float:
    value = finals.finite(run.final("dead_fraction"))
    return -1.0 if value is None else value


def _fmt(value: float | None, spec: str = ".3f") -> str:
    value = finals.finite(value)
    return "-" if value is None else format(value, spec)


def table(runs: Sequence[RunFinals]) -> str:
    """One row per run: name, learning rate, optimizer, final figures, alerts."""
    headers = [
        "run",
        "learning rate",
        "optimizer",
        "dead fraction",
        "zero fraction",
        "dormant fraction",
        "update ratio",
        "alerts",
    ]
    rows = [
        [
            run.name,
            _fmt(run.learning_rate, "g"),
            run.optimizer or "-",
            _fmt(run.final("dead_fraction")),
            _fmt(run.final("zero_fraction")),
            _fmt(run.final("dormant_fraction")),
            _fmt(run.final("update_ratio"), ".2e"),
            run.alerts,
        ]
        for run in runs
    ]
    return _html.table(headers, rows)


def scatter_figure(runs: Sequence[RunFinals]) -> Figure | None:
    """Initial learning rate (log x) against final dead fraction; None without rates."""
    points = [
        (lr, dead, run)
        for run in runs
        if (lr := finals.finite(run.learning_rate)) is not None
        and lr > 0
        and (dead := finals.finite(run.final("dead_fraction"))) is not None
    ]
    if not points:
        return None
    figure = Figure(figsize=(7, 4.2))
    axes = figure.subplots()
    optimizers = sorted({run.optimizer or "?" for _, _, run in points})
    colours = drawing.colours(optimizers)
    for name in optimizers:
        xs = [lr for lr, _, run in points if (run.optimizer or "?") == name]
        ys = [dead for _, dead, run in points if (run.optimizer or "?") == name]
        axes.scatter(xs, ys, s=28, color=colours[name], label=drawing.plain(name))
    if len(points) <= 20:
        for lr, dead, run in points:
            axes.annotate(drawing.plain(run.name), (lr, dead), fontsize=7, alpha=0.8,
                          xytext=(3, 3), textcoords="offset points")  # fmt: skip
    axes.set_xscale("log")
    low = min(lr for lr, _, _ in points)
    high = max(lr for lr, _, _ in points)
    if low == high:
        axes.set_xlim(low / 3, high * 3)
    axes.set_ylim(-0.03, max(0.1, max(d for _, d, _ in points)) * 1.08 + 0.01)
    axes.set_xlabel("initial learning rate")
    axes.set_ylabel("final dead fraction")
    axes.set_title(f"{len(points)} runs: learning rate against dead filters at the end")
    axes.grid(True, which="major", alpha=0.3)
    if len(optimizers) > 1 or optimizers != ["?"]:
        axes.legend(title="optimizer", fontsize=8)
    figure.tight_layout()
    return figure


def scatter_png(runs: Sequence[RunFinals]) -> bytes | None:
    figure = scatter_figure(runs)
    return None if figure is None else drawing.figure_png(figure)
