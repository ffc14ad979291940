"""Reading TFRecord-framed event files by hand, checking every CRC (for the fault tests)."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
from tensorboard.compat.proto import event_pb2


def masked_crc32c(data: bytes) -> int:
    crc = int(google_crc32c.value(data))
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@dataclass
class RecordFile:
    """The events of one file, and how many bytes after the last whole record there were."""

    events: list[event_pb2.Event]
    trailing: int

    @property
    def steps(self) -> list[int]:
        """Steps of the events that hold summaries."""
        return [e.step for e in self.events if e.HasField("summary")]


def read_records(path: str | Path) -> RecordFile:
    """Parse every record; raise AssertionError on a bad CRC. A short tail is counted."""
    data = Path(path).read_bytes()
    events: list[event_pb2.Event] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 12:
            break
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
        assert header_crc == masked_crc32c(header), f"corrupt length header at byte {offset}"
        end = offset + 12 + length + 4
        if end > len(data):
            break
        body = data[offset + 12 : offset + 12 + length]
        (body_crc,) = struct.unpack("<I", data[end - 4 : end])
        assert body_crc == masked_crc32c(body), f"corrupt record at byte {offset}"
        events.append(event_pb2.Event.FromString(body))
        offset = end
    return RecordFile(events=events, trailing=len(data) - offset)


def events_files(log_dir: str | Path) -> list[Path]:
    return sorted(Path(log_dir).glob("events.out.tfevents.*"))
