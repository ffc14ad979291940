"""The examples run as documented."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_runs_and_writes_events(tmp_path: Path) -> None:
    """examples/quickstart.py trains with the monitor and leaves an events file."""
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "quickstart.py"),
            "--epochs",
            "1",
            "--log-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tensorboard --logdir" in done.stdout
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1
