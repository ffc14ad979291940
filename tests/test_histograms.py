"""Activation histograms read back over HTTP by TensorBoard's own histogram plugin."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import actwatch
from actwatch.check.signals import HISTOGRAM_SAMPLE
from actwatch.events.histograms import HISTOGRAM_EDGES
from actwatch.notebook import get_activations

from . import reference as ref
from .helpers import data, tiny_cnn
from .tensorboard_server import tensorboard_server


@pytest.mark.slow
def test_tensorboard_histogram_plugin_serves_our_histograms(tmp_path: Path) -> None:
    """A real `tensorboard` lists `histogram/{layer}` in its Histograms and Distributions
    tabs, and the buckets it serves for the last check equal numpy.histogram of the layer's
    activations on the statistics data over actwatch's fixed edges."""
    model = tiny_cnn()
    x, y = data()
    run = tmp_path / "run1"
    monitor = actwatch.ActivationMonitor(x[:1], run, stats_data=x[:24], images=False)
    model.fit(x, y, epochs=1, batch_size=32, callbacks=[monitor], verbose=0)
    outputs = get_activations(model, x[:24], ["conv1", "pool2"])
    with tensorboard_server(tmp_path, tmp_path / "tensorboard.log", load_fast="false") as server:
        base = "/data/plugin"
        deadline = time.monotonic() + 120
        listed: dict[str, dict[str, object]] = {}
        while time.monotonic() < deadline:
            try:
                listed = server.json(f"{base}/histograms/tags")
                if "histogram/pool2" in listed.get("run1", {}):
                    break
            except (OSError, AssertionError):
                pass
            time.sleep(0.5)
        assert {"histogram/conv1", "histogram/pool2"} <= set(listed["run1"])
        distributions = server.json(f"{base}/distributions/tags")
        assert "histogram/conv1" in distributions["run1"]  # type: ignore[index]
        edges = HISTOGRAM_EDGES.astype(np.float64)
        for layer in ("conv1", "pool2"):
            series = server.json(
                f"{base}/histograms/histograms", run="run1", tag=f"histogram/{layer}"
            )
            assert [point[1] for point in series] == [0, 2]  # type: ignore[union-attr]
            buckets = np.asarray(series[-1][2], dtype=np.float64)  # type: ignore[index]
            expected = ref.histogram(
                ref.sampled(ref.to_npc(outputs[layer]), HISTOGRAM_SAMPLE), HISTOGRAM_EDGES
            )
            used = np.flatnonzero(expected)
            lo, hi = used[0], used[-1]
            np.testing.assert_array_equal(buckets[:, 2], expected[lo : hi + 1])
            np.testing.assert_array_equal(buckets[:, 0], edges[lo : hi + 1])
            np.testing.assert_array_equal(buckets[:, 1], edges[lo + 1 : hi + 2])
