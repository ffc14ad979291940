"""`actwatch.events.tags` read back: every tag and description it builds parses back to what
built it, and the reader classifies values by metadata or, when that was lost, by form."""

from __future__ import annotations

import numpy as np
import pytest
from tensorboard.compat.proto import event_pb2

from actwatch.events import reader, summaries, tags

# Reading, rendering and serving: no Keras backend involved, so once per make test.
pytestmark = pytest.mark.read_path

LAYERS = ["conv1", "backbone/block_1/conv", "a/probe_0", "$x<b>"]


@pytest.mark.parametrize("layer", LAYERS)
def test_tags_parse_back_to_what_built_them(layer: str) -> None:
    """Layer paths with `/`, a path ending like a probe, markup: each tag gives back its
    layer, metric, kind and probe."""
    for metric in (*tags.METRICS, *tags.SIGNAL_METRICS, *tags.LEARNING_METRICS):
        assert tags.parse_layer_tag(tags.layer_tag(metric, layer)) == (metric, layer)
    assert tags.parse_layer_tag(tags.histogram_tag(layer)) == (tags.HISTOGRAM, layer)
    assert tags.parse_layer_tag(tags.distribution_tag(layer)) == (tags.DISTRIBUTION, layer)
    assert tags.parse_layer_tag(tags.topk_tag(layer)) == (tags.TOPK, layer)
    for probe in (0, 7, 12):
        assert tags.parse_image_tag(tags.filters_tag(layer, probe)) == (tags.FILTERS, layer, probe)
        assert tags.parse_image_tag(tags.heatmap_tag(layer, probe)) == (tags.HEATMAP, layer, probe)
    assert tags.parse_image_tag(tags.topk_tag(layer)) is None


def test_network_and_other_tags_name_no_layer() -> None:
    for tag in (tags.network_tag("dead_fraction"), tags.LEARNING_RATE, tags.ALERTS, "epoch_loss"):
        assert tags.parse_layer_tag(tag) is None
        assert tags.parse_image_tag(tag) is None


def test_descriptions_are_built_once_and_read_back() -> None:
    """`describe` builds the descriptions `scalar_values` and `update_ratio_scalars` write
    (unchanged), and `is_layer_metric` tells a metric it does not know by them."""
    values = tags.scalar_values({"conv1": {"rms": 1.0}}, {"dead_fraction": 0.5}, 0.1)
    assert values["rms/conv1"][1] == f"{tags.SIGNAL_METRICS['rms']} Layer `conv1`."
    assert values["network/dead_fraction"][1] == (
        f"{tags.METRICS['dead_fraction']} Over all watched layers."
    )
    ratios = tags.update_ratio_scalars({"conv1": 1e-3, "conv2": 3e-3})
    about = tags.LEARNING_METRICS["update_ratio"]
    assert ratios["update_ratio/conv2"][1] == f"{about} Layer `conv2`."
    assert ratios["network/update_ratio"] == (2e-3, f"{about} Median over the watched layers.")
    assert tags.is_layer_metric("dead_fraction", "conv1")
    assert not tags.is_layer_metric("new_metric", "conv1")
    assert tags.is_layer_metric("new_metric", "conv1", "Something new. Layer `conv1`.")
    assert not tags.is_layer_metric("new_metric", "conv1", "Something new. Layer `conv2`.")


class _Alert:
    def __init__(self, kind: str, text: str) -> None:
        self.kind = kind
        self._text = text

    def markdown(self) -> str:
        return self._text


def test_alert_texts_parse_back() -> None:
    """Each alert comes back with its layer (the longest quoted known one), kind, the plain
    message and the Markdown as written; an item of another form is kept whole."""
    alerts = [
        _Alert("dead", "2 filter(s) of layer `block/conv` are dead: [0, 1]."),
        _Alert("nonfinite", "Layer `conv` has 3 NaN values."),
    ]
    ((body, _),) = tags.alert_texts(alerts).values()
    body += "\n\nsomething else"
    parsed = tags.parse_alerts(6, body, ["conv", "block/conv"])
    assert [(a.step, a.layer, a.kind) for a in parsed] == [
        (6, "block/conv", "dead"),
        (6, "conv", "nonfinite"),
        (6, "", ""),
    ]
    assert parsed[0].message == "2 filter(s) of layer 'block/conv' are dead: [0, 1]."
    assert parsed[0].markdown == "**dead**: 2 filter(s) of layer `block/conv` are dead: [0, 1]."
    assert parsed[2].message == parsed[2].markdown == "something else"
    assert tags.alert_texts([]) == {}


PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 20


def _event(step: int, described: bool) -> event_pb2.Event:
    """One check's values, with their metadata (a tag's first value in a file) or without."""
    about = "about" if described else None
    values = [
        summaries.scalar("rms/conv1", 2.0, tags.describe("rms", "conv1") if described else None),
        summaries.scalar("new/conv1", 3.0, "New. Layer `conv1`." if described else None),
        summaries.scalar("epoch_loss", 0.5, about),
        summaries.image(tags.filters_tag("conv1", 1), PNG, width=1, height=1, description=about),
        summaries.image(tags.topk_tag("conv1"), PNG, width=1, height=1, description=about),
        summaries.histogram(tags.histogram_tag("conv1"), np.ones((4, 3)), about),
        summaries.text(tags.ALERTS, "- **dead**: `conv1`", about),
    ]
    return summaries.event(step, 0.0, values)


@pytest.mark.parametrize("described", [True, False])
def test_values_are_classified_with_or_without_their_metadata(described: bool) -> None:
    """With metadata, or without any (the record that held it was damaged): the same kinds
    and tags; an unknown metric is a layer's only when so described."""
    items = list(reader.Values().items(_event(3, described)))
    found = [(i.kind, i.tag, i.metric, i.layer, i.probe) for i in items]
    assert found == [
        (reader.SCALAR, "rms/conv1", "rms", "conv1", -1),
        (reader.SCALAR, "new/conv1", *(("new", "conv1") if described else ("", "")), -1),
        (reader.SCALAR, "epoch_loss", "", "", -1),
        (reader.IMAGE, "filters/conv1/probe_1", tags.FILTERS, "conv1", 1),
        (reader.IMAGE, "topk/conv1", tags.TOPK, "conv1", -1),
        (reader.HISTOGRAM, "histogram/conv1", tags.HISTOGRAM, "conv1", -1),
        (reader.TEXT, tags.ALERTS, "", "", -1),
    ]
    assert [i.value for i in items[:3]] == [2.0, 3.0, 0.5] and items[3].value == PNG
    assert items[5].value.shape == (4, 3) and items[6].value == "- **dead**: `conv1`"


def test_a_tags_metadata_is_remembered() -> None:
    """Writers put metadata on a tag's first value only: later values keep its kind."""
    values = reader.Values()
    list(values.items(_event(0, True)))
    later = list(values.items(_event(3, False)))
    assert [(i.metric, i.layer) for i in later[:2]] == [("rms", "conv1"), ("new", "conv1")]


def test_layer_order_puts_layers_named_after_a_check_last() -> None:
    order = reader.LayerOrder()
    for metric, layer in (("update_ratio", "conv2"), ("rms", "conv1"), ("rms", "pool1")):
        order.see(reader.Item(0, reader.SCALAR, f"{metric}/{layer}", 1.0, metric, layer))
    order.see(reader.Item(3, reader.SCALAR, "rms/conv2", 1.0, "rms", "conv2"))
    assert order.layers == ["conv1", "pool1", "conv2"]
