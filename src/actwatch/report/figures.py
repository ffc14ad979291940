"""The report's figures of runs read back: curves, the dead-filter map, histograms, signals.

Each takes a `RunLog` (`actwatch.events.runs`) and draws with the generic helpers of
`actwatch.render.figures` (which draw no run). No Keras import.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from actwatch.events import tags
from actwatch.events.histograms import bin_label
from actwatch.events.runs import RunLog
from actwatch.render.figures import LEGEND_LAYERS, plain, plot_lines
from actwatch.render.tiles import colorful_dimension

__all__ = [
    "CURVES",
    "LEARNING_CURVES",
    "SHARPNESS_CURVES",
    "SIGNAL_CURVES",
    "curves_figure",
    "dead_figure",
    "distribution_figure",
    "histograms_figure",
    "learning_figure",
    "signals_figure",
]

#: Metrics drawn as curves over the steps, with their axis labels.
CURVES = {"zero_fraction": "zero fraction (sparsity)", "hoyer": "Hoyer sparsity"}


def _lines(log: RunLog, metric: str, layers: list[str]) -> list[tuple[str, list[int], list[float]]]:
    """`(layer, steps, values)` of `metric` for each of `layers`."""
    return [(layer, *log.series(metric, layer)) for layer in layers]


def curves_figure(log: RunLog, layer_colours: dict[str, tuple[float, ...]]) -> Figure:
    """`CURVES` over the steps: one line per layer, and the network's mean dashed.

    With more than `LEGEND_LAYERS` layers the lines are thin and coloured by depth, and a
    colour bar replaces the legend.
    """
    many = len(log.layers) > LEGEND_LAYERS
    figure = Figure(figsize=(11, 3.8), layout="constrained")
    for i, (metric, label) in enumerate(CURVES.items()):
        axes = figure.add_subplot(1, len(CURVES), i + 1)
        lines = _lines(log, metric, log.layers)
        width, alpha = (0.7, 0.8) if many else (1.4, 1.0)
        plot_lines(axes, lines, layer_colours, markers=not many, linewidth=width, alpha=alpha)
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
    if many:
        scale = ScalarMappable(cmap=colormaps["viridis"], norm=Normalize(1, len(log.layers)))
        bar = figure.colorbar(scale, ax=figure.axes, fraction=0.03)
        bar.set_label("layer, in network order (dashed: network mean)", fontsize=8)
        return figure
    handles, labels = figure.axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside right upper", fontsize=8)
    return figure


def dead_figure(log: RunLog) -> Figure:
    """The dead fraction as a layer x step heatmap.

    Grey where a layer has no dead figure at a check: not recorded, or its outputs were not
    ReLU-like there (a linear convolution, GELU, swish), where "dead" means nothing. Rows get
    thinner, and only every k-th is labelled, so 250 layers stay one readable figure.
    """
    steps = log.steps
    index = {s: i for i, s in enumerate(steps)}
    matrix = np.full((len(log.layers), max(len(steps), 1)), np.nan)
    for row, layer in enumerate(log.layers):
        for step, value in zip(*log.series("dead_fraction", layer), strict=True):
            matrix[row, index[step]] = value
    rows = len(log.layers)
    row_height = 0.28 if rows <= 40 else max(0.06, 11.0 / rows)
    height = 1.2 + row_height * rows
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
    every = max(1, math.ceil(rows / 60))  # at most 60 labels
    labelled = range(0, rows, every)
    axes.set_yticks(
        list(labelled),
        [plain(log.layers[i]) for i in labelled],
        fontsize=10 if rows <= 40 else 6,
    )
    ticks = np.unique(np.linspace(0, max(len(steps) - 1, 0), min(len(steps), 8)).round())
    axes.set_xticks(ticks, [str(steps[int(t)]) for t in ticks] if steps else [])
    axes.set_xlabel("step of the check")
    axes.set_title("dead fraction per layer (grey: not recorded, or not ReLU-like there)")
    revived = [
        (index[step], row)
        for row, layer in enumerate(log.layers)
        for step, count in zip(*log.series("revived_filters", layer), strict=True)
        if count > 0 and step in index
    ]
    if revived:  # revive="redo": a marker on the cell of each check that revived filters
        axes.scatter(
            [c for c, _ in revived],
            [r for _, r in revived],
            marker="^",
            s=36,
            color="#1a9850",
            edgecolors="black",
            linewidths=0.5,
            label="filters revived (ReDo)",
        )
        axes.legend(loc="upper left", fontsize=8)
    figure.colorbar(image, ax=axes, label="dead filters / filters", fraction=0.03)
    return figure


#: Learning-rate curves: metric -> (title, y-axis label).
LEARNING_CURVES = {
    "update_ratio": ("update-to-weight ratio of one step", "||dW|| / ||W||"),
    "gradient_rms": ("RMS of the loss gradient by the output", "gradient RMS"),
}


def learning_figure(
    log: RunLog,
    layer_colours: dict[str, tuple[float, ...]],
    bounds: tuple[float, float] = (1e-5, 1e-1),
) -> Figure | None:
    """`LEARNING_CURVES` per layer on log scales, the ratio with its healthy 1e-3 (CS231n)
    and the alert bounds dashed, and with `sharpness=True` the sharpness against the
    optimizer's stability edge; None when the run logged none of them."""
    present = [
        m
        for m in LEARNING_CURVES
        if any(log.series(m, layer)[0] for layer in log.scalars_layers(m))
    ]
    sharpness = tags.network_tag("sharpness") in log.scalars
    panels = len(present) + sharpness
    if not panels:
        return None
    figure = Figure(figsize=(11, 3.8), layout="constrained")
    layer_axes = []
    for i, metric in enumerate(present):
        title, label = LEARNING_CURVES[metric]
        axes = figure.add_subplot(1, panels, i + 1)
        layer_axes.append(axes)
        lines = [
            (layer, steps, list(np.maximum(values, 1e-12)))
            for layer, steps, values in _lines(log, metric, log.scalars_layers(metric))
        ]
        plot_lines(axes, lines, layer_colours, markers=True)
        if metric == "update_ratio":
            for value, style in ((bounds[0], ":"), (1e-3, "--"), (bounds[1], ":")):
                axes.axhline(value, color="grey", linestyle=style, linewidth=1)
        _log_axes(axes, label, title)
    if sharpness:
        _sharpness_panel(figure.add_subplot(1, panels, panels), log)
    if layer_axes:
        handles, labels = max(
            (axes.get_legend_handles_labels() for axes in layer_axes), key=lambda h: len(h[0])
        )
        if handles and len(handles) <= LEGEND_LAYERS:
            figure.legend(handles, labels, loc="outside right upper", fontsize=8)
    return figure


