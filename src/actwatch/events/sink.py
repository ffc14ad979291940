"""The background writer: checks queued by the training thread, written by one thread.

The training thread hands each check over with `Sink.submit` and goes on; one background
thread renders the check's images (with a callable the caller gives), PNG-encodes them and
writes the check as one event (`summaries` builds the values, `records` frames and writes
them, unbuffered: a killed process leaves every earlier check readable). No TensorFlow import
on any backend. A `log_dir` on object storage (an fsspec URL) is written to a local spool
and uploaded as new objects by `storage.Uploader`'s own thread.

Scalars and texts are never dropped. Images wait in memory until the thread gets to them;
when the images of the checks already waiting would pass `max_pending_bytes`, a check's
images are skipped, said once at WARNING, counted in the scalar `network/images_skipped`
and in one line when the sink closes. The first check's images and the last check's images
(the last submitted before `close`) are never skipped: a skipped check's render is held
aside, and when no check came after it, its images are written at `close`.
"""

from __future__ import annotations

import atexit
import os
import queue
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tensorboard.plugins.custom_scalar import layout_pb2

from actwatch._logging import WarnOnce, logger
from actwatch.events import summaries, tags
from actwatch.events.log_dir import release_claim
from actwatch.events.priority import PRIORITIES, set_thread_priority
from actwatch.events.records import EventFileWriter
from actwatch.events.sink_stats import SinkStats
from actwatch.events.storage import DEFAULT_UPLOAD_INTERVAL, Uploader, is_url
from actwatch.render.png import PaletteImage, encode_png

__all__ = [
    "DEFAULT_MAX_PENDING_BYTES",
    "PRIORITIES",
    "ImageRender",
    "PaletteImage",
    "Sink",
    "SinkStats",
]

#: Images as `{tag: (image, description)}`, produced on demand; an image is a uint8 array
#: (H, W, 3) or (H, W), or a `PaletteImage`.
ImageRender = Callable[[], Mapping[str, tuple["np.ndarray | PaletteImage", str]]]

#: How many bytes of images may wait to be written before a check's images are skipped.
DEFAULT_MAX_PENDING_BYTES = 64 * 2**20
#: What a waiting check is assumed to hold until the first check's images were rendered.
_FIRST_GUESS_BYTES = 4 * 2**20
IMAGES_SKIPPED_DESCRIPTION = (
    "Checks of this `fit()` before this one whose images were skipped because the background "
    "writer lagged behind training (their scalars were written). 0 when every image was kept."
)


@dataclass(frozen=True)
class _Job:
    step: int
    wall_time: float
    scalars: Mapping[str, tuple[float, str]]
    texts: Mapping[str, tuple[str, str]]
    render: ImageRender | None
    histograms: Mapping[str, tuple[np.ndarray, str]] = field(default_factory=dict)


_STOP = object()


