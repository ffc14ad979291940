"""The background writer and the summaries it writes: read back with TensorBoard's own reader.

Backlogs are forced with a render that waits on a gate (deterministic), and, in real fits,
with a tiny `max_pending_bytes` and 64 probes (a slow render).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator as ea
from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.custom_scalar import layout_pb2

import actwatch
from actwatch.events import summaries, tags
from actwatch.events.records import EventFileWriter, read_records
from actwatch.events.sink import ImageRender, Sink
from actwatch.render.png import encode_png

from .fit_logs import dying_cnn
from .helpers import data, read_events
from .records import events_files

GRID = np.arange(12 * 10 * 3, dtype=np.uint8).reshape(12, 10, 3)
TAG = "filters/conv/probe_0"


def _render(gate: threading.Event | None = None, image: np.ndarray = GRID) -> ImageRender:
    """A render of one image; with `gate`, it waits until the gate opens (a busy writer)."""

    def render() -> dict[str, tuple[np.ndarray, str]]:
        if gate is not None:
            assert gate.wait(60), "the test never opened the gate"
        return {TAG: (image, "a grid")}

    return render


def _submit(sink: Sink, step: int, render: ImageRender, **kwargs: Any) -> bool:
    return sink.submit(
        step, scalars={"network/mean": (float(step), "mean")}, render=render, **kwargs
    )


def _sink_messages(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "actwatch" and r.levelno == level and text in r.getMessage()
    ]


# Summaries -------------------------------------------------------------------------------------


def test_summaries_read_back_with_tensorboard(tmp_path: Path) -> None:
    """Scalar, text, image and layout values are what EventAccumulator reads; descriptions too."""
    layout = tags.layout(["conv1"])
    writer = EventFileWriter(tmp_path)
    writer.write_event(summaries.event(0, 1.0, [summaries.custom_scalars(layout)]))
    for step in (0, 1):
        first = step == 0
        values = [
            summaries.scalar("network/mean", 0.25 + step, "mean *activation*" if first else None),
            summaries.text(tags.ALERTS, f"- **dead** at {step} é", "alerts" if first else None),
            summaries.image(
                TAG,
                encode_png(GRID),
                width=10,
                height=12,
                description="a grid" if first else None,
            ),
        ]
        writer.write_event(summaries.event(step, 2.0 + step, values))
    writer.close()

    events = read_events(tmp_path)
    assert events.scalars == {"network/mean": [(0, 0.25), (1, 1.25)]}
    assert events.texts == {tags.ALERTS: [(0, "- **dead** at 0 é"), (1, "- **dead** at 1 é")]}
    assert [s for s, _ in events.images[TAG]] == [0, 1]
    np.testing.assert_array_equal(events.images[TAG][1][1], GRID)
    assert events.other == {"custom_scalars__config__": "custom_scalars"}

    accumulator = ea.EventAccumulator(str(tmp_path))
    accumulator.Reload()
    assert accumulator.SummaryMetadata("network/mean").summary_description == "mean *activation*"
    assert accumulator.SummaryMetadata(TAG).summary_description == "a grid"
    stored = layout_pb2.Layout.FromString(
        accumulator.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0]
    )
    assert stored == layout
    # Metadata travels with a tag's first value only.
    (path,) = events_files(tmp_path)
    checks = [event_pb2.Event.FromString(r.payload) for r in read_records(path)][2:]
    assert [[v.HasField("metadata") for v in e.summary.value] for e in checks] == [
        [True, True, True],
        [False, False, False],
    ]


# Priorities ------------------------------------------------------------------------------------


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CPU priorities: Linux only")
@pytest.mark.parametrize("priority", ["idle", "nice", "normal"])
def test_priority_is_the_threads_scheduling(tmp_path: Path, priority: str) -> None:
    """`priority` sets the writer thread's scheduling: SCHED_IDLE, niceness 10, or unchanged."""
    sink = Sink(str(tmp_path), priority=priority)
    assert sink.flush(30)
    tid = sink._thread.native_id
    assert tid is not None
    policy = os.sched_getscheduler(tid)
    assert policy == (os.SCHED_IDLE if priority == "idle" else os.SCHED_OTHER)
    if priority != "idle":
        expected = os.getpriority(os.PRIO_PROCESS, 0) + (10 if priority == "nice" else 0)
        assert os.getpriority(os.PRIO_PROCESS, tid) == min(expected, 19)
    sink.close()


def test_unknown_priority_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"`priority`: expected one of .*Received: priority='low'"):
        Sink(str(tmp_path), priority="low")


# Back-pressure ---------------------------------------------------------------------------------


