"""Reuse: one monitor across fits, two monitors on one model, resumed training."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras
import pytest

import actwatch

from .helpers import data, read_events, tiny_cnn
from .records import events_files, read_records

STEPS = 8  # 32 samples, batch size 4
X, Y = data(32)


def _fit(model: keras.Model, monitor: actwatch.ActivationMonitor, epochs: int, **kw: int) -> None:
    model.fit(X, Y, epochs=epochs, batch_size=4, verbose=0, callbacks=[monitor], **kw)


def _open_files_under(path: Path) -> list[str]:
    """Files this process holds open below `path` (Linux: /proc/self/fd)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed while listing
            continue
        if target.startswith(str(path)):
            held.append(target)
    return held


def _steps(log_dir: Path, tag: str = "network/zero_fraction") -> list[int]:
    return [s for s, _ in read_events(log_dir).scalars[tag]]


def _file_steps(log_dir: Path) -> list[list[int]]:
    """Per events file, in order: the steps of its checks (the layout event left out, and the
    update ratios written on their own at the step after a check)."""

    def ratio_only(event: Any) -> bool:
        return all("update_ratio" in v.tag or v.tag == "alerts" for v in event.summary.value)

    out = []
    for path in events_files(log_dir):
        records = read_records(path)
        assert records.trailing == 0
        checks = [e for e in records.events if e.HasField("summary") and not ratio_only(e)]
        out.append([e.step for e in checks][1:])
    return out


def test_one_monitor_two_fits(tmp_path: Path) -> None:
    """A monitor reused by a second fit() goes on from the model's step; writers closed each run."""
    model = tiny_cnn()
    monitor = actwatch.ActivationMonitor(X[:2], str(tmp_path))
    _fit(model, monitor, 2)
    assert _open_files_under(tmp_path) == []
    _fit(model, monitor, 2)
    assert _open_files_under(tmp_path) == []
    # The second run's start is the first run's end (step 16): not checked twice.
    assert _file_steps(tmp_path) == [[0, 8, 16], [24, 32]]
    assert _steps(tmp_path) == [0, 8, 16, 24, 32]
    assert [s for s, _ in read_events(tmp_path).images["filters/conv2/probe_1"]] == [
        0, 8, 16, 24, 32,
    ]  # fmt: skip


def test_two_monitors_one_model(tmp_path: Path) -> None:
    """Two monitors with their own log dirs and probes see the same steps and model state."""
    model = tiny_cnn()
    first = actwatch.ActivationMonitor(X[:2], str(tmp_path / "a"))
    second = actwatch.ActivationMonitor(X[:2], str(tmp_path / "b"), layers="conv2")
    model.fit(X, Y, epochs=2, batch_size=4, verbose=0, callbacks=[first, second])
    assert _open_files_under(tmp_path) == []
    a, b = read_events(tmp_path / "a"), read_events(tmp_path / "b")
    assert [s for s, _ in a.scalars["hoyer/conv2"]] == [0, STEPS, 2 * STEPS]
    assert a.scalars["hoyer/conv2"] == b.scalars["hoyer/conv2"]
    assert "hoyer/conv1" in a.scalars and "hoyer/conv1" not in b.scalars
    assert len(events_files(tmp_path / "a")) == len(events_files(tmp_path / "b")) == 1


@pytest.mark.parametrize("restored", ["optimizer", "weights-only"])
def test_resumed_training_with_initial_epoch(tmp_path: Path, restored: str) -> None:
    """A new process resumes at initial_epoch=2: steps neither collide nor go backwards."""
    model = tiny_cnn()
    _fit(model, actwatch.ActivationMonitor(X[:2], str(tmp_path / "logs")), 2)
    if restored == "optimizer":  # a .keras checkpoint: the optimizer's step count comes back
        model.save(tmp_path / "ckpt.keras")
        resumed = keras.saving.load_model(tmp_path / "ckpt.keras")
    else:  # weights only: the optimizer starts at 0, the step comes from the epoch
        resumed = tiny_cnn()
        resumed.set_weights(model.get_weights())
    monitor = actwatch.ActivationMonitor(X[:2], str(tmp_path / "logs"))
    _fit(resumed, monitor, 4, initial_epoch=2)
    assert _open_files_under(tmp_path) == []
    assert _file_steps(tmp_path / "logs") == [[0, 8, 16], [24, 32]]
    assert _steps(tmp_path / "logs") == [0, 8, 16, 24, 32]


def test_reused_monitor_batch_checks_across_fits(tmp_path: Path) -> None:
    """Batch-level checks in two fits of one monitor: strictly increasing, no duplicate."""
    model = tiny_cnn()
    monitor = actwatch.ActivationMonitor(X[:2], str(tmp_path), every_n_batches=3)
    _fit(model, monitor, 1)
    _fit(model, monitor, 2, initial_epoch=1)
    assert _file_steps(tmp_path) == [[0, 3, 6, 8], [9, 12, 15, 16]]
    assert _steps(tmp_path) == [0, 3, 6, 8, 9, 12, 15, 16]
