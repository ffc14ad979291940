"""TensorBoard event files, written off the training thread.

Events are written with the `tensorboard` package's protos and TFRecord framing, and a C
CRC32C (`google-crc32c`): no TensorFlow import on any backend, and no pure-Python CRC, which
costs hundreds of milliseconds per check of images. Images are rendered (by a callable the
caller gives), PNG-encoded and written on one background thread fed by a queue. Scalars and
text are never dropped; when images of earlier checks are still pending, a check's images
are skipped (and that is said once). Every check is flushed to the operating system when it
is written, so a killed process leaves every earlier check readable.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import os
import queue
import socket
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import google_crc32c
import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.custom_scalar import metadata as custom_scalar_metadata
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.util import tensor_util

from .png import PaletteImage, encode_png

__all__ = [
    "EventFileWriter",
    "PaletteImage",
    "Sink",
    "SinkStats",
    "check_log_dir",
    "encode_png",
    "masked_crc32c",
]

logger = logging.getLogger("actwatch")

#: Images as `{tag: (uint8 RGB array (H, W, 3), description)}`, produced on demand.


#: Images as `{tag: (image, description)}`, produced on demand; an image is a uint8 array
#: (H, W, 3) or (H, W), or a `PaletteImage`.
ImageRender = Callable[[], Mapping[str, tuple["np.ndarray | PaletteImage", str]]]

_counter = itertools.count()

#: CPU priority of the background thread on Linux: "idle" (SCHED_IDLE: it runs only when a
#: core would otherwise be idle, so it never slows training down; the default), "nice"
#: (niceness 10: a small share of a busy core) or "normal".
SINK_PRIORITY = "idle"


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C of `data`, with the C implementation (`google-crc32c`)."""
    crc = int(google_crc32c.value(data))
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def check_log_dir(log_dir: str | os.PathLike[str]) -> str:
    """Create `log_dir` if needed and prove it is writable; raise ValueError otherwise."""
    if not isinstance(log_dir, (str, os.PathLike)):
        raise TypeError(
            "Invalid value for argument `log_dir`: expected a path (str or os.PathLike). "
            f"Received: log_dir={log_dir!r} of type {type(log_dir).__name__}."
        )
    path = os.fspath(log_dir)
    if not path:
        raise ValueError(
            "Invalid value for argument `log_dir`: received an empty path. Pass a directory, "
            "for example log_dir='logs/run1'."
        )
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".actwatch-write-test-{os.getpid()}")
        with open(probe, "wb") as handle:
            handle.write(b"ok")
        os.remove(probe)
    except OSError as exc:
        raise ValueError(
            f"Invalid value for argument `log_dir`: {path!r} cannot be created or written "
            f"({exc.strerror or exc}). Pass a directory you can write to."
        ) from None
    return path


class EventFileWriter:
    """Append TensorBoard `Event` records to one new events file in `log_dir`."""

    def __init__(self, log_dir: str) -> None:
        name = (
            f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_counter)}.actwatch"
        )
        self.path = os.path.join(log_dir, name)
        # Unbuffered: every record goes to the operating system whole, as soon as it is written.
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open for the run
        self.bytes_written = 0
        try:
            self.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        except OSError:
            self._file.close()
            with contextlib.suppress(OSError):
                os.remove(self.path)  # an empty file is not an events file
            raise

    def write(self, event: event_pb2.Event) -> None:
        """Append one record; on a write error (full disk), cut off what of it was written."""
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        record = memoryview(
            header
            + struct.pack("<I", masked_crc32c(header))
            + data
            + struct.pack("<I", masked_crc32c(data))
        )
        try:
            done = 0
            while done < len(record):
                done += self._file.write(record[done:]) or 0
        except OSError:
            # A partial record would make every later record unreadable: keep whole ones only.
            with contextlib.suppress(OSError):
                os.ftruncate(self._file.fileno(), self.bytes_written)
            raise
        self.bytes_written += len(record)

    @property
    def removed(self) -> bool:
        """True when the file was deleted (with its directory, say) while open."""
        return os.fstat(self._file.fileno()).st_nlink == 0

    def flush(self) -> None:
        """Nothing to do: records are unbuffered. Kept for the writer interface."""

    def close(self) -> None:
        self._file.close()


