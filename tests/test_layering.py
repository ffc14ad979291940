"""The read path imports no Keras and no backend: a laptop reads a cluster's logs with actwatch
alone (DESIGN.md). Proven in a fresh interpreter, not by review."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from actwatch.events import tags
from actwatch.events.sink import Sink

# Reading, rendering and serving: no Keras backend involved, so once per make test.
pytestmark = pytest.mark.read_path

FORBIDDEN = ("keras", "tensorflow", "jax", "torch")
READ_PATH = (
    "actwatch.report",
    "actwatch.report.figures",
    "actwatch.dashboard",
    "actwatch.dashboard.plugin",
    "actwatch.dashboard.events_index",
    "actwatch.events.reader",
    "actwatch.events.runs",
    "actwatch.events.tags",
    "actwatch.render.figures",
    "actwatch.render.html",
)


def _fresh(code: str, backend: str) -> subprocess.CompletedProcess[str]:
    """`code` run in a new interpreter with KERAS_BACKEND=`backend`, nothing blocked."""
    env = {k: v for k, v in os.environ.items() if k != "ACTWATCH_BLOCK_TENSORFLOW"}
    env["KERAS_BACKEND"] = backend
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )


_CHECK = f"""
import sys
loaded = sorted(m for m in {FORBIDDEN!r} if m in sys.modules)
assert not loaded, f"imported {{loaded}}"
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_importing_the_read_path_imports_no_keras(backend: str) -> None:
    """Importing the report, the tab and the reader loads none of keras, tensorflow, jax,
    torch, whatever KERAS_BACKEND says."""
    code = "".join(f"import {module}\n" for module in READ_PATH) + _CHECK
    done = _fresh(code, backend)
    assert done.returncode == 0, done.stderr[-3000:]


def test_reading_a_run_imports_no_keras(tmp_path: Path) -> None:
    """Reading a run for the report, indexing it for the tab, reading an image back and
    writing the report load none of them either."""
    sink = Sink(str(tmp_path / "logs" / "run"))
    for step in (0, 5):
        scalars = {tags.layer_tag(m, "conv"): (0.5, tags.describe(m, "conv")) for m in tags.METRICS}

        def render() -> dict[str, tuple[np.ndarray, str]]:
            return {tags.filters_tag("conv", 0): (np.zeros((8, 8, 3), np.uint8), "a grid")}

        sink.submit(step, scalars=scalars, render=render)
    sink.close()
    logs, out = tmp_path / "logs", tmp_path / "report.html"
    read = f"""
from actwatch.dashboard.events_index import LogdirIndex
from actwatch.events.runs import read_run
from actwatch.report import write_report
assert read_run({str(logs / "run")!r}).steps == [0, 5]
index = LogdirIndex({str(logs)!r})
index.refresh()
assert index.run("run").read_image("filters/conv/probe_0", 5).startswith(b"\\x89PNG")
write_report({str(logs)!r}, {str(out)!r}, progress=False)
"""
    code = read + _CHECK
    done = _fresh(code, "jax")
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.is_file()