def test_backlog_is_bounded_by_bytes_not_checks(tmp_path: Path) -> None:
    """Small images wait however many checks are behind; big ones stop at max_pending_bytes."""
    small_gate = threading.Event()
    sink = Sink(str(tmp_path / "small"))
    assert _submit(sink, 0, _render(small_gate))
    assert all(_submit(sink, step, _render()) for step in range(1, 12))
    small_gate.set()
    sink.close()
    assert sink.stats.images_skipped == 0 and sink.stats.images_written == 12

    big = np.zeros((1024, 1024), np.uint8)  # 1 MiB of pixels a check
    sink = Sink(str(tmp_path / "big"), max_pending_bytes=3 * 2**20)
    assert _submit(sink, 0, _render(image=big))
    assert sink.flush(30)  # the writer measured a check: 1 MiB
    gate = threading.Event()
    kept = [_submit(sink, step, _render(gate, big)) for step in range(1, 6)]
    gate.set()
    sink.close()
    assert kept == [True, True, True, False, False]  # 3 MiB were waiting at steps 4 and 5
    assert [s for s, _ in read_events(tmp_path / "big").images[TAG]] == [0, 1, 2, 3, 5]
    assert sink.stats.images_skipped == 1  # step 5, the last, was written at close


def test_forced_backlog_is_counted_in_logs_scalar_and_a_closing_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Skipped images: one WARNING saying why, a cumulative scalar, one line at close."""
    gate = threading.Event()
    sink = Sink(str(tmp_path), max_pending_bytes=1)
    with caplog.at_level(logging.DEBUG, logger="actwatch"):
        kept = [_submit(sink, 0, _render(gate))]
        kept += [_submit(sink, step, _render()) for step in (1, 2, 3)]
        gate.set()
        assert sink.flush(30)
        kept.append(_submit(sink, 4, _render()))
        sink.close()

    assert kept == [True, False, False, False, True]
    assert (sink.stats.images_skipped, sink.stats.image_checks) == (3, 5)
    events = read_events(tmp_path)
    assert [s for s, _ in events.images[TAG]] == [0, 4]
    assert [s for s, _ in events.scalars["network/mean"]] == [0, 1, 2, 3, 4]
    # Checks before each check whose images were skipped.
    assert events.scalars[tags.IMAGES_SKIPPED] == [(0, 0), (1, 0), (2, 1), (3, 2), (4, 3)]
    (warning,) = _sink_messages(caplog, logging.WARNING, "skipped:")
    assert "the check at step 1 are skipped" in warning
    assert "lags behind training" in warning and "Check less often" in warning
    assert len(_sink_messages(caplog, logging.DEBUG, "images of another check")) == 2
    (line,) = _sink_messages(caplog, logging.WARNING, "checks were skipped")
    assert line.startswith("actwatch: images of 3 of 5 checks were skipped")


def test_last_check_images_are_written_at_close(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The last check submitted keeps its images: skipped at submit, written at close."""
    gate = threading.Event()
    sink = Sink(str(tmp_path), max_pending_bytes=1)
    with caplog.at_level(logging.WARNING, logger="actwatch"):
        assert _submit(sink, 0, _render(gate))
        assert not _submit(sink, 1, _render())
        assert not _submit(sink, 2, _render())
        gate.set()
        sink.close()

    events = read_events(tmp_path)
    assert [s for s, _ in events.images[TAG]] == [0, 2]
    assert [s for s, _ in events.scalars["network/mean"]] == [0, 1, 2]
    assert sink.stats.images_skipped == 1  # step 1 only
    assert sink.stats.images_written_at_close == 1
    (line,) = _sink_messages(caplog, logging.WARNING, "checks were skipped")
    assert "images of 1 of 3 checks" in line
    # Step 2's images come in an event of their own, after its scalars.
    (path,) = events_files(tmp_path)
    last = event_pb2.Event.FromString(list(read_records(path))[-1].payload)
    assert last.step == 2 and [v.tag for v in last.summary.value] == [TAG]


