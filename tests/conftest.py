"""Test configuration.

With `ACTWATCH_BLOCK_TENSORFLOW=1` (set by `make test` for the JAX and PyTorch runs),
`import tensorflow` fails in the test process (`sys.modules["tensorflow"] = None`, Python's
own way to block an import; `importlib.util.find_spec` then reports it missing too), so those
runs prove that actwatch works without TensorFlow. TensorBoard's reader then uses its own
TensorFlow-free stub.
"""

from __future__ import annotations

import os
import sys

BLOCK_ENV = "ACTWATCH_BLOCK_TENSORFLOW"

if os.environ.get(BLOCK_ENV) == "1":
    if sys.modules.get("tensorflow") is not None:
        raise RuntimeError(f"{BLOCK_ENV}=1 but TensorFlow was imported before the tests")
    sys.modules["tensorflow"] = None  # type: ignore[assignment]
