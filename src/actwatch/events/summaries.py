"""One function per kind of summary actwatch writes, each building TensorBoard's storage format.

Each returns a `Summary.Value` in the form TensorBoard's own `summary_v2` functions write, so
every TensorBoard plugin and `EventAccumulator` read them. `description` (Markdown) goes into
the value's `SummaryMetadata`, with the plugin name; pass it with a tag's first value in a
file only, and None afterwards: TensorBoard keeps the metadata of a tag's first value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as custom_scalar_metadata
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.util import tensor_util

__all__ = ["custom_scalars", "event", "histogram", "image", "scalar", "text"]


def _metadata(plugin: Any, tag: str, description: str | None) -> summary_pb2.SummaryMetadata | None:
    """`plugin`'s metadata for `tag` with `description`; None when `description` is None."""
    if description is None:
        return None
    return plugin.create_summary_metadata(display_name=tag, description=description)


def scalar(tag: str, value: float, description: str | None = None) -> summary_pb2.Summary.Value:
    """A scalar: a rank-0 float32 tensor, plugin `scalars`. A value beyond float32's range
    (a squared signal of huge activations, say) is written as +-inf."""
    with np.errstate(over="ignore"):
        number = np.float32(value)
    return summary_pb2.Summary.Value(
        tag=tag,
        tensor=tensor_util.make_tensor_proto(number),
        metadata=_metadata(scalar_metadata, tag, description),
    )


def text(tag: str, value: str, description: str | None = None) -> summary_pb2.Summary.Value:
    """A text: a rank-0 string tensor holding `value` as UTF-8 (Markdown), plugin `text`."""
    return summary_pb2.Summary.Value(
        tag=tag,
        tensor=tensor_util.make_tensor_proto(value.encode("utf-8")),
        metadata=_metadata(text_metadata, tag, description),
    )


def image(
    tag: str, png: bytes, *, width: int, height: int, description: str | None = None
) -> summary_pb2.Summary.Value:
    """An image: a rank-1 string tensor `[width, height, PNG bytes]`, the sizes as decimal
    ASCII, plugin `images` (one image per value: TensorBoard's `max_outputs` of 1)."""
    tensor = tensor_util.make_tensor_proto([str(width).encode(), str(height).encode(), png])
    return summary_pb2.Summary.Value(
        tag=tag, tensor=tensor, metadata=_metadata(image_metadata, tag, description)
    )


def histogram(
    tag: str, buckets: np.ndarray, description: str | None = None
) -> summary_pb2.Summary.Value:
    """A histogram: a float64 tensor of shape `[k, 3]`, each row (left edge, right edge,
    count), plugin `histograms`, as TensorBoard's `histogram` summary_v2 writes it (its
    Histograms and Distributions tabs read it)."""
    array = np.asarray(buckets, dtype=np.float64).reshape(-1, 3)
    return summary_pb2.Summary.Value(
        tag=tag,
        tensor=tensor_util.make_tensor_proto(array, dtype=np.float64),
        metadata=_metadata(histogram_metadata, tag, description),
    )


def custom_scalars(layout: layout_pb2.Layout) -> summary_pb2.Summary.Value:
    """The custom-scalars dashboard's layout: the serialized `Layout` proto as a rank-0 string
    tensor under TensorBoard's own tag `custom_scalars__config__`, plugin `custom_scalars`.
    Written once per file, at step 0."""
    return summary_pb2.Summary.Value(
        tag=custom_scalar_metadata.CONFIG_SUMMARY_TAG,
        tensor=tensor_util.make_tensor_proto(layout.SerializeToString()),
        metadata=custom_scalar_metadata.create_summary_metadata(),
    )


def event(step: int, wall_time: float, values: list[summary_pb2.Summary.Value]) -> event_pb2.Event:
    """An `Event` at `step` holding `values` as one `Summary`."""
    return event_pb2.Event(
        wall_time=wall_time, step=step, summary=summary_pb2.Summary(value=values)
    )
