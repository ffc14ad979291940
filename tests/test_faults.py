"""Faults during a real `fit`: training finishes and what was written before stays readable."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

import actwatch

from . import reference as ref
from .helpers import data, read_events, tiny_cnn
from .records import events_files, read_records

ROOT = Path(__file__).resolve().parents[1]
STEPS = 8  # 32 samples, batch size 4


def _fit(model: keras.Model, callbacks: list[Any], epochs: int = 2, **kwargs: Any) -> Any:
    x, y = kwargs.pop("xy", data(32))
    return model.fit(x, y, epochs=epochs, batch_size=4, verbose=0, callbacks=callbacks, **kwargs)


def _actwatch_warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "actwatch" and r.levelno == logging.WARNING and text in r.getMessage()
    ]


# NaN / Inf activations -------------------------------------------------------------------------


def _exploding_model() -> tuple[keras.Model, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """conv1's filter 0 overflows to +Inf around a hot probe pixel, and only there.

    Its kernel reads only input channel 0, with weights 1e38; the probes are zero but for one
    pixel of value 10 in channel 0, so the 3x3 positions around it are 1e39 = Inf in float32
    and every other position is the bias, 1. The training data has channel 0 all zero, so
    training itself stays finite.
    """
    model = tiny_cnn()
    conv1 = model.get_layer("conv1")
    kernel, bias = conv1.get_weights()
    kernel[..., 0] = 0.0
    kernel[:, :, 0, 0] = 1e38
    bias[0] = 1.0
    conv1.set_weights([kernel, bias])
    probes = np.zeros((2, 16, 16, 3), "float32")
    probes[:, 8, 8, 0] = 10.0
    x, y = data(32)
    x[..., 0] = 0.0
    return model, probes, (x, y)


def test_nonfinite_activations_alert_once_and_grids_mark_them(tmp_path: Path) -> None:
    """Inf activations: one alert naming the layer and the count; grids draw them magenta."""
    model, probes, xy = _exploding_model()
    conv1 = actwatch.get_activations(model, probes, ["conv1"])["conv1"]
    expected_zero_fraction = ref.zero_fraction(ref.to_npc(conv1))
    assert ref.nonfinite(conv1) == 2 * 9
    alerts: list[actwatch.Alert] = []
    monitor = actwatch.ActivationMonitor(probes, str(tmp_path), on_alert=alerts.append)
    history = _fit(model, [monitor], xy=xy)

    assert len(history.history["loss"]) == 2
    assert np.isfinite(history.history["actwatch_zero_fraction"]).all()
    nonfinite = [a for a in alerts if a.kind == "nonfinite"]
    assert len(nonfinite) == 1, "the same non-finite values are alerted once, not every check"
    (alert,) = nonfinite
    assert (alert.layer, alert.count, alert.step) == ("conv1", 18, 0)
    assert "layer 'conv1' produced 18 non-finite (NaN or Inf) values" in alert.message
    assert not monitor.last_stats["conv1"].dead[0], "a filter that fired is not dead"

    events = read_events(tmp_path)
    steps = [0, STEPS, 2 * STEPS]
    assert events.scalars["nonfinite/conv1"] == [(s, 18.0) for s in steps]
    (first_step, zero_fraction) = events.scalars["zero_fraction/conv1"][0]
    assert first_step == 0
    assert zero_fraction == pytest.approx(expected_zero_fraction, abs=1e-6)
    assert all(np.isfinite(v) for _, v in events.scalars["mean/conv1"])
    magenta = np.array([255, 0, 255], np.uint8)
    for tag in ("filters/conv1/probe_0", "filters/conv1/probe_1"):
        grids = events.images[tag]
        assert [s for s, _ in grids] == steps
        for _, grid in grids:
            # 9 Inf positions, each drawn as a 2x2 block (16x16 maps are upscaled to >= 24 px).
            assert int((grid[..., :3] == magenta).all(axis=-1).sum()) == 9 * 4
    assert [s for s, _ in events.images["heatmap/conv1/probe_0"]] == steps


# The user's hook raises ------------------------------------------------------------------------


def test_on_alert_exception_logged_once_with_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception in `on_alert` is logged once with its traceback; training goes on."""
    model = tiny_cnn()
    for name, dead in (("conv1", 2), ("conv2", 4)):  # force dead filters: 2 alerts at step 0
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        bias[:dead] = -100.0
        layer.set_weights([kernel, bias])
    calls: list[actwatch.Alert] = []

    def hook(alert: actwatch.Alert) -> None:
        calls.append(alert)
        raise RuntimeError(f"hook broke on {alert.layer}")

    monitor = actwatch.ActivationMonitor(data(2)[0], str(tmp_path), on_alert=hook)
    with caplog.at_level(logging.DEBUG, logger="actwatch"):
        history = _fit(model, [monitor])

    assert len(calls) >= 2
    assert len(history.history["loss"]) == 2
    (record,) = _actwatch_warnings(caplog, "on_alert raised")
    assert "RuntimeError: hook broke on conv1; training goes on" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)
    assert "Traceback (most recent call last)" in caplog.text
    later = [r for r in caplog.records if r.levelno == logging.DEBUG and "on_alert" in r.msg]
    assert len(later) == len(calls) - 1
    steps = [s for s, _ in read_events(tmp_path).scalars["network/dead_fraction"]]
    assert steps == [0, STEPS, 2 * STEPS]


