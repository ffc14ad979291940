"""A second training into the same `log_dir` keeps the first: it goes to `<log_dir>-2`, said
once at WARNING; the same monitor's later fits, and training resumed past the last step
written, go on in `log_dir` (issue 19: two runs once showed as one, the first one lost)."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import pytest

import actwatch
from actwatch.events.reader import find_runs

from .helpers import data, read_events, tiny_cnn

X, Y = data(32)


def _fit(model: keras.Model, monitor: actwatch.ActivationMonitor, epochs: int = 1) -> None:
    model.fit(X, Y, epochs=epochs, batch_size=8, verbose=0, callbacks=[monitor])


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The warnings about where a run is written (lr 0.5 also raises learning-rate alerts)."""
    return [r.getMessage() for r in caplog.records if "log_dir" in r.getMessage()]


def test_a_second_training_goes_to_a_sibling_and_both_runs_are_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Monitor A fits twice (one run, steps go on); a new monitor B on another model at lr 0.5
    writes `run1-2`, says so once, and each run keeps its own learning rate."""
    run1 = tmp_path / "run1"
    first = actwatch.ActivationMonitor(X[:2], str(run1), images=False)
    model = tiny_cnn(lr=1e-3)
    with caplog.at_level(logging.WARNING, logger="actwatch"):
        _fit(model, first)
        _fit(model, first)
        assert _warnings(caplog) == [] and first.run_dir == str(run1)
        second = actwatch.ActivationMonitor(X[:2], str(run1), images=False)
        _fit(tiny_cnn(lr=0.5, seed=1), second)
    assert second.run_dir == f"{run1}-2"
    (warning,) = _warnings(caplog)
    assert f"this run is written to '{run1}-2' instead" in warning
    for name, rate in (("run1", 1e-3), ("run1-2", 0.5)):
        logged = read_events(tmp_path / name).scalars["network/learning_rate"]
        assert [v for _, v in logged] == pytest.approx([rate] * len(logged))
    assert [s for s, _ in read_events(run1).scalars["network/zero_fraction"]] == [0, 4, 8]
    assert [p.name for p in find_runs(tmp_path)] == ["run1", "run1-2"]
