"""An index of actwatch's events files under a log directory, for the dashboard.

Every directory under the log directory holding `events.out.tfevents.*` files is a run, named
as TensorBoard names it (its path relative to the log directory, `.` for the log directory
itself). For each run the index keeps what is small (every per-layer scalar, the alerts'
texts, the layers in network order) and, for every image tag and step, only where its PNG is:
the file, the record's offset and the PNG's place in the record's payload, found when the
record is indexed. An image is read on demand with `records.read_payload_part` (the records
module is the one reader of events files, for the report too): a few kB read, no event parsed
again, nothing cached. The places are kept in compact arrays: a 1 GB run's index is a few MB.

The index grows incrementally: each file's size and the offset after its last whole record are
remembered, and a refresh reads only what was appended. A file cut short (a run still being
written, a killed run) is read up to its last whole record; the bytes after it are counted
(`RunIndex.tail_bytes`) and read once the record is whole. A damaged record (its payload fails
its CRC check) is skipped and the reading goes on after it; a damaged length header ends the
reading of that file (the next record cannot be found): both are counted in
`RunIndex.damaged_bytes`. A file that shrank, was replaced (another inode, or other bytes
before the place reading stopped at) or removed makes its run be read again from the start.
Only regular files are read (a named pipe would block), and a file that cannot be read (its
permissions, removed meanwhile) is tried again at the next refresh. No TensorFlow import.
"""

from __future__ import annotations

import bisect
import math
import os
import re
import stat as stat_module
import struct
import threading
import time
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from tensorboard import data_compat
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.util import tensor_util

from actwatch._logging import WarnOnce, logger
from actwatch.events import tags
from actwatch.events.records import (
    EVENT_FILE_PREFIX,
    RecordError,
    masked_crc32c,
    read_payload_part,
    read_record_at,
    read_records,
)

__all__ = ["Alert", "LogdirIndex", "RunIndex", "Series", "parse_alerts"]

_HEADER, _HEADER_FOOTER = 12, 16  # a record's length header; its framing around the payload
#: Bytes before the place reading stopped at, remembered to tell a file rewritten in place.
_MARK = 16
_PNG = b"\x89PNG\r\n\x1a\n"
_IMAGE_TAG = re.compile(r"^(?P<kind>filters|heatmap)/(?P<layer>.+)/probe_(?P<probe>\d+)$")
_ALERT_ITEM = re.compile(r"^- \*\*(?P<kind>[^*\n]+)\*\*: (?P<message>.*)$", re.DOTALL)
#: Per-layer scalar kinds of a tag, decided when the tag is first seen.
_LAYER_SCALAR, _IMAGE, _ALERTS, _OTHER = "layer_scalar", "image", "alerts", "other"
#: Per-layer metrics written at the step after a check, not at a check (tags.LEARNING_METRICS):
#: their steps are not checks of the slider.
_AFTER_CHECK = frozenset({"update_ratio"})
_unreadable = WarnOnce("actwatch: an events file could not be read again (see the first warning)")


@dataclass(frozen=True)
class Alert:
    """One alert as the dashboard lists it: the check's step, the layer, the kind, the text."""

    step: int
    layer: str
    kind: str
    message: str


def parse_alerts(step: int, text: str, layers: list[str]) -> list[Alert]:
    """The alerts of one check's `alerts` text (see `tags.alert_texts`).

    Each alert is one Markdown item `- **{kind}**: {message}`, items apart by a blank line, the
    layer quoted in backticks in the message. The layer is the longest known layer quoted so;
    the message is given back in its plain form (the layer in single quotes, as logged).
    """
    out = []
    for item in text.split("\n\n"):
        match = _ALERT_ITEM.match(item.strip())
        if match is None:
            if item.strip():
                out.append(Alert(step, "", "", item.strip()))
            continue
        message = match.group("message")
        quoted = [layer for layer in layers if f"`{layer}`" in message]
        if quoted:
            layer = max(quoted, key=len)
        else:
            first = re.search(r"`([^`]+)`", message)
            layer = first.group(1) if first else ""
        if layer:
            message = message.replace(f"`{layer}`", f"'{layer}'")
        out.append(Alert(step, layer, match.group("kind"), message))
    return out


