"""The schedule: a check's step is the number of batches actually run, on every path."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

import actwatch

from .helpers import data, read_events, tiny_cnn

X, Y = data(40)  # batch size 4: 10 batches an epoch
STEPS = 10


def _dead_model(k: int = 6, filters: int = 8) -> keras.Model:
    """conv1 has `k` filters that never fire (bias -100), frozen; the others always fire."""
    model = tiny_cnn(filters=(filters, 4))
    conv = model.get_layer("conv1")
    kernel, bias = conv.get_weights()
    bias[:k] = -100.0
    conv.set_weights([np.abs(kernel) + 0.01, bias])
    conv.trainable = False
    model.compile(keras.optimizers.SGD(1e-3), "sparse_categorical_crossentropy")
    return model


def _steps(log_dir: Path) -> list[int]:
    return [s for s, _ in read_events(log_dir).scalars["network/zero_fraction"]]


def _iterations(model: keras.Model) -> int:
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


class _StopAfter(keras.callbacks.Callback):  # type: ignore[misc]
    """Sets `stop_training` after batch `batch` (0-based) of the first epoch."""

    def __init__(self, batch: int) -> None:
        super().__init__()
        self.batch = batch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if batch == self.batch:
            self.model.stop_training = True


def test_stop_mid_epoch_by_dead_fraction_checks_the_batch_it_stopped_at(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """stop_on_dead_fraction at batch 3 of 10: no check at a step that never ran; said once."""
    model = _dead_model()
    monitor = actwatch.ActivationMonitor(
        X[:2],
        str(tmp_path),
        every_n_batches=3,
        stop_on_dead_fraction=0.5,
        patience=2,  # confirmed at the second check (step 3), not before training
        images=False,
    )
    with caplog.at_level(logging.WARNING, logger="actwatch"):
        history = model.fit(X, Y, epochs=3, batch_size=4, verbose=0, callbacks=[monitor])
    assert _iterations(model) == 3 and len(history.history["loss"]) == 1
    assert _steps(tmp_path) == [0, 3]
    stops = [r for r in caplog.records if "stopping training" in r.getMessage()]
    assert len(stops) == 1


def test_stop_mid_epoch_by_another_callback_checks_the_batches_run(tmp_path: Path) -> None:
    """Epoch checks: another callback stops after 5 of 10 batches; the check is at step 5."""
    model = tiny_cnn()
    monitor = actwatch.ActivationMonitor(X[:2], str(tmp_path), images=False)
    model.fit(X, Y, epochs=3, batch_size=4, verbose=0, callbacks=[monitor, _StopAfter(4)])
    assert _iterations(model) == 5
    assert _steps(tmp_path) == [0, 5]


def test_stop_before_training_checks_after_the_one_batch_keras_runs(tmp_path: Path) -> None:
    """A stop decided before training: Keras runs one batch; the end check is at step 1."""
    model = _dead_model()
    monitor = actwatch.ActivationMonitor(
        X[:2], str(tmp_path), stop_on_dead_fraction=0.5, images=False
    )
    model.fit(X, Y, epochs=3, batch_size=4, verbose=0, callbacks=[monitor])
    assert _iterations(model) == 1
    assert _steps(tmp_path) == [0, 1]


def test_weights_only_resume_with_batch_checks(tmp_path: Path) -> None:
    """initial_epoch=2 with a fresh optimizer (iterations 0): batch checks go on from step 20."""
    trained = tiny_cnn()
    resumed = tiny_cnn()
    resumed.set_weights(trained.get_weights())
    monitor = actwatch.ActivationMonitor(X[:2], str(tmp_path), every_n_batches=4, images=False)
    resumed.fit(X, Y, epochs=3, batch_size=4, verbose=0, callbacks=[monitor], initial_epoch=2)
    assert _iterations(resumed) == STEPS
    # No check before the first batch of a resumed run; then every 4th step, and the end.
    assert _steps(tmp_path) == [24, 28, 30]


def test_reused_monitor_on_another_model_never_goes_back(tmp_path: Path) -> None:
    """One monitor, a second fresh model: its checks go on after the last step, not from 0."""
    monitor = actwatch.ActivationMonitor(X[:2], str(tmp_path), images=False)
    tiny_cnn().fit(X, Y, epochs=1, batch_size=4, verbose=0, callbacks=[monitor])
    tiny_cnn(seed=1).fit(X, Y, epochs=1, batch_size=4, verbose=0, callbacks=[monitor])
    # The second model's state before training is checked, right after the first's end.
    assert _steps(tmp_path) == [0, STEPS, STEPS + 1, 2 * STEPS + 1]


@pytest.mark.skipif(
    keras.backend.backend() == "torch", reason="PyTorch needs steps_per_execution=1"
)
def test_steps_per_execution_counts_batches(tmp_path: Path) -> None:
    """steps_per_execution=3 over 10 batches (a short last group): epoch checks at 10, 20."""
    model = tiny_cnn()
    model.compile(
        keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", steps_per_execution=3
    )
    monitor = actwatch.ActivationMonitor(X[:2], str(tmp_path), images=False)
    model.fit(X, Y, epochs=2, batch_size=4, verbose=0, callbacks=[monitor])
    assert _iterations(model) == 2 * STEPS
    assert _steps(tmp_path) == [0, STEPS, 2 * STEPS]


def test_batch_checks_with_steps_per_execution(tmp_path: Path) -> None:
    """every_n_batches=4 with steps_per_execution=3 (the hook sees steps 3, 6, 9, 10, ...):
    a check at the first step at or past each multiple of 4, not every 12 batches."""
    if keras.backend.backend() == "torch":
        pytest.skip("Keras refuses steps_per_execution > 1 on PyTorch")
    model = tiny_cnn()
    model.compile(
        keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", steps_per_execution=3
    )
    monitor = actwatch.ActivationMonitor(X[:2], str(tmp_path), images=False, every_n_batches=4)
    model.fit(X, Y, epochs=1, batch_size=4, verbose=0, callbacks=[monitor])
    assert _steps(tmp_path) == [0, 6, 9, 10]


def test_custom_loop_with_epoch_hooks_only(tmp_path: Path) -> None:
    """A loop that calls only the epoch hooks: steps follow the optimizer's counter."""
    model = tiny_cnn()
    monitor = actwatch.ActivationMonitor(X[:2], str(tmp_path), images=False)
    monitor.set_model(model)
    monitor.set_params({"epochs": 2, "verbose": 0})  # steps per epoch unknown
    monitor.on_train_begin()
    for epoch in range(2):
        monitor.on_epoch_begin(epoch)
        for i in range(0, 12, 4):  # 3 batches an epoch
            model.train_on_batch(X[i : i + 4], Y[i : i + 4])
        monitor.on_epoch_end(epoch, {})
    monitor.on_train_end()
    assert _steps(tmp_path) == [0, 3, 6]


