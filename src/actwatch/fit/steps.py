"""The step of a check: the training batches run so far, counted on the host."""

from __future__ import annotations

from collections.abc import Callable

import keras

__all__ = ["StepCounter"]


class StepCounter:
    """Counts the batches one `fit()` runs, from where the model started.

    The start is set when the fit's first epoch begins (`begin`); batches are counted as
    their begin hook runs, without reading anything from the device (a begin hook, unlike an
    end hook, leaves Keras' asynchronous batch dispatch on). With batch checks the end hook
    runs too, and says exactly which batches ran (`batch_end`).

    Only begin hooks leave one case open: Keras' TensorFlow and JAX trainers call the begin
    hook, then fetch the batch, so an epoch of unknown length (a generator, or a `tf.data`
    pipeline of unknown cardinality, without `steps_per_epoch`) ends at a begin hook whose
    batch never came. At the epoch's end, such a hook is not counted unless the epoch was
    cut short by `stop_training` (the loop then stops after a batch's end; a callback before
    the monitor that stops training in its own epoch-end hook, as `EarlyStopping` does, looks
    the same, and that last epoch counts one batch more). PyTorch's trainer fetches first. The
    optimizer's counter cannot tell: TensorFlow's advances on that hook's empty step.

    A loop that calls no batch hook (a custom epoch loop) is counted at each epoch's end by
    how far the optimizer's counter moved, or else as a whole epoch.

    Args:
        per_execution: the model's `steps_per_execution` (a batch hook per that many batches).
        fetch_after_begin: the trainer fetches a batch after its begin hook. Defaults to
            Keras' trainers on the current backend: all but PyTorch's.
    """

    def __init__(self, per_execution: int = 1, *, fetch_after_begin: bool | None = None) -> None:
        self.per_execution = max(int(per_execution), 1)
        if fetch_after_begin is None:
            fetch_after_begin = keras.backend.backend() in ("tensorflow", "jax")
        self.fetch_after_begin = fetch_after_begin
        self.start: int | None = None  # the step before this fit's first batch
        self._start_iterations = 0
        self._ran = 0  # batches run before the current epoch
        self._in_epoch = 0  # batches run in the current epoch, if the last begun batch ran
        self._last_begin = 0  # the batches run in this epoch before the last begin hook's
        self._ended: int | None = None  # the batches of this epoch whose end hook ran
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
        self._in_epoch = self._last_begin = 0
        self._ended = None

    def batch_begin(self, batch: int, steps_per_epoch: int) -> None:
        """The begin hook of the execution starting at batch `batch` (0-based in the epoch):
        that execution is counted as run from now on."""
        self._counted = True
        self._last_begin = batch
        ran = batch + self.per_execution
        self._in_epoch = min(ran, steps_per_epoch) if steps_per_epoch else ran

    def batch_end(self, batch: int, steps_per_epoch: int) -> None:
        """The end hook of the execution ending at batch `batch`: the batches up to it ran."""
        ran = batch + 1
        self._ended = self._in_epoch = min(ran, steps_per_epoch) if steps_per_epoch else ran

    def epoch_end(
        self, iterations: Callable[[], int], steps_per_epoch: int, *, stopped: bool = False
    ) -> None:
        """Close the epoch; `iterations` reads the optimizer's counter (read only when no
        batch hook ran in this fit); `stopped`: `stop_training` is set (the loop broke after
        a batch's end)."""
        if not self._counted:
            moved = iterations() - self._start_iterations - self._ran
            self._in_epoch = moved if moved > 0 else steps_per_epoch
        elif self._ended is not None:
            self._in_epoch = self._ended
        elif not steps_per_epoch and self.fetch_after_begin and not stopped:
            self._in_epoch = self._last_begin  # the last begin hook's batch never came
        self._ran += self._in_epoch
        self._in_epoch = self._last_begin = 0
        self._ended = None