# The log directory disappears ------------------------------------------------------------------


class _LogDirFault(keras.callbacks.Callback):
    """After the first epoch's check is on disk, delete `log_dir` (and maybe put a file there)."""

    def __init__(self, monitor: actwatch.ActivationMonitor, log_dir: Path, file: bool) -> None:
        super().__init__()
        self.monitor, self.log_dir, self.file = monitor, log_dir, file

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch == 0:
            # Wait for the background writer, so the fault hits an open events file.
            assert self.monitor.flush(timeout=60)
            shutil.rmtree(self.log_dir)
            if self.file:
                self.log_dir.write_text("not a directory any more")


@pytest.mark.parametrize("replace_with_file", [False, True], ids=["removed", "replaced-by-file"])
def test_log_dir_lost_mid_run_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, replace_with_file: bool
) -> None:
    """log_dir deleted (or made unwritable: a file in its place): one warning, training goes on."""
    log_dir = tmp_path / "run"
    monitor = actwatch.ActivationMonitor(data(2)[0], str(log_dir))
    fault = _LogDirFault(monitor, log_dir, replace_with_file)
    with caplog.at_level(logging.WARNING, logger="actwatch"):
        history = _fit(tiny_cnn(), [monitor, fault], epochs=3)

    assert len(history.history["loss"]) == 3
    assert len(history.history["actwatch_dead_fraction"]) == 3, "statistics still reach logs"
    (warning,) = _actwatch_warnings(caplog, "could not write to")
    assert "was deleted" in warning.getMessage()
    if replace_with_file:
        assert log_dir.read_text() == "not a directory any more"
        return
    # The directory is made again; later checks land in a new, complete events file.
    events = read_events(log_dir)
    assert [s for s, _ in events.scalars["network/zero_fraction"]] == [2 * STEPS, 3 * STEPS]
    assert [s for s, _ in events.images["filters/conv1/probe_0"]] == [2 * STEPS, 3 * STEPS]
    assert events.other.get("custom_scalars__config__") == "custom_scalars"


# Subprocesses: full disk, KeyboardInterrupt, SIGKILL -------------------------------------------

CHILD = """
import json, pathlib, resource, sys
import keras
import actwatch
from tests.helpers import data, tiny_cnn

mode, log_dir = sys.argv[1], sys.argv[2]
model = tiny_cnn()
x, y = data(32)
per_batch = mode != "full_disk"
monitor = actwatch.ActivationMonitor(x[:2], log_dir, every_n_batches=1 if per_batch else None)


class Fault(keras.callbacks.Callback):
    batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if mode == "interrupt" and self.batches == 5:
            raise KeyboardInterrupt
        if mode == "kill":
            print(self.batches, flush=True)

    def on_epoch_end(self, epoch, logs=None):
        if mode == "full_disk" and epoch == 0:
            assert monitor.flush(timeout=60)
            size = sum(p.stat().st_size for p in pathlib.Path(log_dir).glob("events.out.*"))
            # The disk is full 64 bytes further on: the next check's record cannot fit.
            resource.setrlimit(resource.RLIMIT_FSIZE, (size + 64, size + 64))


callbacks = [monitor] if mode == "full_disk" else [monitor, Fault()]
if mode == "full_disk":
    callbacks.append(Fault())
history = model.fit(x, y, epochs=1000 if mode == "kill" else 3, batch_size=4, verbose=0,
                    callbacks=callbacks)
print(json.dumps({"history": history.history, "errors": monitor.sink_stats.errors}))
"""


