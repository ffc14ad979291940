"""TFRecord framing of events files (masked CRC32C): writing records, and the one reader of them.

An events file is a sequence of records, each framed as TensorBoard's `RecordWriter` frames it:

| bytes | what |
| --- | --- |
| 8 | payload length, little-endian uint64 |
| 4 | masked CRC32C of those 8 bytes |
| length | the payload (a serialized `Event` proto) |
| 4 | masked CRC32C of the payload |

The CRC is the C `google-crc32c`: TensorBoard's pure-Python fallback costs hundreds of
milliseconds per check of images. Writing is unbuffered, so a killed process leaves every
record written before it whole. Reading yields each record with its byte offset, past damaged
ones (`scan_records`), so a reader can index (run, tag, step) -> offset and later read one
record with `read_record_at`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

import google_crc32c
from tensorboard.compat.proto import event_pb2

from actwatch._logging import logger

__all__ = [
    "EVENT_FILE_PREFIX",
    "EventFileWriter",
    "ReadState",
    "Record",
    "RecordError",
    "RecordWriter",
    "masked_crc32c",
    "read_payload_part",
    "read_record_at",
    "read_records",
    "scan_records",
]

#: Every events file's name starts with this (TensorBoard finds files by it).
EVENT_FILE_PREFIX = "events.out.tfevents."
_HEADER = 12  # length (8) + its CRC (4)
_FOOTER = 4
_counter = itertools.count()


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC32C of `data`, with the C implementation (`google-crc32c`)."""
    crc = int(google_crc32c.value(data))
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(payload: bytes) -> bytes:
    """One whole record: length, its masked CRC, `payload`, the payload's masked CRC."""
    header = struct.pack("<Q", len(payload))
    return (
        header
        + struct.pack("<I", masked_crc32c(header))
        + payload
        + struct.pack("<I", masked_crc32c(payload))
    )


# Writing -----------------------------------------------------------------------------------


