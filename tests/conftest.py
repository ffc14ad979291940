"""Test configuration.

With `ACTWATCH_BLOCK_TENSORFLOW=1` (set by `make test` for the JAX and PyTorch runs),
`import tensorflow` fails in the test process (`sys.modules["tensorflow"] = None`, Python's
own way to block an import; `importlib.util.find_spec` then reports it missing too), so those
runs prove that actwatch works without TensorFlow. TensorBoard's reader then uses its own
TensorFlow-free stub.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

import pytest

BLOCK_ENV = "ACTWATCH_BLOCK_TENSORFLOW"

# JAX's persistent compilation cache, fresh for each session (nothing carries over between
# runs): tests build the same small models again and again, and XLA compiles each anew. Keyed
# by the compiled program, the cache serves the repeats: the same executables, a third of the
# CPU time of the JAX run. Subprocesses inherit it. Set before JAX is imported.
if os.environ.get("KERAS_BACKEND") == "jax" and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="actwatch-jax-cache-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    # pytest-xdist's workers share it: a size limit turns on JAX's file lock around each
    # entry's write and read (filelock, a dependency of torch), so none reads a half-written one.
    os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(2**34)

if os.environ.get(BLOCK_ENV) == "1":
    if sys.modules.get("tensorflow") is not None:
        raise RuntimeError(f"{BLOCK_ENV}=1 but TensorFlow was imported before the tests")
    sys.modules["tensorflow"] = None  # type: ignore[assignment]

# Tests of what no Keras backend touches (reading event files, rendering, the tab, the report,
# storage) are marked `read_path`. `make test` runs the suite once per backend (PyTorch first,
# with TensorFlow blocked, proving the read path needs none) and sets
# ACTWATCH_READ_PATH=0 on every run but the first, so those tests run once; a plain `pytest`
# runs them all.
READ_PATH_ENV = "ACTWATCH_READ_PATH"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(READ_PATH_ENV, "1") != "0":
        return
    skip = pytest.mark.skip(reason="backend-independent (read path): runs in make test's first run")
    for item in items:
        if item.get_closest_marker("read_path") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seeded(request: pytest.FixtureRequest) -> None:
    """A test module with a `SEED` gets its `RNG` (numpy) and Keras' seed set anew before
    each test: its data and weights are then the same whichever tests ran before it in the
    process (pytest-xdist hands tests to workers in no fixed order)."""
    module = request.module
    seed = getattr(module, "SEED", None)
    if seed is None:
        return
    import keras
    import numpy as np

    module.RNG = np.random.default_rng(seed)
    keras.utils.set_random_seed(seed)