#: The network's curvature figures (`sharpness=True`): metric, label, line style.
SHARPNESS_CURVES = (
    ("sharpness", "sharpness (top Hessian eigenvalue)", "-"),
    ("preconditioned_sharpness", "preconditioned sharpness (Adam)", "-"),
    ("sharpness_threshold", "stability edge (2/lr; 38/lr preconditioned, Adam)", "--"),
)


def _sharpness_panel(axes: Axes, log: RunLog) -> None:
    """The sharpness at each check against the optimizer's stability edge (Cohen et al.
    2021): training drives it up to the edge, where a higher rate no longer trains faster."""
    for metric, label, style in SHARPNESS_CURVES:
        points = sorted(log.scalars.get(tags.network_tag(metric), {}).items())
        if points:
            steps, values = zip(*points, strict=True)
            axes.plot(steps, values, style, marker="o" if style == "-" else None, label=label)
    _log_axes(axes, "eigenvalue", "sharpness against the stability edge")
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2))


def _log_axes(axes: Axes, label: str, title: str) -> None:
    axes.set_yscale("log")
    axes.set_xlabel("step (training batches)")
    axes.set_ylabel(label)
    axes.set_title(title)
    axes.grid(alpha=0.3)


def _bin_ticks(first: int, last: int, rows: int) -> tuple[list[int], list[str]]:
    """At most 6 y ticks of a colorful-dimension panel whose rows are bins `last..first`."""
    count = last - first + 1
    picks = np.unique(np.linspace(0, count - 1, min(count, 6)).round().astype(int))
    return [int(p) for p in picks], [plain(bin_label(last - int(p))) for p in picks]


_Panel = tuple[Axes, str, list[tuple[int, np.ndarray]]]


def _histogram_panels(log: RunLog, columns: int, height: float) -> tuple[Figure, list[_Panel]]:
    """A figure with one panel, `height` inches high, for each layer with histograms (watched
    layers first, in order), `columns` a row: `(axes, layer, [(step, counts)] by step)`."""
    layers = [layer for layer in log.layers if log.histograms.get(layer)]
    layers += [layer for layer in log.histograms if layer not in layers]
    columns = max(1, min(columns, len(layers)))
    rows = max(1, math.ceil(len(layers) / columns))
    figure = Figure(figsize=(3.2 * columns, height * rows + 0.4), layout="constrained")
    panels = [
        (figure.add_subplot(rows, columns, i + 1), layer, sorted(log.histograms[layer].items()))
        for i, layer in enumerate(layers)
    ]
    return figure, panels