def _generator(batches: int = 8) -> Any:
    """A finite generator of `batches` batches of 4: its length is not known to Keras."""
    return ((X[i : i + 4], Y[i : i + 4]) for i in range(0, 4 * batches, 4))


@pytest.mark.parametrize(("every", "expected"), [(3, [0, 3, 6, 8]), (None, [0, 8])])
def test_a_finite_generator_counts_the_batches_that_ran(
    tmp_path: Path, every: int | None, expected: list[int]
) -> None:
    """8 batches from a generator, no steps_per_epoch: Keras' TensorFlow and JAX trainers call
    the begin hook a 9th time before the data runs out (issue 19: checks at [0, 3, 6, 9] on
    JAX); PyTorch's does not. Every backend counts 8."""
    model = tiny_cnn()
    monitor = actwatch.ActivationMonitor(X[:2], str(tmp_path), images=False, every_n_batches=every)
    with pytest.warns(UserWarning, match="ran out of data"):
        model.fit(_generator(), epochs=1, shuffle=False, verbose=0, callbacks=[monitor])
    assert _steps(tmp_path) == expected


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.data: TensorFlow only")
@pytest.mark.filterwarnings("ignore:Your input ran out of data")
@pytest.mark.parametrize(("every", "expected"), [(3, [0, 3, 6, 9, 12, 15, 16]), (None, [0, 8, 16])])
def test_tf_data_of_unknown_cardinality_counts_the_batches_that_ran(
    tmp_path: Path, every: int | None, expected: list[int]
) -> None:
    """A `tf.data` pipeline of 8 batches whose cardinality is unknown (a filter), 2 epochs:
    batch checks every 3 batches, evenly (issue 19 spaced them 3, 3, 4, 2, 3, 3)."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((X[:32], Y[:32])).batch(4)
    dataset = dataset.filter(lambda x, y: True)
    assert int(dataset.cardinality()) == tf.data.UNKNOWN_CARDINALITY
    model = tiny_cnn()
    monitor = actwatch.ActivationMonitor(X[:2], str(tmp_path), images=False, every_n_batches=every)
    model.fit(dataset, epochs=2, shuffle=False, verbose=0, callbacks=[monitor])
    assert _steps(tmp_path) == expected


def test_the_counter_drops_a_begin_hook_whose_batch_never_came() -> None:
    """`StepCounter` alone, an epoch of unknown length: 3 begin hooks count 2 batches on a
    trainer that fetches after the hook, 3 when the loop broke on `stop_training` or the
    trainer fetches first; end hooks say exactly."""
    from actwatch.fit.steps import StepCounter

    def epoch(fetch_after_begin: bool, stopped: bool = False, ends: int = 0) -> int:
        counter = StepCounter(fetch_after_begin=fetch_after_begin)
        counter.begin(10, 10)
        counter.epoch_begin()
        for batch in range(3):
            counter.batch_begin(batch, 0)
            if batch < ends:
                counter.batch_end(batch, 0)
        counter.epoch_end(lambda: 99, 0, stopped=stopped)
        return counter.current

    assert epoch(True) == 12
    assert epoch(True, stopped=True) == 13
    assert epoch(False) == 13
    assert epoch(True, ends=2) == epoch(False, ends=2) == 12