@dataclass
class SinkStats:
    """Running figures about what the sink did (read them for benchmarks and tests)."""

    checks: int = 0
    bytes_written: int = 0
    images_written: int = 0
    images_skipped: int = 0
    render_seconds: float = 0.0
    encode_seconds: float = 0.0
    write_seconds: float = 0.0
    errors: int = 0
    last_check: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Job:
    step: int
    wall_time: float
    scalars: Mapping[str, tuple[float, str]]
    texts: Mapping[str, tuple[str, str]]
    render: ImageRender | None


_STOP = object()


class Sink:
    """Writes checks to an events file in `log_dir`, on a background thread.

    Args:
        log_dir: directory of the events file (created).
        max_pending_images: checks whose images may wait in the queue; further checks'
            images are skipped until the thread catches up.
        png_compress_level: zlib level of the PNG encoder (0-9).
        layout: optional custom-scalars layout, written once with the first check.
    """

    def __init__(
        self,
        log_dir: str,
        *,
        max_pending_images: int = 2,
        png_compress_level: int = 1,
        layout: layout_pb2.Layout | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.max_pending_images = max_pending_images
        self.png_compress_level = png_compress_level
        self.stats = SinkStats()
        self._layout = layout
        self._queue: queue.Queue[Any] = queue.Queue()
        self._pending_images = 0
        self._lock = threading.Lock()
        self._described: set[str] = set()
        self._writer: EventFileWriter | None = None
        self._warned_skip = False
        self._warned_error = False
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="actwatch-sink", daemon=True)
        self._thread.start()
        atexit.register(_close_at_exit, weakref.ref(self))

    def submit(
        self,
        step: int,
        *,
        scalars: Mapping[str, tuple[float, str]],
        texts: Mapping[str, tuple[str, str]] | None = None,
        render: ImageRender | None = None,
        keep_images: bool = False,
    ) -> bool:
        """Queue one check. Returns False when its images were skipped (backlog).

        `keep_images=True` queues the images whatever the backlog (for the last check of a
        run, when nothing waits on the training thread any more).
        """
        if self._closed:
            raise RuntimeError("this Sink is closed")
        kept = True
        if render is not None:
            with self._lock:
                if self._pending_images >= self.max_pending_images and not keep_images:
                    render, kept = None, False
                    self.stats.images_skipped += 1
                else:
                    self._pending_images += 1
            if not kept and not self._warned_skip:
                self._warned_skip = True
                logger.warning(
                    "actwatch: images of the check at step %d were skipped because the images "
                    "of %d earlier checks are still being written. Scalars are kept. Check "
                    "less often, watch fewer layers or lower max_filters to avoid this.",
                    step,
                    self.max_pending_images,
                )
        job = _Job(step, time.time(), dict(scalars), dict(texts or {}), render)
        self._queue.put(job)
        return kept

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued check is written; False if `timeout` ran out first."""
        if not self._thread.is_alive():
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float | None = 60.0) -> None:
        """Write what is queued, then close the file and stop the thread."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._writer is not None:
            try:
                self._writer.close()
            except OSError as exc:
                self._report(exc)

    # Background thread -------------------------------------------------------------------

    def _loop(self) -> None:
        _lower_thread_priority()
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            try:
                self._write_job(item)
            except Exception as exc:  # never let the thread die: training must go on
                self._report(exc)
            finally:
                if item.render is not None:
                    with self._lock:
                        self._pending_images -= 1

    def _report(self, exc: BaseException) -> None:
        self.stats.errors += 1
        if not self._warned_error:
            self._warned_error = True
            logger.warning(
                "actwatch: could not write to %r (%s: %s). Training goes on; statistics "
                "still reach the logs dict. Later write errors are counted, not repeated.",
                self.log_dir,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
        else:
            logger.debug("actwatch: write error %s", exc)

    def _metadata(
        self, tag: str, description: str, create: Callable[..., summary_pb2.SummaryMetadata]
    ) -> summary_pb2.SummaryMetadata | None:
        if tag in self._described:
            return None
        self._described.add(tag)
        return create(display_name=tag, description=description)

    def _open_writer(self, wall_time: float) -> EventFileWriter:
        """The current events file; a new one when there is none or it was deleted."""
        if self._writer is not None and self._writer.removed:
            self._writer.close()
            self._writer = None
            self._report(FileNotFoundError(f"the events file in {self.log_dir!r} was deleted"))
        if self._writer is None:
            os.makedirs(self.log_dir, exist_ok=True)
            self._writer = EventFileWriter(self.log_dir)
            self._described.clear()  # a new file needs every tag's metadata again
            if self._layout is not None:
                self._writer.write(_layout_event(self._layout, wall_time))
        return self._writer

    def _write_job(self, job: _Job) -> None:
        writer = self._open_writer(job.wall_time)
        described = set(self._described)
        timings = {"render": 0.0, "encode": 0.0, "write": 0.0}
        values: list[summary_pb2.Summary.Value] = []
        for tag, (number, description) in job.scalars.items():
            values.append(
                summary_pb2.Summary.Value(
                    tag=tag,
                    tensor=tensor_util.make_tensor_proto(np.float32(number)),
                    metadata=self._metadata(
                        tag, description, scalar_metadata.create_summary_metadata
                    ),
                )
            )
        for tag, (text, description) in job.texts.items():
            values.append(
                summary_pb2.Summary.Value(
                    tag=tag,
                    tensor=tensor_util.make_tensor_proto(text.encode("utf-8")),
                    metadata=self._metadata(
                        tag, description, text_metadata.create_summary_metadata
                    ),
                )
            )
        if job.render is not None:
            start = time.perf_counter()
            images = job.render()
            timings["render"] = time.perf_counter() - start
            start = time.perf_counter()
            for tag, (image, description) in images.items():
                png = encode_png(image, self.png_compress_level)
                pixels = image.indices if isinstance(image, PaletteImage) else image
                height, width = pixels.shape[:2]
                values.append(
                    summary_pb2.Summary.Value(
                        tag=tag,
                        tensor=tensor_util.make_tensor_proto(
                            [str(width).encode(), str(height).encode(), png]
                        ),
                        metadata=self._metadata(
                            tag, description, image_metadata.create_summary_metadata
                        ),
                    )
                )
                self.stats.images_written += 1
            timings["encode"] = time.perf_counter() - start
        start = time.perf_counter()
        before = writer.bytes_written
        try:
            writer.write(
                event_pb2.Event(
                    wall_time=job.wall_time,
                    step=job.step,
                    summary=summary_pb2.Summary(value=values),
                )
            )
        except OSError:
            self._described = described  # their metadata did not land: send it again
            raise
        timings["write"] = time.perf_counter() - start
        self.stats.checks += 1
        self.stats.bytes_written += writer.bytes_written - before
        self.stats.render_seconds += timings["render"]
        self.stats.encode_seconds += timings["encode"]
        self.stats.write_seconds += timings["write"]
        self.stats.last_check = {**timings, "bytes": float(writer.bytes_written - before)}


def _lower_thread_priority() -> None:
    """Lower the calling thread's CPU priority as `SINK_PRIORITY` says (Linux only).

    Training threads of a CPU run keep every core busy and wait for their slowest shard: even
    a niced thread that takes a core for a few milliseconds stalls them. With SCHED_IDLE the
    writer gets a core only when nothing else wants it (between steps, while data loads),
    which is all a few images per epoch need. Elsewhere, or where the call is refused, the
    thread keeps the normal priority.
    """
    if not sys.platform.startswith("linux") or SINK_PRIORITY == "normal":
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError, AttributeError):
        if SINK_PRIORITY == "idle":
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.setpriority(os.PRIO_PROCESS, tid, 10)


def _layout_event(layout: layout_pb2.Layout, wall_time: float) -> event_pb2.Event:
    value = summary_pb2.Summary.Value(
        tag=custom_scalar_metadata.CONFIG_SUMMARY_TAG,
        tensor=tensor_util.make_tensor_proto(layout.SerializeToString()),
        metadata=custom_scalar_metadata.create_summary_metadata(),
    )
    return event_pb2.Event(wall_time=wall_time, step=0, summary=summary_pb2.Summary(value=[value]))


def _close_at_exit(ref: weakref.ReferenceType[Sink]) -> None:
    sink = ref()
    if sink is not None:
        sink.close(timeout=10.0)
