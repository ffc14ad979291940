"""The one reader of runs: finding them, their events files, their events, and what each value is.

The report (`actwatch.events.runs`), the dashboard's index (`actwatch.dashboard.events_index`)
and notebooks read runs through this module, so they agree on what a run holds:

- a log directory is a local path or an fsspec URL (`s3://...`): a URL is read from a local
  copy of its events files, brought up to date at each listing (`storage.mirror`: new
  objects, or sizes/ETags that changed, are downloaded);
- every directory under a log directory holding `events.out.tfevents.*` files is a run, named
  as TensorBoard names it (its path relative to the log directory, `.` for itself);
- a run's events files are read in write order (names start with the creation time), each
  with `records.scan_records`: whole, CRC-checked records, past damaged ones;
- each summary value is classified as a scalar, an image, a text or a histogram by its
  plugin's name, written with a tag's first value in each file only (so remembered by tag);
  when that metadata was lost with a damaged record, by the value's form;
- actwatch's tags are parsed by `tags` (layer, metric, probe); `LayerOrder` puts the layers
  in network order.

No TensorFlow and no Keras import: TensorBoard's protos and `data_compat` only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from tensorboard import data_compat
from tensorboard.compat.proto import event_pb2, summary_pb2, types_pb2
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.util import tensor_util

from actwatch.events import storage, tags
from actwatch.events.records import EVENT_FILE_PREFIX, ReadState, Record, scan_records

__all__ = [
    "HISTOGRAM",
    "IMAGE",
    "SCALAR",
    "TEXT",
    "Item",
    "LayerOrder",
    "Values",
    "event_files",
    "events",
    "find_runs",
    "local_logdir",
    "run_dirs",
]

#: The kinds of values a run holds (others, such as the custom-scalars layout, are passed over).
SCALAR, IMAGE, TEXT, HISTOGRAM = "scalar", "image", "text", "histogram"
_PLUGINS = {
    scalar_metadata.PLUGIN_NAME: SCALAR,
    image_metadata.PLUGIN_NAME: IMAGE,
    text_metadata.PLUGIN_NAME: TEXT,
    histogram_metadata.PLUGIN_NAME: HISTOGRAM,
}
_PNG = b"\x89PNG\r\n\x1a\n"


# Runs and their files -----------------------------------------------------------------------


def local_logdir(logdir: str | os.PathLike[str]) -> Path:
    """`logdir` as a local folder: a URL's local copy brought up to date (`storage.mirror`,
    with fsspec's configuration for credentials and endpoints), `file://` as its path."""
    text = os.fspath(logdir)
    if storage.is_url(text):
        return storage.mirror(text)
    return Path(storage.local_path(text))


def run_dirs(logdir: str | os.PathLike[str]) -> Iterator[tuple[str, Path]]:
    """`(name, directory)` of every directory under `logdir` (itself included) holding events
    files, in sorted order, without reading them. Links to directories are not followed."""
    root = local_logdir(logdir)
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        if any(f.startswith(EVENT_FILE_PREFIX) for f in files):
            yield Path(directory).relative_to(root).as_posix(), Path(directory)


def find_runs(logdir: str | os.PathLike[str]) -> list[Path]:
    """Every directory under `logdir` (itself included) that holds event files, sorted.

    Raises:
        FileNotFoundError: when `logdir` is not a directory, or holds no events file.
    """
    root = local_logdir(logdir)
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise FileNotFoundError(
            f"Invalid value for LOGDIR: {os.fspath(logdir)!r} {what}. Pass the `log_dir` given "
            "to ActivationMonitor (one run) or a folder above several runs (to compare them)."
        )
    runs = sorted(path for _, path in run_dirs(root))
    if not runs:
        raise FileNotFoundError(
            f"No TensorBoard event files (events.out.tfevents.*) under {os.fspath(logdir)!r}. "
            "Pass the `log_dir` given to ActivationMonitor, or a folder above several runs."
        )
    return runs


def event_files(run: str | os.PathLike[str]) -> list[Path]:
    """The events files of one run directory in write order (names start with the creation
    time): regular files only (a named pipe would block a reader); none when it is gone."""
    directory = Path(run)
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return [
        directory / name
        for name in sorted(names)
        if name.startswith(EVENT_FILE_PREFIX) and (directory / name).is_file()
    ]


def events(
    path: str | os.PathLike[str], state: ReadState | None = None
) -> Iterator[tuple[Record, event_pb2.Event]]:
    """Every event of the file at `path` with its record, from `state.offset` on (the start
    without `state`), past damaged records (`records.scan_records`) and whole records that
    hold no `Event`."""
    for record in scan_records(path, state if state is not None else ReadState()):
        try:
            event = event_pb2.Event.FromString(record.payload)
        except DecodeError:
            continue
        yield record, event


# Values -------------------------------------------------------------------------------------


class Item(NamedTuple):
    """One summary value of a run, classified, and parsed where actwatch wrote it.

    Attributes:
        step: the event's step.
        kind: `SCALAR`, `IMAGE`, `TEXT` or `HISTOGRAM`.
        tag: the value's tag.
        value: a float (scalar), the PNG bytes (image), the text, or the `[k, 3]` buckets
            (histogram).
        metric: for actwatch's per-layer values, the tag's first part: the scalar's metric,
            `tags.FILTERS`, `HEATMAP`, `TOPK`, `DISTRIBUTION` or `HISTOGRAM`; else "".
        layer: the layer those name; else "".
        probe: the probe of a filter grid or heatmap; else -1.
    """

    step: int
    kind: str
    tag: str
    value: Any
    metric: str = ""
    layer: str = ""
    probe: int = -1


