"""Long runs: 500 checks on a tiny model. Memory stays flat, the events file grows linearly,
and a real TensorBoard server serves every step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

import actwatch

from .helpers import data, read_events, tiny_cnn
from .records import events_files, read_records

pytestmark = pytest.mark.slow

CHECKS = 500
#: Measured bytes one check adds to the events file: 17 scalars and 4 PNGs (filter grids of
#: conv1 and conv2, and their 64x64 RGB heatmaps over the noise probe) for 1 probe of the
#: 16x16 tiny model: 20.75 kB (TensorFlow). The test allows a band around it, as PNG sizes
#: follow the activations (other backends start from other weights); the first check also
#: carries each tag's metadata.
BYTES_PER_CHECK = 20_750
MAX_RSS_GROWTH = 20 * 2**20


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Memory(keras.callbacks.Callback):
    """Waits for each check to be written; resident memory after a warm-up of 50 checks.

    Waiting keeps the run deterministic on a busy machine: a lagging writer would otherwise
    skip images (by design), and the sizes and served steps would depend on the load.
    """

    def __init__(self, monitor: actwatch.ActivationMonitor) -> None:
        super().__init__()
        self.monitor = monitor
        self.warm = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        assert self.monitor.flush(timeout=60)
        if batch == 50:
            self.warm = _rss()


@dataclass(frozen=True)
class LongRun:
    log_dir: Path
    rss_warm: int
    rss_end: int
    history: dict[str, list[float]]


@pytest.fixture(scope="module")
def long_run(tmp_path_factory: pytest.TempPathFactory) -> LongRun:
    log_dir = tmp_path_factory.mktemp("long_run")
    x, y = data(CHECKS)
    model = tiny_cnn(lr=1e-5)  # activations, and so PNG sizes, stay put
    monitor = actwatch.ActivationMonitor(
        x[:1], str(log_dir), layers=["conv1", "conv2"], every_n_batches=1
    )
    memory = _Memory(monitor)
    history = model.fit(x, y, epochs=1, batch_size=1, verbose=0, callbacks=[monitor, memory])
    return LongRun(log_dir, memory.warm, _rss(), history.history)


def test_memory_stays_flat(long_run: LongRun) -> None:
    """Resident memory grows by at most 20 MB from check 50 to check 500 (writer drained)."""
    growth = long_run.rss_end - long_run.rss_warm
    print(f"RSS growth over {CHECKS - 50} checks: {growth / 2**20:.1f} MB")
    assert long_run.rss_warm > 0
    assert growth <= MAX_RSS_GROWTH, f"RSS grew by {growth / 2**20:.1f} MB over {CHECKS} checks"


def test_events_file_grows_linearly(long_run: LongRun) -> None:
    """Every check adds about BYTES_PER_CHECK bytes; late checks cost what early ones did."""
    (path,) = events_files(long_run.log_dir)
    records = read_records(path)
    assert records.trailing == 0
    checks = [e for e in records.events if e.HasField("summary")][1:]  # the layout first
    assert [e.step for e in checks] == list(range(CHECKS + 1))
    sizes = np.array([e.ByteSize() + 16 for e in checks[1:]])  # + framing; [0] has metadata
    early, late = sizes[:100].mean(), sizes[-100:].mean()
    assert late == pytest.approx(early, rel=0.15), "a check's cost must not grow with the run"
    per_check = (path.stat().st_size - sum(e.ByteSize() + 16 for e in records.events[:3])) / (
        len(checks) - 1
    )
    print(f"bytes per check: {per_check:.0f}; early {early:.0f}, late {late:.0f}")
    assert 0.5 * BYTES_PER_CHECK <= per_check <= 1.5 * BYTES_PER_CHECK, per_check
    # Scalars are never dropped; images of a lagging writer may be (and that is said once).
    events = read_events(long_run.log_dir)
    assert [s for s, _ in events.scalars["network/hoyer"]] == list(range(CHECKS + 1))
    assert len(long_run.history["actwatch_hoyer"]) == 1


def _get(base: str, path: str, **query: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(url, timeout=60) as response:
        body = response.read()
    return body if path.endswith("individualImage") else json.loads(body)


@pytest.fixture
def tensorboard(long_run: LongRun) -> Iterator[str]:
    """A real `tensorboard` server on 127.0.0.1 (a free port), its data loaded; stopped after."""
    command = [
        sys.executable, "-m", "tensorboard.main",
        "--logdir", str(long_run.log_dir),
        "--samples_per_plugin=images=1000",
        "--host", "127.0.0.1", "--port", "0",
        "--load_fast=false", "--reload_interval=0", "--reload_task=blocking",
    ]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stderr is not None
        seen = []
        for line in server.stderr:  # the URL is printed once the data is loaded
            seen.append(line)
            if " at http://127.0.0.1:" in line:
                url = line.split(" at ", 1)[1].split()[0].rstrip("/")
                break
        else:
            pytest.fail("tensorboard exited without serving:\n" + "".join(seen[-20:]))
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        if server.stderr is not None:
            server.stderr.close()


def test_tensorboard_serves_every_step(long_run: LongRun, tensorboard: str) -> None:
    """With --samples_per_plugin=images=1000, TensorBoard serves every check's scalars and
    every written image over HTTP (not the default 10-image reservoir)."""
    written = read_events(long_run.log_dir)
    scalars = _get(tensorboard, "/data/plugin/scalars/scalars", run=".", tag="network/hoyer")
    assert [int(step) for _, step, _ in scalars] == list(range(CHECKS + 1))
    for tag in ("filters/conv1/probe_0", "heatmap/conv2/probe_0"):
        images = _get(tensorboard, "/data/plugin/images/images", run=".", tag=tag, sample="0")
        served = [entry["step"] for entry in images]
        assert served == [s for s, _ in written.images[tag]]
        assert len(served) > 100
    query = dict(urllib.parse.parse_qsl(images[-1]["query"]))  # "blob_key=..."
    last = _get(tensorboard, "/data/plugin/images/individualImage", **query)
    assert last.startswith(b"\x89PNG")