class Series:
    """Values by step, as two compact arrays sorted by step (8 bytes a step and a value, not a
    dict's hundred): a long run's index stays a few MB. A later value of a step replaces it."""

    __slots__ = ("steps", "values")

    def __init__(self, typecode: str) -> None:
        self.steps = array("q")
        self.values: array[Any] = array(typecode)

    def put(self, step: int, value: float) -> bool:
        """Set the value at `step`; True when it replaced one."""
        if not self.steps or step > self.steps[-1]:
            self.steps.append(step)
            self.values.append(value)
            return False
        i = bisect.bisect_left(self.steps, step)
        if i < len(self.steps) and self.steps[i] == step:
            self.values[i] = value
            return True
        self.steps.insert(i, step)
        self.values.insert(i, value)
        return False

    def get(self, step: int) -> float | None:
        i = bisect.bisect_left(self.steps, step)
        if i < len(self.steps) and self.steps[i] == step:
            return float(self.values[i])
        return None

    def __len__(self) -> int:
        return len(self.steps)


@dataclass
class _FileState:
    inode: int
    size: int = 0  # the file's size at the last reading
    offset: int = 0  # where the next record starts: everything before it was read
    mark: bytes = b""  # the _MARK bytes before `offset`, to tell a file rewritten in place
    damaged: int = 0  # bytes of damaged records skipped
    dead: bool = False  # a damaged length header at `offset`: tried again when the file grows


