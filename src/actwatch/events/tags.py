"""The tag scheme: every tag and description actwatch writes, built and parsed back (public API).

| what | tag |
| --- | --- |
| per-layer scalar | `{metric}/{layer}`, e.g. `dead_fraction/backbone/conv1` |
| whole-network scalar | `network/{metric}`, e.g. `network/dead_fraction` |
| learning rate at the check | `network/learning_rate` |
| checks whose images were skipped so far | `network/images_skipped` |
| filter grid | `filters/{layer}/probe_{i}` |
| heatmap over the probe | `heatmap/{layer}/probe_{i}` |
| token L2 norms on the patch grid (transformers) | `tokens/{layer}/probe_{i}` |
| attention per head (patch grid; text: query x key) | `attention/{layer}/probe_{i}` |
| per-layer signal scalar | `{signal}/{layer}`, e.g. `rms/conv1` (`{signal}` in `SIGNAL_METRICS`) |
| per-layer transformer scalar | `{metric}/{layer}` (`{metric}` in `TRANSFORMER_METRICS`) |
| activation histogram (Histograms and Distributions tabs) | `histogram/{layer}` |
| colorful dimension: histogram bins x checks (drawn layers) | `distribution/{layer}` |
| top-k samples of each drawn filter (drawn layers, `topk` > 0) | `topk/{layer}` |
| alerts (Markdown text) | `alerts` |
| custom-scalars layout | `custom_scalars__config__` (TensorBoard's own tag) |

`{metric}` is one of `METRICS`. Layer paths use `/` between nested models. The keys actwatch
adds to Keras' `logs` dict (`actwatch_{metric}`, `actwatch_{metric}/{layer}`) and the
descriptions shown beside every scalar are built here too. So is the reading side of the
format (as TensorBoard keeps a plugin's writing and parsing in its `metadata.py`): tags parsed
back into layer, metric and probe, per-layer scalars told from others by name or description,
and the alerts' Markdown parsed back into alerts.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Mapping, Sequence

from tensorboard.plugins.custom_scalar import layout_pb2

from actwatch.events.alert_texts import (
    ALERTS,
    LoggedAlert,
    MarkdownAlert,
    alert_texts,
    parse_alerts,
)
from actwatch.events.transformer_metrics import TRANSFORMER_METRICS

__all__ = [
    "AFTER_CHECK_METRICS",
    "ALERTS",
    "ATTENTION",
    "CHART_LINES",
    "DISTRIBUTION",
    "FILTERS",
    "HEADLINE_METRICS",
    "HEATMAP",
    "HISTOGRAM",
    "IMAGES_SKIPPED",
    "LEARNING_METRICS",
    "LEARNING_RATE",
    "LOGS_PREFIX",
    "METRICS",
    "NETWORK",
    "PROBE_IMAGES",
    "SIGNAL_METRICS",
    "TOKENS",
    "TOPK",
    "TRANSFORMER_METRICS",
    "LoggedAlert",
    "MarkdownAlert",
    "alert_texts",
    "attention_tag",
    "describe",
    "distribution_tag",
    "filters_tag",
    "heatmap_tag",
    "histogram_tag",
    "is_layer_metric",
    "layer_tag",
    "layout",
    "logs_figures",
    "network_tag",
    "parse_alerts",
    "parse_image_tag",
    "parse_layer_tag",
    "scalar_values",
    "tokens_tag",
    "topk_tag",
    "update_ratio_scalars",
]

#: Metric name -> description (Markdown), for per-layer and whole-network scalars.
METRICS: dict[str, str] = {
    "zero_fraction": "Fraction of activations <= 0 (sparsity).",
    "dead_filters": "Filters whose output is <= 0 at every position for every sample.",
    "dead_fraction": "Dead filters / filters.",
    "dormant_fraction": (
        "Fraction of tau-dormant filters (Sokar et al. 2023): mean |a| of the filter divided "
        "by the layer's mean of those is <= tau."
    ),
    "hoyer": (
        "Hoyer sparsity (Hoyer 2004) of each filter map, averaged: 0 flat and blobby, 1 a single "
        "hot pixel."
    ),
    "mean": "Mean activation.",
    "nonfinite": "Number of NaN or Inf activations.",
}
#: Per-layer signal metrics (see `actwatch.check.signals`) -> description (Markdown). Written per
#: layer only (no `network/` figure), and left out of the custom-scalars layout.
SIGNAL_METRICS: dict[str, str] = {
    "rms": (
        "RMS of the activations, sqrt(mean a^2) (signal propagation, Brock et al. 2021): "
        "exploding or vanishing signal."
    ),
    "channel_mean_sq": (
        "Average squared channel mean, mean_c (mean a_c)^2 (signal propagation, Brock et al. 2021)."
    ),
    "channel_var": (
        "Average channel variance, mean_c var a_c (signal propagation, Brock et al. 2021)."
    ),
    "max_abs": "Largest |a| (massive activations, Sun et al. 2024).",
    "outlier_ratio": (
        "max |a| / median |a| over the nonzero values of a sample of at most 4096 (massive "
        "activations, Sun et al. 2024: about 1000x in LLMs); 0 when all are zero."
    ),
    "erank": (
        "Effective rank (Roy & Vetterli 2007) of the spatially averaged features, samples x "
        "channels: exp of the entropy of the normalised singular values; at most "
        "min(samples, channels)."
    ),
    "srank": (
        "srank (Kumar et al. 2021), delta = 0.01: the fewest singular values of the spatially "
        "averaged features holding 99% of their sum; at most min(samples, channels)."
    ),
}
#: Learning-rate metrics (see `actwatch.diagnose.updates`, `actwatch.check.gradients`,
#: `actwatch.diagnose.revive`) -> description (Markdown), per layer and (`update_ratio`,
#: `revived_filters`) for the network.
LEARNING_METRICS: dict[str, str] = {
    "update_ratio": (
        "Update-to-weight ratio ||W_after - W_before|| / ||W_before|| of the layer's trainable "
        "weights over the one training step after a check (CS231n notes: about 1e-3 is "
        "healthy). Written at the step after the check."
    ),
    "gradient_rms": (
        "RMS of the compiled loss's gradient with respect to the layer's output, on "
        "`stats_data=(x, y)`: vanishing or exploding gradients."
    ),
    "gradient_dormant_fraction": (
        "Fraction of gradient-dormant filters (GraMa, Liu et al. 2025): mean |dL/da| of the "
        "filter divided by the layer's mean of those is <= tau."
    ),
    "revived_filters": "Filters re-initialised by revive='redo' (ReDo, Sokar et al. 2023).",
    "sharpness": (
        "Top eigenvalue of the loss Hessian on the labelled `stats_data`: gradient descent is "
        "stable below 2 / lr and trains at that edge (Cohen et al., ICLR 2021)."
    ),
    "sharpness_x_lr": "Sharpness times the learning rate: 2 at plain gradient descent's edge.",
    "preconditioned_sharpness": "Top eigenvalue of P^-1 H, P from Adam's second moments.",
    "sharpness_threshold": "The optimizer's stability edge at this rate (2 / lr for SGD).",
}
#: Whole-network figures put in Keras' `logs` dict and charted together in the layout.
HEADLINE_METRICS = ("zero_fraction", "dead_fraction", "dormant_fraction", "hoyer")
#: Per-layer metrics written at the step after a check, not at the check itself.
AFTER_CHECK_METRICS = frozenset({"update_ratio"})
NETWORK = "network"
LEARNING_RATE = f"{NETWORK}/learning_rate"
IMAGES_SKIPPED = f"{NETWORK}/images_skipped"
#: The first part of image and histogram tags (`filters_tag`, `heatmap_tag`, ...).
FILTERS, HEATMAP, TOPK = "filters", "heatmap", "topk"
HISTOGRAM, DISTRIBUTION = "histogram", "distribution"
#: The first part of transformers' picture tags (`tokens_tag`, `attention_tag`).
TOKENS, ATTENTION = "tokens", "attention"
#: The kinds of per-probe picture tags, `{kind}/{layer}/probe_{i}` (`parse_image_tag`).
PROBE_IMAGES = (FILTERS, HEATMAP, TOKENS, ATTENTION)
#: Prefix of the keys actwatch adds to Keras' `logs` dict.
LOGS_PREFIX = "actwatch_"


def layer_tag(metric: str, layer: str) -> str:
    return f"{metric}/{layer}"


def network_tag(metric: str) -> str:
    return f"{NETWORK}/{metric}"


def filters_tag(layer: str, probe: int) -> str:
    return f"{FILTERS}/{layer}/probe_{probe}"


def heatmap_tag(layer: str, probe: int) -> str:
    return f"{HEATMAP}/{layer}/probe_{probe}"


def tokens_tag(layer: str, probe: int) -> str:
    return f"{TOKENS}/{layer}/probe_{probe}"


def attention_tag(layer: str, probe: int) -> str:
    return f"{ATTENTION}/{layer}/probe_{probe}"


def histogram_tag(layer: str) -> str:
    return layer_tag(HISTOGRAM, layer)


def distribution_tag(layer: str) -> str:
    return layer_tag(DISTRIBUTION, layer)


def topk_tag(layer: str) -> str:
    return layer_tag(TOPK, layer)


_IMAGE_TAG = re.compile(rf"^(?P<kind>{'|'.join(PROBE_IMAGES)})/(?P<layer>.+)/probe_(?P<probe>\d+)$")


def parse_layer_tag(tag: str) -> tuple[str, str] | None:
    """`(metric, layer)` of a `{metric}/{layer}` tag (`layer_tag`, and `histogram_tag`,
    `distribution_tag`, `topk_tag` with their kind as the metric); None for a tag of
    another form or a `network/...` one."""
    metric, _, layer = tag.partition("/")
    if not metric or not layer or metric == NETWORK:
        return None
    return metric, layer


def parse_image_tag(tag: str) -> tuple[str, str, int] | None:
    """`(kind, layer, probe)` of a `filters_tag`, `heatmap_tag`, `tokens_tag` or
    `attention_tag` (kind one of `PROBE_IMAGES`); None for any other tag."""
    match = _IMAGE_TAG.match(tag)
    if match is None:
        return None
    return match.group("kind"), match.group("layer"), int(match.group("probe"))


#: At most this many layers share one custom-scalars chart: more lines are unreadable.
CHART_LINES = 12


def layout(layers: Sequence[str]) -> layout_pb2.Layout:
    """A custom-scalars layout: per metric, the watched layers' curves in network order.

    Up to `CHART_LINES` layers, one chart per metric with every layer in it, all in one
    category. Beyond, each metric has a category of its own, with one chart per run of at most
    `CHART_LINES` consecutive layers (a ResNet50's 50 layers: 5 charts, the last of 2 lines), titled
    by the first and last layer of the run. The network's headline figures get a chart too.
    """
    runs = [list(layers[i : i + CHART_LINES]) for i in range(0, len(layers), CHART_LINES)]

    def chart(metric: str, run: Sequence[str], title: str) -> layout_pb2.Chart:
        return layout_pb2.Chart(
            title=title,
            multiline=layout_pb2.MultilineChartContent(
                tag=[_exact(layer_tag(metric, layer)) for layer in run]
            ),
        )

    network = layout_pb2.Chart(
        title="network",
        multiline=layout_pb2.MultilineChartContent(
            tag=[_exact(network_tag(m)) for m in HEADLINE_METRICS]
        ),
    )
    if len(runs) <= 1:
        categories = [
            layout_pb2.Category(
                title="actwatch: layers per metric",
                chart=[chart(metric, layers, metric) for metric in METRICS],
            )
        ]
    else:
        categories = [
            layout_pb2.Category(
                title=f"actwatch: {metric}",
                chart=[chart(metric, run, f"{metric}: {run[0]} ... {run[-1]}") for run in runs],
                closed=metric not in HEADLINE_METRICS,
            )
            for metric in METRICS
        ]
    categories.append(layout_pb2.Category(title="actwatch: network", chart=[network]))
    return layout_pb2.Layout(category=categories)


def describe(
    metric: str, layer: str | None = None, *, network: str = "Over all watched layers."
) -> str:
    """The description (Markdown) of a scalar of `metric`: what it measures, then where.

    Per layer: `` "{about} Layer `{layer}`." ``, by which readers tell per-layer scalars
    (`is_layer_metric`); for the network (`layer` None): `"{about} {network}"`.
    """
    about = (
        METRICS.get(metric)
        or SIGNAL_METRICS.get(metric)
        or TRANSFORMER_METRICS.get(metric)
        or LEARNING_METRICS[metric]
    )
    return f"{about} Layer `{layer}`." if layer is not None else f"{about} {network}"


def is_layer_metric(metric: str, layer: str, description: str = "") -> bool:
    """True when a `{metric}/{layer}` scalar is a per-layer figure of actwatch's: a metric of
    `METRICS`, `SIGNAL_METRICS`, `TRANSFORMER_METRICS` or `LEARNING_METRICS`, or one described
    as `describe` describes a layer's (metrics are added over time: a reader lists them all)."""
    known = any(
        metric in m for m in (METRICS, SIGNAL_METRICS, TRANSFORMER_METRICS, LEARNING_METRICS)
    )
    return known or description.endswith(f"Layer `{layer}`.")


def scalar_values(
    layers: Mapping[str, Mapping[str, float]],
    network: Mapping[str, float],
    learning_rate: float | None,
) -> dict[str, tuple[float, str]]:
    """Every scalar of one check as `{tag: (value, description)}`.

    Args:
        layers: per layer path, `{metric: value}` (`LayerStats.scalars()`).
        network: `{metric: value}` over all watched layers (`NetworkStats.scalars()`).
        learning_rate: the optimizer's learning rate at the check, or None when unknown
            (then no `network/learning_rate` scalar).
    """
    out: dict[str, tuple[float, str]] = {}
    for path, figures in layers.items():
        for metric, value in figures.items():
            out[layer_tag(metric, path)] = (value, describe(metric, path))
    for metric, value in network.items():
        out[network_tag(metric)] = (value, describe(metric))
    if learning_rate is not None:
        out[LEARNING_RATE] = (learning_rate, "The optimizer's learning rate.")
    return out


def update_ratio_scalars(ratios: Mapping[str, float]) -> dict[str, tuple[float, str]]:
    """One measurement's update-to-weight ratios as `{tag: (value, description)}`: each
    layer's, and their median over the watched layers (none without ratios)."""
    metric = "update_ratio"
    out = {layer_tag(metric, p): (r, describe(metric, p)) for p, r in ratios.items()}
    if ratios:
        median = float(statistics.median(ratios.values()))
        about = describe(metric, network="Median over the watched layers.")
        out[network_tag(metric)] = (median, about)
    return out


def logs_figures(
    network: Mapping[str, float], layers: Mapping[str, Mapping[str, float]] | None = None
) -> dict[str, float]:
    """The keys actwatch adds to Keras' `logs` dict.

    `actwatch_{metric}` for each of `HEADLINE_METRICS` over the network, and with `layers`
    (per layer path, `{metric: value}`) `actwatch_{metric}/{layer}` for every metric too.
    """
    figures = {f"{LOGS_PREFIX}{m}": network[m] for m in HEADLINE_METRICS}
    for path, values in (layers or {}).items():
        for metric, value in values.items():
            figures[f"{LOGS_PREFIX}{layer_tag(metric, path)}"] = value
    return figures


def _exact(tag: str) -> str:
    """A regex matching exactly `tag` (custom-scalars charts take regexes)."""
    return f"^{re.escape(tag)}$"