class RecordWriter:
    """Append framed records to the file `path`, unbuffered: each lands whole or not at all.

    On a write error (a full disk) the part of the record already written is cut off again,
    since a partial record would make every later record unreadable; the error is raised.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open for the run
        self.bytes_written = 0

    def write(self, payload: bytes) -> None:
        """Append one record holding `payload`."""
        record = memoryview(frame(payload))
        try:
            done = 0
            while done < len(record):
                done += self._file.write(record[done:]) or 0
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._file.fileno(), self.bytes_written)
            raise
        self.bytes_written += len(record)

    @property
    def removed(self) -> bool:
        """True when the file was deleted (with its directory, say) while open."""
        return os.fstat(self._file.fileno()).st_nlink == 0

    def close(self) -> None:
        self._file.close()


class EventFileWriter(RecordWriter):
    """A new events file in `log_dir`: `Event` protos as records, after the file-version event.

    The name is TensorBoard's (`events.out.tfevents.<time>.<host>.<pid>.<n>`) with an
    `.actwatch` suffix, so names sort in creation order. When even the first record cannot be
    written, the empty file is removed and the error raised.
    """

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        name = (
            f"{EVENT_FILE_PREFIX}{time.time():.6f}.{socket.gethostname()}."
            f"{os.getpid()}.{next(_counter)}.actwatch"
        )
        super().__init__(os.path.join(log_dir, name))
        try:
            self.write_event(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
        except OSError:
            self.close()
            with contextlib.suppress(OSError):
                os.remove(self.path)  # an empty file is not an events file
            raise

    def write_event(self, event: event_pb2.Event) -> None:
        """Append `event` as one record."""
        self.write(event.SerializeToString())


# Reading -----------------------------------------------------------------------------------


class Record(NamedTuple):
    """One record of a file: where it starts, and its payload."""

    offset: int
    payload: bytes


class RecordError(ValueError):
    """A record that is cut short or fails its CRC check."""


class _DamagedHeader(RecordError):
    """A length header that fails its CRC check: where the next record starts is unknown."""


class _DamagedData(RecordError):
    """A payload that fails its CRC check; the record ends `end` bytes after its start."""

    def __init__(self, message: str, end: int) -> None:
        super().__init__(message)
        self.end = end


class _Truncated(Exception):
    """The file ends inside a record (it may still be being written)."""


def _read_one(handle: BinaryIO, offset: int, path: object) -> bytes:
    """The payload of the record at the handle's position (`offset`); raises `_Truncated`,
    `_DamagedHeader` or `_DamagedData`."""
    header = handle.read(_HEADER)
    if len(header) < _HEADER:
        raise _Truncated
    if struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
        raise _DamagedHeader(f"the record at byte {offset} of {path} failed its header CRC check")
    (length,) = struct.unpack("<Q", header[:8])
    payload = handle.read(length)
    footer = handle.read(_FOOTER)
    if len(payload) < length or len(footer) < _FOOTER:
        raise _Truncated
    if struct.unpack("<I", footer)[0] != masked_crc32c(payload):
        end = _HEADER + length + _FOOTER
        raise _DamagedData(f"the record at byte {offset} of {path} failed its data CRC check", end)
    return payload


@dataclass
class ReadState:
    """Where the reading of one file stands, kept to read on once the file grows.

    Attributes:
        offset: where the next record starts: every record before it was read or skipped.
        damaged: bytes of damaged records skipped (their payload failed its CRC check).
        dead: True when the length header at `offset` is damaged: where the next record
            starts is unknown, so nothing after it is read (until the file grows).
    """

    offset: int = 0
    damaged: int = 0
    dead: bool = False


def scan_records(path: str | os.PathLike[str], state: ReadState) -> Iterator[Record]:
    """Every whole, CRC-checked record of the file at `path` from `state.offset` on, past
    damaged ones; `state` is moved past each record once the caller took it.

    - A record cut short (a file still being written) ends the reading quietly: scan again
      from `state.offset` later.
    - A record whose payload fails its CRC check is skipped (logged, counted in
      `state.damaged`) and reading goes on after it; when it is the last of the file, it may
      still be being written: it is left for the next scan.
    - A damaged length header ends the reading of the file (`state.dead`): the rest of it
      cannot be framed.

    Damage is logged once at WARNING for each file and place (later readings of it at DEBUG).
    """
    state.dead = False
    with open(path, "rb") as handle:
        handle.seek(state.offset)
        while True:
            offset = state.offset
            try:
                payload = _read_one(handle, offset, path)
            except _Truncated:
                return
            except _DamagedHeader as exc:
                _warn_damaged(path, offset, exc, "the rest of that file is skipped")
                state.dead = True
                return
            except _DamagedData as exc:
                if offset + exc.end >= os.fstat(handle.fileno()).st_size:
                    _warn_damaged(path, offset, exc, "it is read again if the file grows")
                    return
                _warn_damaged(path, offset, exc, "that record is skipped, the next ones are read")
                state.damaged += exc.end
                state.offset = offset + exc.end
                continue
            yield Record(offset, payload)
            state.offset = offset + _HEADER + len(payload) + _FOOTER


def read_records(path: str | os.PathLike[str], offset: int = 0) -> Iterator[Record]:
    """Every whole record of the file at `path` from byte `offset` on, as `scan_records`
    reads them (past damaged ones)."""
    return scan_records(path, ReadState(offset=offset))


def record_offsets(path: str | os.PathLike[str]) -> list[int]:
    """Where each whole record of the file at `path` starts, read from the length headers
    alone (no payload is read or checked): cheap on a file of images. Stops at a damaged
    header or a record cut short."""
    offsets = []
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        offset = 0
        while offset + _HEADER <= size:
            handle.seek(offset)
            header = handle.read(_HEADER)
            if struct.unpack("<I", header[8:])[0] != masked_crc32c(header[:8]):
                break
            (length,) = struct.unpack("<Q", header[:8])
            end = offset + _HEADER + length + _FOOTER
            if end > size:
                break
            offsets.append(offset)
            offset = end
    return offsets


def read_record_at(path: str | os.PathLike[str], offset: int) -> bytes:
    """The payload of the one record that starts at byte `offset` of `path`.

    Raises:
        RecordError: when no whole, CRC-checked record starts there.
    """
    with open(path, "rb") as handle:
        handle.seek(offset)
        try:
            return _read_one(handle, offset, path)
        except _Truncated:
            raise RecordError(f"no whole record at byte {offset} of {path}") from None


def read_payload_part(path: str | os.PathLike[str], offset: int, start: int, length: int) -> bytes:
    """Bytes `start` to `start + length` of the payload of the record at byte `offset` of
    `path`, read alone (a PNG inside a check's event, say). Unchecked: the caller checked
    the whole record's CRC when it read it with `scan_records`.

    Raises:
        RecordError: when the file ends before those bytes.
    """
    with open(path, "rb") as handle:
        handle.seek(offset + _HEADER + start)
        part = handle.read(length)
    if len(part) < length:
        raise RecordError(f"{path} ends inside the record at byte {offset}")
    return part


_warned: set[tuple[str, int]] = set()
_warned_lock = threading.Lock()


def _warn_damaged(
    path: str | os.PathLike[str], offset: int, exc: RecordError, outcome: str
) -> None:
    """Log a damaged record at WARNING the first time for its file and place, else DEBUG."""
    key = (str(Path(path).resolve()), offset)
    with _warned_lock:
        first = key not in _warned
        _warned.add(key)
    logger.log(
        logging.WARNING if first else logging.DEBUG,
        "actwatch: %s; %s. The file is damaged (a copy cut short or edited?).",
        exc,
        outcome,
    )