def distribution_figure(log: RunLog, columns: int = 4) -> Figure:
    """fastai's colorful dimension for every layer with histograms: bins (rows, largest at the
    top) x checks (columns), brightness log(1 + count) scaled per layer (inferno)."""
    figure, panels = _histogram_panels(log, columns, 2.4)
    for axes, layer, points in panels:
        body, last = colorful_dimension([counts for _, counts in points])
        axes.imshow(
            body, aspect="auto", cmap="inferno", vmin=0.0, vmax=1.0, interpolation="nearest"
        )
        ticks, labels = _bin_ticks(last - body.shape[0] + 1, last, body.shape[0])
        axes.set_yticks(ticks, labels, fontsize=6)
        steps = [s for s, _ in points]
        xt = np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 4)).round().astype(int))
        axes.set_xticks(list(xt), [str(steps[int(t)]) for t in xt], fontsize=7)
        axes.set_title(plain(layer), fontsize=8)
    figure.suptitle(
        "colorful dimension: histogram bins (rows) x checks (steps), brightness log(1 + count)",
        fontsize=9,
    )
    return figure


def histograms_figure(log: RunLog, columns: int = 4) -> Figure:
    """Each layer's activation histogram at its first and last check, as the share of its
    values in each bin (x: the bins in order, labelled by range)."""
    figure, panels = _histogram_panels(log, columns, 2.2)
    for axes, layer, points in panels:
        used = np.flatnonzero(np.sum([c for _, c in points], axis=0) > 0)
        lo, hi = (int(used[0]), int(used[-1])) if used.size else (0, 0)
        picked = [points[0], points[-1]] if len(points) > 1 else points[:1]
        for (step, counts), style in zip(picked, ("--", "-"), strict=False):
            share = counts[lo : hi + 1] / max(float(counts.sum()), 1.0)
            axes.step(
                np.arange(lo, hi + 1), share, where="mid", linestyle=style, label=f"step {step}"
            )
        xt = np.unique(np.linspace(lo, hi, min(hi - lo + 1, 4)).round().astype(int))
        axes.set_xticks(list(xt), [plain(bin_label(int(t))) for t in xt], fontsize=6)
        axes.set_title(plain(layer), fontsize=8)
        axes.legend(fontsize=6)
    figure.suptitle(
        "activation histograms, first and last check (share of values per bin)", fontsize=9
    )
    return figure


#: Signal scalars drawn over the steps in the report, with their axis labels and scales.
SIGNAL_CURVES = {
    "rms": ("RMS of the activations", "log"),
    "channel_var": ("average channel variance", "log"),
    "outlier_ratio": ("max |a| / median |a|", "log"),
    "erank": ("effective rank of the features", "linear"),
    "attention_logit_max": ("largest attention logit", "log"),
    "attention_entropy": ("attention entropy", "linear"),
}


def signals_figure(log: RunLog, layer_colours: dict[str, tuple[float, ...]]) -> Figure | None:
    """`SIGNAL_CURVES` over the steps, one line per layer (signal propagation, outliers,
    feature rank); None when the run has none of them."""
    present = [m for m in SIGNAL_CURVES if any(log.series(m, layer)[0] for layer in log.layers)]
    if not present:
        return None
    many = len(log.layers) > LEGEND_LAYERS
    figure = Figure(figsize=(3.0 * len(present) + 1.5, 3.4), layout="constrained")
    for i, metric in enumerate(present):
        label, scale = SIGNAL_CURVES[metric]
        axes = figure.add_subplot(1, len(present), i + 1)
        plot_lines(
            axes, _lines(log, metric, log.layers), layer_colours, linewidth=0.7 if many else 1.3
        )
        positive = [v for layer in log.layers for v in log.series(metric, layer)[1] if v > 0]
        if scale == "log" and positive:
            axes.set_yscale("log")
        axes.set_xlabel("step (training batches)")
        axes.set_title(label, fontsize=9)
        axes.grid(alpha=0.3)
    handles, labels = figure.axes[0].get_legend_handles_labels()
    if handles and not many:
        figure.legend(handles, labels, loc="outside right upper", fontsize=7)
    return figure
