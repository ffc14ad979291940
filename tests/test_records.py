"""`actwatch.events.records` alone: TFRecord framing written and read back, offsets, damage."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import google_crc32c
import pytest
from tensorboard.compat.proto import event_pb2

from actwatch.events.records import (
    EVENT_FILE_PREFIX,
    EventFileWriter,
    RecordError,
    RecordWriter,
    masked_crc32c,
    read_record_at,
    read_records,
)

# Reading, rendering and serving: no Keras backend involved, so once per make test.
pytestmark = pytest.mark.read_path

PAYLOADS = [b"", b"a", b"hello records", bytes(range(256)) * 40]


def _write(path: Path, payloads: list[bytes]) -> None:
    writer = RecordWriter(path)
    for payload in payloads:
        writer.write(payload)
    writer.close()


def _offsets(payloads: list[bytes]) -> list[int]:
    offsets, offset = [], 0
    for payload in payloads:
        offsets.append(offset)
        offset += 12 + len(payload) + 4
    return offsets


def test_masked_crc32c_is_tfrecords_mask_of_the_c_crc() -> None:
    """The mask is TFRecord's: rotate right by 15 bits, add 0xa282ead8 (mod 2**32)."""
    crc = int(google_crc32c.value(b"actwatch"))
    rotated = ((crc >> 15) | (crc << 17)) & 0xFFFFFFFF
    assert masked_crc32c(b"actwatch") == (rotated + 0xA282EAD8) & 0xFFFFFFFF
    assert masked_crc32c(b"") == 0xA282EAD8  # CRC32C of nothing is 0


def test_round_trip_with_offsets(tmp_path: Path) -> None:
    """Records come back in order, whole, each with the byte offset it starts at."""
    path = tmp_path / "f"
    _write(path, PAYLOADS)
    records = list(read_records(path))
    assert [r.payload for r in records] == PAYLOADS
    assert [r.offset for r in records] == _offsets(PAYLOADS)
    assert path.stat().st_size == sum(16 + len(p) for p in PAYLOADS)
    header = path.read_bytes()[:12]
    assert struct.unpack("<Q", header[:8]) == (len(PAYLOADS[0]),)


def test_read_one_record_at_its_offset(tmp_path: Path) -> None:
    """`read_record_at` reads exactly the record at an offset `read_records` gave."""
    path = tmp_path / "f"
    _write(path, PAYLOADS)
    for offset, payload in zip(_offsets(PAYLOADS), PAYLOADS, strict=True):
        assert read_record_at(path, offset) == payload
    with pytest.raises(RecordError, match=r"at byte 1 of .*f failed its header CRC check"):
        read_record_at(path, 1)
    with pytest.raises(RecordError, match=r"no whole record at byte \d+"):
        read_record_at(path, path.stat().st_size)


def test_reading_resumes_from_an_offset(tmp_path: Path) -> None:
    """Reading from the offset of record k yields records k, k+1, ... (incremental indexing)."""
    path = tmp_path / "f"
    _write(path, PAYLOADS)
    offsets = _offsets(PAYLOADS)
    assert [r.payload for r in read_records(path, offsets[2])] == PAYLOADS[2:]


def test_truncated_tail_stops_quietly_and_reads_on_when_complete(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A record still being written ends the reading without a warning; once whole, it reads."""
    path = tmp_path / "f"
    _write(path, PAYLOADS)
    whole = path.read_bytes()
    for cut in (1, 5, 13, 16 + len(PAYLOADS[-1]) - 1):
        path.write_bytes(whole[:-cut])
        with caplog.at_level(logging.DEBUG, logger="actwatch"):
            assert [r.payload for r in read_records(path)] == PAYLOADS[:-1]
    assert caplog.records == []
    path.write_bytes(whole)
    last = _offsets(PAYLOADS)[-1]
    assert [r.payload for r in read_records(path, last)] == PAYLOADS[-1:]


@pytest.mark.parametrize(("where", "part"), [(-1, "data"), (-5, "data"), (9, "header")])
def test_corrupt_record_warns_once_and_stops(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, where: int, part: str
) -> None:
    """A failed CRC ends the reading; WARNING the first time for that place, DEBUG after."""
    path = tmp_path / f"corrupt-{part}{where}"
    _write(path, PAYLOADS)
    data = bytearray(path.read_bytes())
    data[where] ^= 0xFF  # -1, -5: the last record's CRC, payload; 9: the first header CRC
    path.write_bytes(bytes(data))
    expected = PAYLOADS[:-1] if where < 0 else []
    with caplog.at_level(logging.DEBUG, logger="actwatch"):
        assert [r.payload for r in read_records(path)] == expected
        assert [r.payload for r in read_records(path)] == expected
    levels = [r.levelno for r in caplog.records if f"failed its {part} CRC" in r.getMessage()]
    assert levels == [logging.WARNING, logging.DEBUG]
    assert path.name in caplog.records[0].getMessage()


def test_event_file_writer_names_and_first_event(tmp_path: Path) -> None:
    """A new events file: TensorBoard's name prefix, the file-version event, then events."""
    writer = EventFileWriter(tmp_path)
    writer.write_event(event_pb2.Event(step=7, wall_time=1.0))
    writer.close()
    (path,) = tmp_path.iterdir()
    assert path.name.startswith(EVENT_FILE_PREFIX) and path.name.endswith(".actwatch")
    events = [event_pb2.Event.FromString(r.payload) for r in read_records(path)]
    assert events[0].file_version == "brain.Event:2"
    assert events[1].step == 7
    assert writer.bytes_written == path.stat().st_size


def test_removed_is_true_once_the_file_is_deleted(tmp_path: Path) -> None:
    """`removed` says when the open file was deleted (the log directory was removed)."""
    writer = EventFileWriter(tmp_path)
    assert not writer.removed
    Path(writer.path).unlink()
    assert writer.removed
    writer.close()


def test_unwritable_directory_leaves_no_file(tmp_path: Path) -> None:
    """When the events file cannot be created, the error is raised and nothing is left."""
    missing = tmp_path / "missing"
    with pytest.raises(FileNotFoundError):
        EventFileWriter(missing)
    assert not missing.exists()
