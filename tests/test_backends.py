"""The backend in use, and no TensorFlow off the TensorFlow backend."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import pytest

from .conftest import BLOCK_ENV

BACKEND = keras.backend.backend()
OFF_TF = pytest.mark.skipif(BACKEND == "tensorflow", reason="only off the TensorFlow backend")


def test_backend_is_the_requested_one() -> None:
    """KERAS_BACKEND decides the backend of this run (make test runs all three)."""
    assert os.environ.get("KERAS_BACKEND", "tensorflow") == BACKEND


@OFF_TF
def test_tensorflow_is_blocked_in_this_run() -> None:
    """make test runs the JAX and PyTorch suites where `import tensorflow` fails."""
    if os.environ.get(BLOCK_ENV) != "1":
        pytest.skip(f"{BLOCK_ENV} is not set (make test sets it)")
    with pytest.raises(ImportError, match="halted"):
        import tensorflow  # noqa: F401
    assert sys.modules["tensorflow"] is None


@OFF_TF
def test_training_with_the_monitor_never_imports_tensorflow(tmp_path: Path) -> None:
    """With TensorFlow installed and importable, a monitored fit does not import it."""
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import keras
        import actwatch

        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
        model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(x)))
        model.compile("sgd", "mse")
        data = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype("float32")
        monitor = actwatch.ActivationMonitor(data[:2], {str(tmp_path)!r})
        model.fit(data, np.zeros((8, 1)), epochs=1, callbacks=[monitor], verbose=0)
        actwatch.plot_filters(model, data[:1])
        assert monitor.last_stats["conv"].filters == 4
        print("tensorflow imported:", "tensorflow" in sys.modules)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != BLOCK_ENV}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**env, "KERAS_BACKEND": BACKEND},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tensorflow imported: False" in done.stdout
    assert list(tmp_path.glob("events.out.tfevents.*"))
