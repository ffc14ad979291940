"""The step of a check: the training batches run so far, counted on the host."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["StepCounter"]


class StepCounter:
    """Counts the batches one `fit()` runs, from where the model started.

    The start is set when the fit's first epoch begins (`begin`); batches are counted as
    their begin hook runs, without reading anything from the device (a begin hook, unlike an
    end hook, leaves Keras' asynchronous batch dispatch on). A loop that calls no batch hook
    (a custom epoch loop) is counted at each epoch's end by how far the optimizer's counter
    moved, or else as a whole epoch.

    Args:
        per_execution: the model's `steps_per_execution` (a batch hook per that many batches).
    """

    def __init__(self, per_execution: int = 1) -> None:
        self.per_execution = max(int(per_execution), 1)
        self.start: int | None = None  # the step before this fit's first batch
        self._start_iterations = 0
        self._ran = 0  # batches run before the current epoch
        self._in_epoch = 0  # batches run in the current epoch
        self._counted = False  # the trainer calls the batch hooks

    @property
    def started(self) -> bool:
        return self.start is not None

    @property
    def current(self) -> int:
        """The step now: where the fit started plus the batches it ran so far."""
        assert self.start is not None
        return self.start + self._ran + self._in_epoch

    def begin(self, start: int, iterations: int) -> None:
        """The fit's first batch is about to run; the step before it is `start`, and the
        optimizer's counter reads `iterations`."""
        self.start = start
        self._start_iterations = iterations

    def epoch_begin(self) -> None:
        self._in_epoch = 0

    def batch_begin(self, batch: int, steps_per_epoch: int) -> None:
        self._counted = True
        ran = batch + self.per_execution
        self._in_epoch = min(ran, steps_per_epoch) if steps_per_epoch else ran

    def epoch_end(self, iterations: Callable[[], int], steps_per_epoch: int) -> None:
        """Close the epoch; `iterations` reads the optimizer's counter (read only when no
        batch hook ran in this fit)."""
        if not self._counted:
            moved = iterations() - self._start_iterations - self._ran
            self._in_epoch = moved if moved > 0 else steps_per_epoch
        self._ran += self._in_epoch
        self._in_epoch = 0