def _child(tmp_path: Path, mode: str) -> tuple[list[str], Path, Path]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    log_dir = tmp_path / "logs"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return [sys.executable, str(script), mode, str(log_dir)], log_dir, env  # type: ignore[return-value]


def _assert_clean(log_dir: Path) -> list[int]:
    """Every events file holds whole records with good CRCs; return the summary steps."""
    steps: list[int] = []
    for path in events_files(log_dir):
        records = read_records(path)
        assert records.trailing == 0, f"{path.name} ends in a partial record"
        steps.extend(records.steps)
    return steps


@pytest.mark.slow
def test_full_disk_warns_once_and_training_goes_on(tmp_path: Path) -> None:
    """A full disk (RLIMIT_FSIZE): one warning, logs still get figures, the file stays clean."""
    command, log_dir, env = _child(tmp_path, "full_disk")
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(result["history"]["actwatch_zero_fraction"]) == 3
    assert done.stderr.count("actwatch: could not write to") == 1
    assert "File too large" in done.stderr
    # The checks before the disk filled (before training, end of epoch 1) are intact, and the
    # update ratio of the step after the first (step 1); the next one's could not be written.
    assert _assert_clean(log_dir)[1:] == [0, 1, STEPS]  # [0] is the custom-scalars layout
    assert [s for s, _ in read_events(log_dir).scalars["network/zero_fraction"]] == [0, STEPS]


@pytest.mark.slow
def test_keyboard_interrupt_mid_epoch_keeps_every_check(tmp_path: Path) -> None:
    """Ctrl-C mid-epoch ends the process; every check made before it is written at exit."""
    command, log_dir, env = _child(tmp_path, "interrupt")
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    # Python ends a process on an uncaught KeyboardInterrupt as if killed by SIGINT.
    assert done.returncode == -signal.SIGINT and "KeyboardInterrupt" in done.stderr
    assert _assert_clean(log_dir)[1:] == [0, 1, 2, 3, 4, 5]
    steps = [s for s, _ in read_events(log_dir).scalars["network/zero_fraction"]]
    assert steps == [0, 1, 2, 3, 4, 5]


def test_keyboard_interrupt_then_fit_again(tmp_path: Path) -> None:
    """In a notebook: Ctrl-C mid-epoch, then fit again; no check is lost, steps go on."""

    class Interrupt(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if batch == 2:
                raise KeyboardInterrupt

    model = tiny_cnn()
    monitor = actwatch.ActivationMonitor(data(2)[0], str(tmp_path), every_n_batches=2)
    with pytest.raises(KeyboardInterrupt):
        _fit(model, [monitor, Interrupt()], epochs=1)
    _fit(model, [monitor], epochs=1)
    steps = [s for s, _ in read_events(tmp_path).scalars["network/zero_fraction"]]
    # Run 1: before training, batch 2, interrupted after batch 3. Run 2 (8 batches): its start
    # at step 3 (never checked), every 2nd batch, and its end at step 11.
    assert steps == [0, 2, 3, 4, 6, 8, 10, 11]
    # + 2 layouts, + the update ratios written on their own at the batch after a check (1, 5,
    # 7, 9; those of steps 4 and 11 go with that step's check).
    records = [0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert sorted(_assert_clean(tmp_path)) == records


@pytest.mark.slow
def test_sigkill_leaves_every_flushed_check_readable(tmp_path: Path) -> None:
    """SIGKILL after N checks are on disk: TensorBoard reads >= N-1 steps, no corrupt record."""
    n = 6
    command, log_dir, env = _child(tmp_path, "kill")
    stderr = (tmp_path / "stderr.txt").open("w")
    child = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True
    )
    watchdog = threading.Timer(240, child.kill)
    watchdog.start()
    try:
        assert child.stdout is not None
        for _ in child.stdout:  # one line per batch: look at the file after each
            files = events_files(log_dir)
            if files and len(read_records(files[0]).steps) - 1 >= n:
                os.kill(child.pid, signal.SIGKILL)
                break
        child.wait(timeout=60)
    finally:
        watchdog.cancel()
        stderr.close()
    assert child.returncode == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()[-3000:]
    steps = _assert_clean(log_dir)[1:]
    assert len(steps) >= n - 1 and steps == sorted(set(steps))
    read_back = [s for s, _ in read_events(log_dir).scalars["network/zero_fraction"]]
    assert read_back == steps