def test_close_timing_out_leaves_the_file_to_the_writer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A close that times out says so and leaves the file open to the writer thread, which
    writes every queued check whole and then closes it."""
    gate = threading.Event()
    sink = Sink(str(tmp_path))
    assert _submit(sink, 0, _render(gate))
    assert _submit(sink, 1, _render())
    with caplog.at_level(logging.WARNING, logger="actwatch"):
        sink.close(timeout=0.2)
    (line,) = _sink_messages(caplog, logging.WARNING, "still writing")
    assert "goes on in the background" in line
    gate.set()
    sink._thread.join(30)
    assert not sink._thread.is_alive()
    (path,) = events_files(tmp_path)
    assert [e.step for e in read_records_events(path)] == [0, 1]
    assert [s for s, _ in read_events(tmp_path).images[TAG]] == [0, 1]
    assert sink.stats.errors == 0


def read_records_events(path: Path) -> list[event_pb2.Event]:
    """The events of a file that hold summaries, every record CRC-checked."""
    events = [event_pb2.Event.FromString(r.payload) for r in read_records(path)]
    return [e for e in events if e.HasField("summary")]


def test_keep_images_bypasses_the_backlog(tmp_path: Path) -> None:
    """`keep_images=True` queues the images whatever is waiting."""
    gate = threading.Event()
    sink = Sink(str(tmp_path), max_pending_bytes=1)
    assert _submit(sink, 0, _render(gate))
    assert _submit(sink, 1, _render(), keep_images=True)
    gate.set()
    sink.close()
    assert [s for s, _ in read_events(tmp_path).images[TAG]] == [0, 1]


# Real fits -------------------------------------------------------------------------------------


def _three_convs(size: int = 32) -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3))
    x = inputs
    for i in range(1, 4):
        x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name=f"conv{i}")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    return model


def test_tiny_model_with_frequent_checks_keeps_every_image(tmp_path: Path) -> None:
    """3 convs of 16 filters, 4 probes, a check every 2 batches: every check has its images."""
    x, y = data(160, size=32)
    monitor = actwatch.ActivationMonitor(x[:4], tmp_path, every_n_batches=2)
    _three_convs().fit(x, y, batch_size=8, epochs=1, callbacks=[monitor], verbose=0)

    events = read_events(tmp_path)
    steps = [s for s, _ in events.scalars["network/mean"]]
    assert steps == list(range(0, 21, 2))
    for layer in ("conv1", "conv2", "conv3"):
        for probe in range(4):
            assert [s for s, _ in events.images[tags.filters_tag(layer, probe)]] == steps
    assert events.scalars[tags.IMAGES_SKIPPED] == [(s, 0.0) for s in steps]
    assert monitor.sink_stats is not None and monitor.sink_stats.images_skipped == 0


def _assert_last_check_has_images(
    log_dir: Path, monitor: actwatch.ActivationMonitor, probes: int
) -> None:
    events = read_events(log_dir)
    last = max(s for s, _ in events.scalars["network/mean"])
    for layer in ("conv1", "pool1", "conv2", "pool2"):
        for probe in range(probes):
            steps = [s for s, _ in events.images[tags.filters_tag(layer, probe)]]
            assert last in steps, f"the last check (step {last}) lost its images of {layer}"
    stats = monitor.sink_stats
    assert stats is not None
    # The writer was made to lag: without skips this test would prove nothing.
    assert stats.images_skipped + stats.images_written_at_close >= 1
    assert events.scalars[tags.IMAGES_SKIPPED][-1][1] <= stats.images_skipped


def test_early_stopping_keeps_the_last_checks_images(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fit ended by EarlyStopping, with a writer far behind: its last check has images."""
    x, y = data(64)
    monitor = actwatch.ActivationMonitor(x, tmp_path, every_n_batches=1)
    monitor._sink_options = {"max_pending_bytes": 1}  # skip whenever images wait
    stop = keras.callbacks.EarlyStopping(monitor="loss", min_delta=1e9, patience=0)
    with caplog.at_level(logging.WARNING, logger="actwatch"):
        history = dying_cnn(0).fit(
            x[:32], y[:32], batch_size=8, epochs=6, callbacks=[monitor, stop], verbose=0
        )
    assert len(history.history["loss"]) == 2
    _assert_last_check_has_images(tmp_path, monitor, probes=64)
    assert _sink_messages(caplog, logging.WARNING, "checks were skipped")


def test_stop_on_dead_fraction_keeps_the_last_checks_images(tmp_path: Path) -> None:
    """A fit stopped by stop_on_dead_fraction, with a writer far behind: its last check has
    images."""
    x, y = data(64)
    monitor = actwatch.ActivationMonitor(
        x, tmp_path, every_n_batches=1, stop_on_dead_fraction=0.5, patience=4
    )  # confirmed dead at step 3: after the train step compiled, with checks close together
    monitor._sink_options = {"max_pending_bytes": 1}
    history = dying_cnn(3).fit(
        x[:32], y[:32], batch_size=8, epochs=6, callbacks=[monitor], verbose=0
    )
    assert len(history.history["loss"]) == 1
    _assert_last_check_has_images(tmp_path, monitor, probes=64)