@dataclass
class RunIndex:
    """What one run's events files hold, images as places only.

    Attributes:
        name: the run's name (its directory relative to the log directory, `.` for itself).
        path: the run's directory.
        layers: every layer the logs name (per-layer scalars, then images), in the order the
            logs first name them: network order.
        scalars: `{metric: {layer: Series}}` of every per-layer scalar metric.
        images: `{tag: Series}` of every `filters/...` and `heatmap/...` tag, the values
            image numbers (`read_image` reads one).
        alerts: `(step, Markdown text)` of every check that raised alerts, in step order.
        bytes_read: bytes of whole records indexed so far.
        tail_bytes: bytes after the last whole record of each file: a record being written
            (or cut short by a kill), read once it is whole.
        damaged_bytes: bytes of damaged records (a failed CRC check) skipped, and after a
            damaged length header, the rest of its file: what the index lost.
        version: changes when an image already served may have changed (the run read again,
            or a step's image written again, by a run restarted in the same directory): the
            page puts it in image URLs, which browsers keep an hour.
    """

    name: str
    path: Path
    layers: list[str] = field(default_factory=list)
    scalars: dict[str, dict[str, Series]] = field(default_factory=dict)
    images: dict[str, Series] = field(default_factory=dict)
    alerts: list[tuple[int, str]] = field(default_factory=list)
    bytes_read: int = 0
    tail_bytes: int = 0
    damaged_bytes: int = 0
    version: int = 0
    _files: dict[Path, _FileState] = field(default_factory=dict, repr=False)
    _paths: list[Path] = field(default_factory=list, repr=False)
    # Per image number: its file (an index into _paths), record offset, place in the payload.
    _image_file: array[int] = field(default_factory=lambda: array("l"), repr=False)
    _image_record: array[int] = field(default_factory=lambda: array("q"), repr=False)
    _image_start: array[int] = field(default_factory=lambda: array("q"), repr=False)
    _image_length: array[int] = field(default_factory=lambda: array("q"), repr=False)
    _kinds: dict[str, str] = field(default_factory=dict, repr=False)
    _seen: set[str] = field(default_factory=set, repr=False)
    _steps: set[int] = field(default_factory=set, repr=False)
    _metric_steps: set[int] = field(default_factory=set, repr=False)

    # What the API serves ----------------------------------------------------------------

    @property
    def has_data(self) -> bool:
        """True when the run holds actwatch data (a per-layer scalar or a grid)."""
        return bool(self.layers)

    @property
    def steps(self) -> list[int]:
        """Every step with an image or a per-layer scalar written at a check, sorted: every
        check. (`update_ratio`, written at the step after a check, adds no step; a run with
        nothing else has its steps.)"""
        return sorted(self._steps or self._metric_steps)

    @property
    def metrics(self) -> list[str]:
        """Every per-layer scalar metric found, sorted."""
        return sorted(self.scalars)

    @property
    def probes(self) -> int:
        """How many probes have images (1 + the highest probe index of an image tag)."""
        found = [int(m.group("probe")) for t in self.images if (m := _IMAGE_TAG.match(t))]
        return max(found) + 1 if found else 0

    @property
    def drawn(self) -> list[str]:
        """The layers that have a filter grid, in network order."""
        layers = {m.group("layer") for t in self.images if (m := _IMAGE_TAG.match(t))}
        return [layer for layer in self.layers if layer in layers]

    def series(self, metric: str) -> dict[str, Series]:
        return self.scalars.get(metric, {})

    def read_image(self, tag: str, step: int) -> bytes | None:
        """The PNG of image `tag` at `step`; None when there is none, or the file no longer
        holds it (replaced since it was indexed: the next refresh reads it again)."""
        series = self.images.get(tag)
        number = series.get(step) if series is not None else None
        if number is None:
            return None
        i = int(number)
        try:
            png = read_payload_part(
                self._paths[self._image_file[i]],
                self._image_record[i],
                self._image_start[i],
                self._image_length[i],
            )
        except (OSError, RecordError):
            return None
        return png if png.startswith(_PNG) else None

    def alert_list(self) -> list[Alert]:
        out: list[Alert] = []
        for step, text in self.alerts:
            out.extend(parse_alerts(step, text, self.layers))
        return out

    # Reading ------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Read what was appended to the run's files since the last refresh."""
        stats: dict[Path, os.stat_result] = {}
        for file in _event_files(self.path):
            try:
                found = file.stat()
            except OSError:
                continue
            if stat_module.S_ISREG(found.st_mode):  # not a named pipe: opening it would block
                stats[file] = found
        if any(
            file not in stats or _replaced(file, stats[file], state)
            for file, state in self._files.items()
        ):
            self._clear()  # a file shrank, was replaced or removed: read the run again
        for file, found in stats.items():
            state = self._files.get(file)
            if state is None:
                state = self._files[file] = _FileState(inode=found.st_ino)
            if found.st_size != state.size:
                try:
                    self._read(file, state)
                except OSError as exc:  # unreadable, or removed meanwhile: tried again later
                    _unreadable(
                        "actwatch: could not read %s (%s); the dashboard tries again at its "
                        "next refresh; later failures are logged at DEBUG.",
                        file,
                        exc,
                    )
                    continue
                state.size = found.st_size
        self.tail_bytes = sum(max(0, s.size - s.offset) for s in self._files.values() if not s.dead)
        self.damaged_bytes = sum(
            s.damaged + (max(0, s.size - s.offset) if s.dead else 0) for s in self._files.values()
        )
        self.alerts.sort(key=lambda item: item[0])

    def _read(self, file: Path, state: _FileState) -> None:
        """Index the records of `file` from `state.offset` on: every whole one, past damaged
        ones."""
        state.dead = False
        while True:
            for record in read_records(file, state.offset):
                self._take(file, record.offset, record.payload)
                state.offset = record.offset + len(record.payload) + _HEADER_FOOTER
                self.bytes_read += len(record.payload) + _HEADER_FOOTER
            # read_records stopped: at the end, at a record cut short, or at a damaged one
            # (logged there).
            with open(file, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                handle.seek(max(0, state.offset - _MARK))
                state.mark = handle.read(min(_MARK, state.offset))
                header = handle.read(_HEADER)
            if len(header) < _HEADER:
                return  # the end, or a header being written
            if struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
                state.dead = True  # no way to find the next record (tried again if it grows)
                return
            end = state.offset + _HEADER_FOOTER + struct.unpack("<Q", header[:8])[0]
            if end >= size:
                # Cut short (being written), or damaged and last: wait for what follows.
                return
            try:  # whole now: written since read_records stopped, or damaged?
                read_record_at(file, state.offset)
            except RecordError:
                state.damaged += end - state.offset  # its payload failed its CRC check
                state.offset = end

    def _clear(self) -> None:
        self.version += 1
        self.layers.clear()
        self.scalars.clear()
        self.images.clear()
        self.alerts.clear()
        self.bytes_read = self.tail_bytes = self.damaged_bytes = 0
        self._files.clear()
        self._paths.clear()
        for column in (self._image_file, self._image_record, self._image_start):
            del column[:]
        del self._image_length[:]
        self._kinds.clear()
        self._seen.clear()
        self._steps.clear()
        self._metric_steps.clear()

    def _see(self, layer: str) -> None:
        if layer not in self._seen:
            self._seen.add(layer)
            self.layers.append(layer)

    def _take(self, file: Path, offset: int, payload: bytes) -> None:
        try:
            event = event_pb2.Event.FromString(payload)
        except DecodeError:  # a whole record that holds no Event: nothing for the dashboard
            return
        if not event.HasField("summary"):
            return
        step = int(event.step)
        searched = 0  # images are found in the payload in order
        for value in event.summary.value:
            if value.WhichOneof("value") != "tensor":
                value = data_compat.migrate_value(value)  # TF1-style values
            kind = self._kinds.get(value.tag)
            if kind is None:
                kind = self._kinds[value.tag] = _kind(value)
            if kind == _LAYER_SCALAR:
                number = _scalar(value)
                if number is None:
                    continue
                metric, _, layer = value.tag.partition("/")
                self._see(layer)
                (self._metric_steps if metric in _AFTER_CHECK else self._steps).add(step)
                layers = self.scalars.setdefault(metric, {})
                if layer not in layers:
                    layers[layer] = Series("d")
                layers[layer].put(step, number)
            elif kind == _IMAGE:
                if len(value.tensor.string_val) < 3:
                    continue
                match = _IMAGE_TAG.match(value.tag)
                if match:
                    self._see(match.group("layer"))
                png = value.tensor.string_val[2]
                # Values are laid out in order: this PNG is the next one after the last found,
                # so look for its first bytes (a PNG's signature and header) from there.
                start = payload.find(png[:16], searched)
                if start < 0 or not payload.startswith(png, start):
                    start = payload.find(png)
                    if start < 0:
                        continue
                searched = start + len(png)
                if value.tag not in self.images:
                    self.images[value.tag] = Series("q")
                if self.images[value.tag].put(step, self._image(file, offset, start, len(png))):
                    self.version += 1
                self._steps.add(step)
            elif kind == _ALERTS:
                text = value.tensor.string_val[0] if value.tensor.string_val else b""
                self.alerts.append((step, text.decode("utf-8", errors="replace")))

    def _image(self, file: Path, offset: int, start: int, length: int) -> int:
        """A new image number for the PNG at `start` of the payload of the record at
        `offset` of `file`."""
        if not self._paths or self._paths[-1] != file:
            self._paths.append(file)  # files are read one after the other
        self._image_file.append(len(self._paths) - 1)
        self._image_record.append(offset)
        self._image_start.append(start)
        self._image_length.append(length)
        return len(self._image_length) - 1


def _kind(value: summary_pb2.Summary.Value) -> str:
    """What a tag is to the dashboard, from its first value (its metadata, else its form)."""
    tag = value.tag
    plugin = value.metadata.plugin_data.plugin_name
    if tag == tags.ALERTS and plugin in ("", text_metadata.PLUGIN_NAME):
        return _ALERTS
    if _IMAGE_TAG.match(tag) and plugin in ("", image_metadata.PLUGIN_NAME):
        return _IMAGE
    metric, _, layer = tag.partition("/")
    if not layer or metric == tags.NETWORK or plugin not in ("", scalar_metadata.PLUGIN_NAME):
        return _OTHER
    description = value.metadata.summary_description
    # actwatch describes every per-layer scalar as "... Layer `{layer}`." (tags.scalar_values);
    # a metric of its own is one of tags.METRICS or so described.
    if metric in tags.METRICS or description.endswith(f"Layer `{layer}`."):
        return _LAYER_SCALAR
    return _OTHER


def _replaced(file: Path, found: os.stat_result, state: _FileState) -> bool:
    """True when `file` is no longer what was read of it: another inode, shorter, or other
    bytes just before the place reading stopped at (rewritten in place, `cp` over it)."""
    if found.st_ino != state.inode or found.st_size < state.size:
        return True
    if found.st_size == state.size or not state.mark:
        return False
    try:
        with open(file, "rb") as handle:
            handle.seek(state.offset - len(state.mark))
            return handle.read(len(state.mark)) != state.mark
    except OSError:
        return False  # read_records meets the same error and reports it


def _scalar(value: summary_pb2.Summary.Value) -> float | None:
    try:
        array = tensor_util.make_ndarray(value.tensor)
    except (TypeError, ValueError):
        return None
    if array.size != 1 or array.dtype.kind not in "fiub":
        return None
    return float(array.reshape(-1)[0])


def _event_files(run: Path) -> list[Path]:
    """The run's events files in write order (names start with the creation time)."""
    try:
        names = os.listdir(run)
    except OSError:
        return []
    return sorted(run / n for n in names if n.startswith(EVENT_FILE_PREFIX))


class LogdirIndex:
    """The runs under `logdir`, refreshed at most every `max_age` seconds; thread-safe.

    Hold `lock` while reading a `RunIndex` that `refresh` may change.
    """

    def __init__(self, logdir: str | os.PathLike[str], *, max_age: float = 2.0) -> None:
        self.logdir = Path(logdir)
        self.max_age = max_age
        self.lock = threading.RLock()
        self._runs: dict[str, RunIndex] = {}
        self._refreshed = -math.inf

    def run_dirs(self) -> Iterator[tuple[str, Path]]:
        """`(name, directory)` of every directory holding events files, without reading them."""
        for directory, subdirs, files in os.walk(self.logdir):
            subdirs.sort()
            if any(f.startswith(EVENT_FILE_PREFIX) for f in files):
                name = Path(directory).relative_to(self.logdir).as_posix()
                yield name, Path(directory)

    def refresh(self, *, force: bool = False) -> None:
        """Find new runs and read what was appended, unless done less than `max_age` ago."""
        with self.lock:
            if not force and time.monotonic() - self._refreshed < self.max_age:
                return
            found = dict(self.run_dirs()) if self.logdir.is_dir() else {}
            for name in list(self._runs):
                if name not in found:
                    del self._runs[name]
            for name, path in found.items():
                run = self._runs.get(name)
                if run is None:
                    run = self._runs[name] = RunIndex(name=name, path=path)
                try:
                    run.refresh()
                except Exception:  # one run's failure must not hide the others
                    logger.exception("actwatch: indexing the run %r failed", name)
            self._refreshed = time.monotonic()

    def runs(self) -> dict[str, RunIndex]:
        """The runs with actwatch data, by name (sorted). Hold `lock` while using them."""
        with self.lock:
            return {n: r for n, r in sorted(self._runs.items()) if r.has_data}

    def run(self, name: str) -> RunIndex | None:
        """The run named `name` when it has actwatch data; only names found under the log
        directory are known, so no name leads outside it."""
        with self.lock:
            run = self._runs.get(name)
            return run if run is not None and run.has_data else None