class Values:
    """Turns a run's events into `Item`s, remembering what each tag is.

    Writers put a tag's metadata (plugin name, description) on its first value in each file
    only; a value without it takes its tag's earlier one, and when none was read (the record
    that held it was damaged), its kind is told by its form: one number a scalar, three
    strings ending in a PNG an image, one string a text, a `[k, 3]` float tensor a histogram.
    """

    def __init__(self) -> None:
        self._tags: dict[str, _Parsed] = {}

    def items(self, event: event_pb2.Event) -> Iterator[Item]:
        """The values of `event`'s summary, in order, each classified (others passed over)."""
        if not event.HasField("summary"):
            return
        step = int(event.step)
        for value in event.summary.value:
            if value.WhichOneof("value") != "tensor":
                value = data_compat.migrate_value(value)  # TF1-style values
            item = _item(step, value, self._parsed(value))
            if item is not None:
                yield item

    def _parsed(self, value: summary_pb2.Summary.Value) -> _Parsed:
        """What `value`'s tag is: from its metadata (remembered), else from its form."""
        plugin = value.metadata.plugin_data.plugin_name
        if plugin:
            kind = _PLUGINS.get(plugin, "")
            parsed = self._tags[value.tag] = _parse(
                value.tag, kind, value.metadata.summary_description
            )
            return parsed
        return self._tags.get(value.tag) or _parse(value.tag, _form(value.tensor), "")


#: `(kind, metric, layer, probe)` of a tag, as in `Item`.
_Parsed = tuple[str, str, str, int]


def _parse(tag: str, kind: str, description: str) -> _Parsed:
    """What a tag of `kind` is in actwatch's tag scheme (`tags`)."""
    if kind == IMAGE and (image := tags.parse_image_tag(tag)) is not None:
        return (kind, *image)
    parsed = tags.parse_layer_tag(tag)
    if parsed is not None:
        metric, layer = parsed
        if (
            (kind == SCALAR and tags.is_layer_metric(metric, layer, description))
            or (kind == IMAGE and metric in (tags.TOPK, tags.DISTRIBUTION))
            or (kind == HISTOGRAM and metric == tags.HISTOGRAM)
        ):
            return kind, metric, layer, -1
    return kind, "", "", -1


def _form(tensor: Any) -> str:
    """The kind of a value told by its tensor alone ("" when none fits)."""
    shape = [d.size for d in tensor.tensor_shape.dim]
    if tensor.dtype == types_pb2.DT_STRING:
        strings = tensor.string_val
        if len(strings) == 3 and strings[2].startswith(_PNG):
            return IMAGE
        return TEXT if len(strings) == 1 and len(shape) <= 1 else ""
    if len(shape) == 2 and shape[1] == 3 and tensor.dtype in _FLOATS:
        return HISTOGRAM
    return SCALAR if all(d == 1 for d in shape) else ""


_FLOATS = {types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val"}


def _item(step: int, value: summary_pb2.Summary.Value, parsed: _Parsed) -> Item | None:
    """`value` as an `Item`; None when it holds no value of its kind (an image without its
    PNG, a scalar that is not one number) or is of no kind read here."""
    kind, tensor = parsed[0], value.tensor
    data: Any
    if kind == SCALAR:
        data = _number(tensor)
    elif kind == IMAGE:
        data = tensor.string_val[2] if len(tensor.string_val) >= 3 else None
    elif kind == TEXT:
        text = tensor.string_val[0] if tensor.string_val else b""
        data = text.decode("utf-8", errors="replace")
    elif kind == HISTOGRAM:
        try:
            data = tensor_util.make_ndarray(tensor)
        except (TypeError, ValueError):
            data = None
    else:
        data = None
    return None if data is None else Item(step, kind, value.tag, data, *parsed[1:])


def _number(tensor: Any) -> float | None:
    """The one number a scalar's tensor holds; None when it holds another thing."""
    field = _FLOATS.get(tensor.dtype)
    if field is not None and not tensor.tensor_content and not tensor.tensor_shape.dim:
        numbers = getattr(tensor, field)  # how summaries.scalar writes: rank 0, one float
        if len(numbers) == 1:
            return float(numbers[0])
    try:
        array = tensor_util.make_ndarray(tensor)
    except (TypeError, ValueError):
        return None
    if array.size != 1 or array.dtype.kind not in "fiub":
        return None
    return float(array.reshape(-1)[0])


class LayerOrder:
    """The layers a run names, in network order: the order the logs first name them at a check
    (a check writes every watched layer's figures in network order). Layers first named by a
    figure written after a check (`tags.AFTER_CHECK_METRICS`: only layers with weights have
    one) come after those, so a damaged check record does not reorder the layers."""

    def __init__(self) -> None:
        self._at_checks: dict[str, None] = {}
        self._after: dict[str, None] = {}

    def see(self, item: Item) -> None:
        """Note the layer of `item` (a per-layer scalar, a filter grid or a heatmap)."""
        if item.metric in tags.AFTER_CHECK_METRICS:
            self._after.setdefault(item.layer)
        else:
            self._at_checks.setdefault(item.layer)

    @property
    def layers(self) -> list[str]:
        return [*self._at_checks, *(x for x in self._after if x not in self._at_checks)]

    def clear(self) -> None:
        self._at_checks.clear()
        self._after.clear()
