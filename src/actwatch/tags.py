"""The tag scheme: every TensorBoard tag actwatch writes is built here. It is public API.

| what | tag |
| --- | --- |
| per-layer scalar | `{metric}/{layer}`, e.g. `dead_fraction/backbone/conv1` |
| whole-network scalar | `network/{metric}`, e.g. `network/dead_fraction` |
| learning rate at the check | `network/learning_rate` |
| checks whose images were skipped so far | `network/images_skipped` |
| filter grid | `filters/{layer}/probe_{i}` |
| heatmap over the probe | `heatmap/{layer}/probe_{i}` |
| alerts (Markdown text) | `alerts` |
| custom-scalars layout | `custom_scalars__config__` (TensorBoard's own tag) |

`{metric}` is one of `METRICS`. Layer paths use `/` between nested models.
"""

from __future__ import annotations

from collections.abc import Sequence

from tensorboard.plugins.custom_scalar import layout_pb2

__all__ = [
    "ALERTS",
    "IMAGES_SKIPPED",
    "LEARNING_RATE",
    "METRICS",
    "NETWORK",
    "filters_tag",
    "heatmap_tag",
    "layer_tag",
    "layout",
    "network_tag",
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
NETWORK = "network"
LEARNING_RATE = f"{NETWORK}/learning_rate"
IMAGES_SKIPPED = f"{NETWORK}/images_skipped"
ALERTS = "alerts"


def layer_tag(metric: str, layer: str) -> str:
    return f"{metric}/{layer}"


def network_tag(metric: str) -> str:
    return f"{NETWORK}/{metric}"


def filters_tag(layer: str, probe: int) -> str:
    return f"filters/{layer}/probe_{probe}"


def heatmap_tag(layer: str, probe: int) -> str:
    return f"heatmap/{layer}/probe_{probe}"


def layout(layers: Sequence[str]) -> layout_pb2.Layout:
    """A custom-scalars layout: one chart per metric with every watched layer in it."""
    charts = []
    for metric in METRICS:
        tags = [layer_tag(metric, layer) for layer in layers]
        charts.append(
            layout_pb2.Chart(
                title=metric,
                multiline=layout_pb2.MultilineChartContent(tag=[_exact(t) for t in tags]),
            )
        )
    network = layout_pb2.Chart(
        title="network",
        multiline=layout_pb2.MultilineChartContent(
            tag=[
                _exact(network_tag(m))
                for m in ("zero_fraction", "dead_fraction", "dormant_fraction", "hoyer")
            ]
        ),
    )
    return layout_pb2.Layout(
        category=[
            layout_pb2.Category(title="actwatch: layers per metric", chart=charts),
            layout_pb2.Category(title="actwatch: network", chart=[network]),
        ]
    )


def _exact(tag: str) -> str:
    """A regex matching exactly `tag` (custom-scalars charts take regexes)."""
    import re

    return f"^{re.escape(tag)}$"
