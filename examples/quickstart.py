"""Quickstart: watch a small CNN's activations while it trains.

python examples/quickstart.py --epochs 5 --log-dir logs/quickstart
tensorboard --logdir logs    # then open the actwatch tab
"""

from __future__ import annotations

import argparse
import logging

import keras

import actwatch
from actwatch.demo import make_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--log-dir", default="logs/quickstart")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    x, y = make_dataset(1000, size=32, seed=0)
    x_val, _ = make_dataset(300, size=32, seed=1)

    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(name="pool1"),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(name="pool2"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(5, activation="softmax"),
        ]
    )
    model.compile(
        keras.optimizers.Adam(args.lr), "sparse_categorical_crossentropy", metrics=["accuracy"]
    )

    def on_alert(alert: actwatch.Alert) -> None:
        # Your hook: page someone, tag the run, lower the learning rate...
        print(f"hook: {alert.kind} in {alert.layer}: {alert.count}/{alert.total} filters")

    monitor = actwatch.ActivationMonitor(
        probes=x_val[:4],
        log_dir=args.log_dir,
        stats_data=x_val[4:260],
        on_alert=on_alert,
        stop_on_dead_fraction=0.9,
    )
    # Callbacks after the monitor see its figures in `logs`.
    early = keras.callbacks.EarlyStopping(monitor="actwatch_dead_fraction", patience=2, mode="min")
    model.fit(x, y, epochs=args.epochs, batch_size=32, callbacks=[monitor, early], verbose=2)
    print(f"Logs in {args.log_dir}: tensorboard --logdir {args.log_dir}")


if __name__ == "__main__":
    main()
