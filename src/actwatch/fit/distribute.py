"""Which process is the chief: it alone writes events and raises alerts."""

from __future__ import annotations

from typing import Any

import keras

__all__ = ["is_chief"]


def is_chief(model: Any) -> bool:
    """True on the process that should write summaries.

    TensorFlow: the strategy's own `should_save_summary` (False on non-chief workers of a
    `MultiWorkerMirroredStrategy`). JAX: process index 0. PyTorch: rank 0 when
    `torch.distributed` is initialized. Single-process training is always the chief.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        strategy = getattr(model, "distribute_strategy", None)
        extended = getattr(strategy, "extended", None)
        return bool(getattr(extended, "should_save_summary", True))
    if backend == "jax":
        import jax

        return bool(jax.process_index() == 0)
    if backend == "torch":
        import torch.distributed as dist

        return not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)
    return True
