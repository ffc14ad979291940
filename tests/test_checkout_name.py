"""The suite passes from a checkout folder named `actwatch`, what `git clone <url>` makes.

Such a folder puts a part named "actwatch" in the path of every file of the .venv inside it,
which once made a test take Keras' own warnings for actwatch's. The test below rebuilds that
layout around this run's virtual environment (a symlink: Python then finds its packages under
`<tmp>/actwatch/.venv`) and runs the tests that filter warnings by where they come from.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow",
    reason="once per make test, in the TensorFlow run (where Keras' warnings were taken)",
)
def test_warning_filters_hold_in_a_checkout_folder_named_actwatch(tmp_path: Path) -> None:
    """tests/test_nonfinite.py passes with Keras imported from `<tmp>/actwatch/.venv`."""
    if sys.prefix == sys.base_prefix:
        pytest.skip("not running in a virtual environment")
    checkout = tmp_path / "actwatch"
    checkout.mkdir()
    (checkout / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    shutil.copytree(ROOT / "tests", checkout / "tests", ignore=shutil.ignore_patterns("__py*"))
    shutil.copy(ROOT / "pyproject.toml", checkout / "pyproject.toml")
    python = checkout / ".venv" / "bin" / "python"
    where = subprocess.run(
        [python, "-c", "import keras; print(keras.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=checkout,
        env={**os.environ, "KERAS_BACKEND": "numpy"},
    ).stdout.strip()
    assert "actwatch" in Path(where).parts, f"the layout does not reproduce: keras at {where}"
    run = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_nonfinite.py"],
        capture_output=True,
        text=True,
        cwd=checkout,
        env=os.environ.copy(),
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
