"""The dashboard's index of the runs under a log directory: small figures kept, images as places.

Runs, their events files, their records and what each value is come from
`actwatch.events.reader`, the one reader of runs (the report reads through it too). For each
run the index keeps what is small (every per-layer scalar, the alerts' texts, the layers in
network order) and, for every image tag and step, only where its PNG is: the file, the
record's offset and the PNG's place in the record's payload, found when the record is indexed.
An image is read on demand with `records.read_payload_part`: a few kB read, no event parsed
again, nothing cached. The places are kept in compact arrays: a 1 GB run's index is a few MB.

The index grows incrementally: each file's size and its `records.ReadState` (the offset after
its last whole record) are remembered, and a refresh reads only what was appended. A file cut
short (a run still being written, a killed run) is read up to its last whole record; the bytes
after it are counted (`RunIndex.tail_bytes`) and read once the record is whole. A damaged
record (its payload fails its CRC check) is skipped and the reading goes on after it; a damaged
length header ends the reading of that file until it grows (the next record cannot be found):
both are counted in `RunIndex.damaged_bytes`. A file that shrank, was replaced (another inode,
or other bytes before the place reading stopped at) or removed makes its run be read again
from the start. A file that cannot be read (its permissions, removed meanwhile) is tried again
at the next refresh. A log directory on object storage (`--logdir s3://...`, any fsspec URL)
is indexed from its local copy (`storage.mirror`), brought up to date at each refresh: an
object is downloaded again when its size or ETag changed (replacing the copy: a new inode),
so the rules above hold. No TensorFlow import.
"""

from __future__ import annotations

import bisect
import math
import os
import threading
import time
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tensorboard.compat.proto import event_pb2

from actwatch._logging import WarnOnce, logger
from actwatch.events import reader, tags
from actwatch.events.records import ReadState, Record, RecordError, read_payload_part

__all__ = ["LogdirIndex", "RunIndex", "Series"]

_HEADER_FOOTER = 16  # a record's framing around its payload
#: Bytes before the place reading stopped at, remembered to tell a file rewritten in place.
_MARK = 16
_PNG = b"\x89PNG\r\n\x1a\n"
_IMAGES = tags.PROBE_IMAGES  # filters, heatmaps, transformers' tokens and attention
_unreachable = WarnOnce("actwatch: the log directory could not be listed again")
_unreadable = WarnOnce("actwatch: an events file could not be read again (see the first warning)")


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
class _FileState(ReadState):
    inode: int = 0
    size: int = 0  # the file's size at the last reading
    mark: bytes = b""  # the _MARK bytes before `offset`, to tell a file rewritten in place


@dataclass
class RunIndex:
    """What one run's events files hold, images as places only.

    Attributes:
        name: the run's name (its directory relative to the log directory, `.` for itself).
        path: the run's directory.
        layers: every layer the logs name (per-layer scalars, grids and heatmaps) in network
            order (`reader.LayerOrder`).
        scalars: `{metric: {layer: Series}}` of every per-layer scalar metric.
        images: `{tag: Series}` of every `filters/...`, `heatmap/...`, `tokens/...` and
            `attention/...` tag (`tags.PROBE_IMAGES`), the values image numbers
            (`read_image` reads one).
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
    _values: reader.Values = field(default_factory=reader.Values, repr=False)
    _order: reader.LayerOrder = field(default_factory=reader.LayerOrder, repr=False)
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
        found = [parsed[2] for t in self.images if (parsed := tags.parse_image_tag(t))]
        return max(found) + 1 if found else 0

    @property
    def drawn(self) -> list[str]:
        """The layers that have a picture (filter grid, heatmap, token norms or attention), in
        network order."""
        layers = {parsed[1] for t in self.images if (parsed := tags.parse_image_tag(t))}
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

    def alert_list(self) -> list[tags.LoggedAlert]:
        """Every alert parsed from the alerts' texts (`tags.parse_alerts`), in step order."""
        return [a for step, text in self.alerts for a in tags.parse_alerts(step, text, self.layers)]

    # Reading ------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Read what was appended to the run's files since the last refresh."""
        stats: dict[Path, os.stat_result] = {}
        for file in reader.event_files(self.path):
            try:
                stats[file] = file.stat()
            except OSError:
                continue
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
        states = self._files.values()
        self.bytes_read = sum(s.offset - s.damaged for s in states)
        self.tail_bytes = sum(max(0, s.size - s.offset) for s in states if not s.dead)
        self.damaged_bytes = sum(
            s.damaged + (max(0, s.size - s.offset) if s.dead else 0) for s in states
        )
        self.layers[:] = self._order.layers
        self.alerts.sort(key=lambda item: item[0])

    def _read(self, file: Path, state: _FileState) -> None:
        """Index the records of `file` from `state.offset` on, past damaged ones."""
        for record, event in reader.events(file, state):
            self._take(file, record, event)
        with open(file, "rb") as handle:
            handle.seek(max(0, state.offset - _MARK))
            state.mark = handle.read(min(_MARK, state.offset))

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
        self._values = reader.Values()
        self._order.clear()
        self._steps.clear()
        self._metric_steps.clear()

    def _take(self, file: Path, record: Record, event: event_pb2.Event) -> None:
        searched = 0  # images are found in the payload in order
        for item in self._values.items(event):
            if item.kind == reader.SCALAR and item.layer:
                self._order.see(item)
                after = item.metric in tags.AFTER_CHECK_METRICS
                (self._metric_steps if after else self._steps).add(item.step)
                layers = self.scalars.setdefault(item.metric, {})
                if item.layer not in layers:
                    layers[item.layer] = Series("d")
                layers[item.layer].put(item.step, item.value)
            elif item.kind == reader.IMAGE and item.metric in _IMAGES:
                self._order.see(item)
                png, payload = item.value, record.payload
                # Values are laid out in order: this PNG is the next one after the last found,
                # so look for its first bytes (a PNG's signature and header) from there.
                start = payload.find(png[:16], searched)
                if start < 0 or not payload.startswith(png, start):
                    start = payload.find(png)
                    if start < 0:
                        continue
                searched = start + len(png)
                if item.tag not in self.images:
                    self.images[item.tag] = Series("q")
                number = self._image(file, record.offset, start, len(png))
                if self.images[item.tag].put(item.step, number):
                    self.version += 1
                self._steps.add(item.step)
            elif item.kind == reader.TEXT and item.tag == tags.ALERTS:
                self.alerts.append((item.step, item.value))

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
        return False  # reading it meets the same error and reports it


class LogdirIndex:
    """The runs under `logdir`, refreshed at most every `max_age` seconds; thread-safe.

    Hold `lock` while reading a `RunIndex` that `refresh` may change.
    """

    def __init__(self, logdir: str | os.PathLike[str], *, max_age: float = 2.0) -> None:
        self.logdir = os.fspath(logdir)  # a local folder, or a URL read from its local copy
        self.max_age = max_age
        self.lock = threading.RLock()
        self._runs: dict[str, RunIndex] = {}
        self._refreshed = -math.inf

    def refresh(self, *, force: bool = False) -> None:
        """Find new runs and read what was appended, unless done less than `max_age` ago."""
        with self.lock:
            if not force and time.monotonic() - self._refreshed < self.max_age:
                return
            try:
                root = reader.local_logdir(self.logdir)
            except Exception as exc:  # a store out of reach: the runs known stay, tried again
                _unreachable(
                    "actwatch: could not list %s (%s: %s)", self.logdir, type(exc).__name__, exc
                )
                return
            found = dict(reader.run_dirs(root)) if root.is_dir() else {}
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