class Sink:
    """Writes checks to an events file in `log_dir`, on a background thread.

    Args:
        log_dir: directory of the events file (created), or an fsspec URL: the file is then
            written to a local spool and uploaded every `upload_interval` seconds (default
            30) as new objects (`storage.Uploader`), with `storage_options` for fsspec.
        max_pending_bytes: bytes of images that may wait to be written; a check whose images
            would pass it has them skipped (but for the first and the last check). A waiting
            check counts as the pixel bytes of the last check rendered (4 MiB until one
            was). Defaults to 64 MiB.
        png_compress_level: zlib level of the PNG encoder (0-9). Defaults to 1.
        layout: optional custom-scalars layout, written first in every events file.
        head: summary values written with it (TensorBoard's HParams data of the run).
        priority: the thread's CPU priority on Linux, one of `PRIORITIES`. Defaults to
            "idle" (SCHED_IDLE).
    """

    def __init__(
        self,
        log_dir: str,
        *,
        max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES,
        png_compress_level: int = 1,
        layout: layout_pb2.Layout | None = None,
        priority: str = "idle",
        head: Sequence[Any] = (),
        storage_options: Mapping[str, Any] | None = None,
        upload_interval: float = DEFAULT_UPLOAD_INTERVAL,
    ) -> None:
        if priority not in PRIORITIES:
            raise ValueError(
                f"Invalid value for argument `priority`: expected one of {PRIORITIES}. "
                f"Received: priority={priority!r}."
            )
        self.log_dir = log_dir
        self.max_pending_bytes = max_pending_bytes
        self.png_compress_level = png_compress_level
        self.priority = priority
        self.stats = SinkStats()
        self._layout = layout
        self._head = list(head)
        self._queue: queue.Queue[Any] = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0  # checks whose images are queued and not yet written
        self._check_bytes = 0  # pixel bytes of the last check rendered
        self._held: _Job | None = None  # the last check, when its images were skipped
        self._described: set[str] = set()
        self._writer: EventFileWriter | None = None
        self.uploader = (
            None
            if not is_url(log_dir)
            else Uploader(
                log_dir,
                tempfile.mkdtemp(prefix="actwatch-spool-"),
                interval=upload_interval,
                storage_options=storage_options,
            )
        )
        self._directory = log_dir if self.uploader is None else self.uploader.spool
        self._storage_options = storage_options
        self._skip_warning = WarnOnce("actwatch: images of another check were skipped")
        self._error_warning = WarnOnce("actwatch: another write error")
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
        histograms: Mapping[str, tuple[np.ndarray, str]] | None = None,
    ) -> bool:
        """Queue one check. Returns False when its images were skipped (backlog); they are
        still written at `close` when no check is submitted after this one.

        `keep_images=True` queues the images whatever the backlog. A check with images also
        gets the scalar `network/images_skipped`: the checks before it whose images were
        skipped. `histograms` (`{tag: ([k, 3] buckets, description)}`) are never dropped.
        """
        if self._closed:
            raise RuntimeError("this Sink is closed")
        scalars = dict(scalars)
        with self._lock:
            if self._held is not None:  # a later check came: the held images stay skipped
                self._held = None
                self.stats.images_skipped += 1
            kept = True
            if render is not None:
                self.stats.image_checks += 1
                scalars[tags.IMAGES_SKIPPED] = (
                    self.stats.images_skipped,
                    IMAGES_SKIPPED_DESCRIPTION,
                )
                per_check = self._check_bytes or _FIRST_GUESS_BYTES
                waiting = self._pending
                # The first check always finds nothing waiting, so its images are kept.
                kept = (
                    keep_images
                    or waiting == 0
                    or (waiting + 1) * per_check <= self.max_pending_bytes
                )
                if kept:
                    self._pending += 1
            job = _Job(
                step,
                time.time(),
                scalars,
                dict(texts or {}),
                render if kept else None,
                dict(histograms or {}),
            )
            if not kept:
                self._held = _Job(step, job.wall_time, {}, {}, render)
        if not kept:
            self._skip_warning(
                "actwatch: the images of the check at step %d are skipped: the images of %d "
                "earlier checks (about %.1f MiB) still wait for the background writer, which "
                "lags behind training. Scalars are kept, and so are the first and the last "
                "check's images. Check less often, watch fewer layers or lower max_filters. "
                "Skipped checks are counted in the scalar `%s` and at the end of training.",
                step,
                waiting,
                waiting * per_check / 2**20,
                tags.IMAGES_SKIPPED,
            )
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
        """Write what is queued (and the last check's skipped images), then close the file."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            held, self._held = self._held, None
            if held is not None:
                self._pending += 1
                self.stats.images_written_at_close += 1
        if held is not None:
            self._queue.put(held)  # an event with the images only, at the check's step
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            # The thread closes the file when it reaches the end of the queue: closing it
            # under its feet would cut a record in half and lose the checks still queued.
            logger.warning(
                "actwatch: the background writer is still writing to %r after %s s; it goes "
                "on in the background and closes the file when done.%s",
                self.log_dir,
                timeout,
                ""
                if self.uploader is None
                else f" Until uploaded, the events are in {self.uploader.spool}: if this "
                "process ends first, copy that folder's files there by hand.",
            )
        if self.stats.images_skipped:
            logger.warning(
                "actwatch: images of %d of %d checks were skipped because the background "
                "writer lagged behind training; their scalars were written (see the scalar "
                "`%s`). Check less often, watch fewer layers or lower max_filters.",
                self.stats.images_skipped,
                self.stats.image_checks,
                tags.IMAGES_SKIPPED,
            )

    # Background thread -------------------------------------------------------------------

    def _loop(self) -> None:
        set_thread_priority(self.priority)
        while True:
            item = self._queue.get()
            if item is _STOP:
                self._close_writer()
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
                        self._pending -= 1

    def _close_writer(self) -> None:
        try:
            if self._writer is not None:
                try:
                    self._writer.close()
                except OSError as exc:
                    self._report(exc)
            if self.uploader is not None:
                self.uploader.close()
        finally:
            # The run's claim on its log dir goes only now, with everything written and
            # uploaded (or the upload given up): a writer still at work past `close`'s
            # timeout keeps it.
            release_claim(self.log_dir, self._storage_options)

    def _report(self, exc: BaseException) -> None:
        self.stats.errors += 1
        self._error_warning(
            "actwatch: could not write to %r (%s: %s). Training goes on; statistics still "
            "reach the logs dict. Later write errors are counted, not repeated.",
            self.log_dir,
            type(exc).__name__,
            exc,
            exc=exc,
        )

    def _description(self, tag: str, description: str) -> str | None:
        """`description` for a tag's first value in the file; None after that."""
        if tag in self._described:
            return None
        self._described.add(tag)
        return description

    def _open_writer(self, wall_time: float) -> EventFileWriter:
        """The current events file; a new one when there is none or it was deleted."""
        if self._writer is not None and self._writer.removed:
            self._writer.close()
            self._writer = None
            self._report(FileNotFoundError(f"the events file in {self.log_dir!r} was deleted"))
        if self._writer is None:
            os.makedirs(self._directory, exist_ok=True)
            self._writer = EventFileWriter(self._directory)
            self._described.clear()  # a new file needs every tag's metadata again
            values = [summaries.custom_scalars(self._layout)] if self._layout is not None else []
            if values or self._head:
                self._writer.write_event(summaries.event(0, wall_time, [*values, *self._head]))
        return self._writer

    def _write_job(self, job: _Job) -> None:
        writer = self._open_writer(job.wall_time)
        described = set(self._described)
        timings = {"render": 0.0, "encode": 0.0, "write": 0.0}
        values = [
            summaries.scalar(tag, number, self._description(tag, description))
            for tag, (number, description) in job.scalars.items()
        ]
        values += [
            summaries.text(tag, text, self._description(tag, description))
            for tag, (text, description) in job.texts.items()
        ]
        values += [
            summaries.histogram(tag, buckets, self._description(tag, description))
            for tag, (buckets, description) in job.histograms.items()
        ]
        if job.render is not None:
            start = time.perf_counter()
            images = job.render()
            timings["render"] = time.perf_counter() - start
            start = time.perf_counter()
            pixels = 0
            for tag, (image, description) in images.items():
                array = image.indices if isinstance(image, PaletteImage) else image
                pixels += array.nbytes
                height, width = array.shape[:2]
                png = encode_png(image, self.png_compress_level)
                values.append(
                    summaries.image(
                        tag,
                        png,
                        width=width,
                        height=height,
                        description=self._description(tag, description),
                    )
                )
            self._check_bytes = pixels
            self.stats.images_written += len(images)
            timings["encode"] = time.perf_counter() - start
        start = time.perf_counter()
        before = writer.bytes_written
        try:
            writer.write_event(summaries.event(job.step, job.wall_time, values))
        except OSError:
            self._described = described  # their metadata did not land: send it again
            raise
        if self.uploader is not None:
            self.uploader.written(writer.path, writer.bytes_written)
        timings["write"] = time.perf_counter() - start
        size = writer.bytes_written - before
        self.stats.checks += 1
        self.stats.bytes_written += size
        self.stats.render_seconds += timings["render"]
        self.stats.encode_seconds += timings["encode"]
        self.stats.write_seconds += timings["write"]
        self.stats.last_check = {**timings, "bytes": float(size)}


def _close_at_exit(ref: weakref.ReferenceType[Sink]) -> None:
    sink = ref()
    if sink is not None:
        sink.close(timeout=10.0)
