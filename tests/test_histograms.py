"""Activation histograms read back over HTTP by TensorBoard's own histogram plugin."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

import actwatch
from actwatch.notebook import get_activations
from actwatch.signals import HISTOGRAM_EDGES, HISTOGRAM_SAMPLE

from . import reference as ref
from .helpers import data, tiny_cnn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


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
    port = _free_port()
    tensorboard = Path(sys.executable).parent / "tensorboard"
    process = subprocess.Popen(
        [
            str(tensorboard),
            "--logdir",
            str(tmp_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--load_fast=false",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    try:
        base = f"http://127.0.0.1:{port}/data/plugin"
        deadline = time.monotonic() + 120
        listed: dict[str, dict[str, object]] = {}
        while time.monotonic() < deadline:
            try:
                listed = _get_json(f"{base}/histograms/tags")  # type: ignore[assignment]
                if "histogram/pool2" in listed.get("run1", {}):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert {"histogram/conv1", "histogram/pool2"} <= set(listed["run1"])
        distributions = _get_json(f"{base}/distributions/tags")
        assert "histogram/conv1" in distributions["run1"]  # type: ignore[index]
        edges = HISTOGRAM_EDGES.astype(np.float64)
        for layer in ("conv1", "pool2"):
            query = urllib.parse.urlencode({"run": "run1", "tag": f"histogram/{layer}"})
            series = _get_json(f"{base}/histograms/histograms?{query}")
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
    finally:
        process.terminate()
        process.wait(timeout=30)
