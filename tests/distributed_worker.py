"""One process of a distributed training run, started by tests/test_distributed.py.

Usage: python -m tests.distributed_worker MODE LOG_DIR RESULT_JSON

MODE is `mirrored` (TF MirroredStrategy over 2 logical CPUs), `multiworker` (TF
MultiWorkerMirroredStrategy; TF_CONFIG set by the caller), `jax` (keras.distribution
DataParallel over 2 host devices; XLA_FLAGS set by the caller), `jax_multihost` (2 JAX
processes, `jax.distributed` on CPU with gloo collectives, DataParallel over both; the
coordinator's address and this process' id in ACTWATCH_COORDINATOR and ACTWATCH_PROCESS_ID;
each process feeds its half of every batch), `model_parallel` (keras.distribution
ModelParallel: a (batch 2, model 2) mesh of 4 host devices, the conv kernels' output channels
and the Dense kernel's input sharded over "model") or `torch` (a gloo process group; RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT set by the caller). The process trains a tiny CNN with
an ActivationMonitor, then recomputes the statistics on a fresh single-device copy of the final
weights, and writes both to RESULT_JSON.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np


def main(mode: str, log_dir: str, result_path: str) -> None:
    if (
        mode not in ("mirrored", "multiworker")
        and os.environ.get("ACTWATCH_BLOCK_TENSORFLOW") == "1"
    ):
        sys.modules["tensorflow"] = None  # type: ignore[assignment]  # as tests/conftest.py
    scope: AbstractContextManager[Any] = nullcontext()
    if mode in ("mirrored", "multiworker"):
        import tensorflow as tf

        if mode == "mirrored":
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * 2
            )
            strategy: Any = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        else:
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
        scope = strategy.scope()
        replicas = strategy.num_replicas_in_sync
    elif mode == "jax":
        import jax
        import keras

        devices = jax.devices()
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        replicas = len(devices)
    elif mode == "jax_multihost":
        import jax

        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=os.environ["ACTWATCH_COORDINATOR"],
            num_processes=2,
            process_id=int(os.environ["ACTWATCH_PROCESS_ID"]),
        )
        import keras

        devices = jax.devices()  # every process' devices: one CPU each
        # Each process feeds its own half of every batch (below): already sharded.
        parallel = keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False)
        keras.distribution.set_distribution(parallel)
        replicas = len(devices)
    elif mode == "model_parallel":
        import jax
        import keras

        mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], jax.devices())
        layouts = keras.distribution.LayoutMap(mesh)
        layouts["conv.*kernel"] = (None, None, None, "model")
        layouts["conv.*bias"] = ("model",)
        layouts["head.*kernel"] = ("model", None)
        keras.distribution.set_distribution(
            keras.distribution.ModelParallel(layout_map=layouts, batch_dim_name="batch")
        )
        replicas = len(jax.devices())
    elif mode == "torch":
        import torch.distributed as dist

        dist.init_process_group("gloo")
        replicas = dist.get_world_size()
    else:
        raise SystemExit(f"unknown mode {mode!r}")

    import keras

    import actwatch
    from tests.helpers import data, tiny_cnn

    x, y = data(n=64)
    stats_data = x[:32]
    with scope:
        model = tiny_cnn(filters=(4, 8))
    options: dict[str, Any] = {}
    if mode == "jax_multihost":
        # Half of conv1's filters never fire (bias -100): a stop that both processes must agree
        # on, and alerts that process 0 alone raises.
        conv = model.get_layer("conv1")
        kernel, bias = (np.asarray(w) for w in conv.get_weights())
        bias[:2] = -100.0
        conv.set_weights([kernel, bias])
        options = {"stop_on_dead_fraction": 0.25}
    monitor = actwatch.ActivationMonitor(x[:2], log_dir, stats_data=stats_data, **options)
    if mode == "multiworker":
        # Keras 3's fit() does not run under MultiWorkerMirroredStrategy
        # (keras-team/keras#20585), so drive the callback from a custom loop, as users do.
        _custom_loop(strategy, model, monitor, x, y)
    elif mode == "jax_multihost":
        # Each process feeds its own half of every global batch of 16 (8 + 8).
        import jax

        mine = np.arange(len(x)).reshape(-1, 2, 8)[:, jax.process_index()].reshape(-1)
        model.fit(x[mine], y[mine], epochs=2, batch_size=8, shuffle=False, callbacks=[monitor],
                  verbose=0)  # fmt: skip
    else:
        model.fit(x, y, epochs=2, batch_size=16, shuffle=False, callbacks=[monitor], verbose=0)
    sharding = [str(getattr(w.value, "sharding", "")) for w in model.weights]
    if mode.startswith("jax") or mode == "model_parallel":
        keras.distribution.set_distribution(None)
    single = tiny_cnn(filters=(4, 8))
    single.set_weights([np.asarray(w) for w in model.get_weights()])
    reference = actwatch.activation_stats(single, stats_data)
    result = {
        "replicas": replicas,
        "sharding": sharding,
        "stop_training": bool(model.stop_training),
        "alerts": len(monitor.alerts),
        "failed": monitor._check_failed.count > 0,
        "monitor": {k: s.scalars() for k, s in monitor.last_stats.items()},
        "single": {k: s.scalars() for k, s in reference.items()},
        "dead_equal": {
            k: monitor.last_stats[k].dead.tolist() == reference[k].dead.tolist() for k in reference
        },
    }
    with open(result_path, "w") as handle:
        json.dump(result, handle)
    if mode == "torch":
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def _custom_loop(strategy: Any, model: Any, monitor: Any, x: np.ndarray, y: np.ndarray) -> None:
    import keras
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).with_options(options)
    batches = strategy.experimental_distribute_dataset(dataset)

    @tf.function
    def train_step(batch: Any) -> None:
        def step(xb: Any, yb: Any) -> None:
            with tf.GradientTape() as tape:
                loss = keras.losses.sparse_categorical_crossentropy(yb, model(xb, training=True))
                loss = tf.reduce_sum(loss) / 16.0
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))

        strategy.run(step, args=batch)

    monitor.set_model(model)
    monitor.set_params({"epochs": 2, "steps": 4, "verbose": 0})
    monitor.on_train_begin()
    for epoch in range(2):
        monitor.on_epoch_begin(epoch)
        for batch in batches:
            train_step(batch)
        monitor.on_epoch_end(epoch, {})
    monitor.on_train_end()


if __name__ == "__main__":
    main(*sys.argv[1:4])
