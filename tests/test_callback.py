"""ActivationMonitor end to end: real fit, event files read back with TensorBoard's reader."""

from __future__ import annotations

import csv
import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import keras
import numpy as np
import pytest
from keras.src.utils.python_utils import is_default
from PIL import Image

import actwatch
from actwatch.events import tags
from actwatch.render.tiles import MIN_TILE, grid_layout

from . import reference as ref
from .helpers import data, read_events, tiny_cnn

LAYERS = ["conv1", "pool1", "conv2", "pool2"]


def grid_size(h: int, w: int, f: int, gutter: int = 2) -> tuple[int, int]:
    rows, cols = grid_layout(f)
    s = max(1, -(-MIN_TILE // max(h, w)))
    return rows * (h * s + gutter) + gutter, cols * (w * s + gutter) + gutter


def dead_conv_model(k: int, filters: int = 8) -> keras.Model:
    """conv1 has `k` filters that can never fire (bias -100), frozen; the rest always fire."""
    model = tiny_cnn(filters=(filters, 4))
    conv = model.get_layer("conv1")
    kernel, bias = conv.get_weights()
    kernel = np.abs(kernel) + 0.01
    bias = np.zeros_like(bias)
    bias[:k] = -100.0
    conv.set_weights([kernel, bias])
    conv.trainable = False
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    return model


def test_exact_tags_images_and_steps(tmp_path: Path) -> None:
    """A fit writes exactly the documented tags, at steps 0 and every epoch end."""
    model = tiny_cnn()
    x, y = data()
    monitor = actwatch.ActivationMonitor(x[:2], tmp_path, stats_data=x[:32])
    model.fit(x, y, epochs=2, batch_size=16, callbacks=[monitor], verbose=0)

    events = read_events(tmp_path)
    metrics = list(tags.METRICS)
    assert set(events.scalars) == (
        {f"{m}/{layer}" for m in metrics for layer in LAYERS}
        | {f"network/{m}" for m in metrics}
        | {"network/learning_rate", "network/images_skipped"}
        | {f"{m}/{layer}" for m in tags.SIGNAL_METRICS for layer in LAYERS}
        | {"update_ratio/conv1", "update_ratio/conv2", "network/update_ratio"}
    )
    assert set(events.images) == {
        f"{kind}/{layer}/probe_{i}"
        for kind in ("filters", "heatmap")
        for layer in LAYERS
        for i in range(2)
    } | {f"distribution/{layer}" for layer in LAYERS}
    assert events.other == {
        "custom_scalars__config__": "custom_scalars",
        # TensorBoard's HParams tab: the experiment (the metrics it sorts by) and this run.
        "_hparams_/experiment": "hparams",
        "_hparams_/session_start_info": "hparams",
    } | {f"histogram/{layer}": "histograms" for layer in LAYERS}
    # No filter of this model is dead at any check, so no alert and no `alerts` text.
    assert {v for layer in LAYERS for _, v in events.scalars[f"dead_filters/{layer}"]} == {0.0}
    assert monitor.alerts == [] and events.texts == {}
    for tag, series in events.scalars.items():
        # The update ratio is of the training step after each check, the last one's not taken.
        expected_steps = [1, 5] if "update_ratio" in tag else [0, 4, 8]
        assert [step for step, _ in series] == expected_steps
    expected = {"conv1": (16, 16, 4), "pool1": (8, 8, 4), "conv2": (8, 8, 8), "pool2": (4, 4, 8)}
    for layer, (h, w, f) in expected.items():
        for i in range(2):
            image = events.images[f"filters/{layer}/probe_{i}"][-1][1]
            assert image.shape == (*grid_size(h, w, f), 3)
            assert events.images[f"heatmap/{layer}/probe_{i}"][-1][1].shape == (64, 64, 3)
    lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    assert events.scalars["network/learning_rate"][-1][1] == pytest.approx(lr)


def test_scalars_equal_numpy_reference(tmp_path: Path) -> None:
    """Every per-layer scalar of the last check equals a numpy computation on the outputs."""
    model = tiny_cnn()
    x, y = data()
    stats_data = x[:24]
    monitor = actwatch.ActivationMonitor(
        x[:2], tmp_path, stats_data=stats_data, dormant_threshold=0.5
    )
    model.fit(x, y, epochs=1, batch_size=16, callbacks=[monitor], verbose=0)
    events = read_events(tmp_path)
    probe_model = keras.Model(model.inputs, [model.get_layer(n).output for n in LAYERS])
    outputs = probe_model.predict(stats_data, verbose=0)
    layer_counts = {}
    for name, out in zip(LAYERS, outputs, strict=True):
        a = ref.to_npc(out)
        dead = ref.dead(a)
        expected = {
            "zero_fraction": ref.zero_fraction(a),
            "mean": ref.mean(a),
            "hoyer": ref.hoyer(a),
            "dead_filters": float(dead.sum()),
            "dead_fraction": dead.mean(),
            "dormant_fraction": ref.dormant(a, 0.5).mean(),
            "nonfinite": 0.0,
        }
        layer_counts[name] = a.shape[-1]
        for metric, value in expected.items():
            got = events.scalars[f"{metric}/{name}"][-1][1]
            assert got == pytest.approx(value, rel=1e-4, abs=1e-5), (name, metric)
        assert monitor.last_stats[name].dead.tolist() == dead.tolist()
    total = sum(layer_counts.values())
    dead_total = sum(monitor.last_stats[n].dead_count for n in LAYERS)
    assert events.scalars["network/dead_fraction"][-1][1] == pytest.approx(dead_total / total)


def test_k_dead_filters_give_exactly_one_alert(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """k frozen filters with a large negative bias: k dead filters, one alert, one text entry."""
    k = 3
    model = dead_conv_model(k)
    x, y = data()
    received: list[actwatch.Alert] = []
    monitor = actwatch.ActivationMonitor(
        x[:2], tmp_path, layers=["conv1", "pool1"], on_alert=received.append
    )
    with caplog.at_level(logging.WARNING, logger="actwatch"):
        model.fit(x, y, epochs=3, batch_size=16, callbacks=[monitor], verbose=0)

    assert len(received) == 1
    alert = received[0]
    assert (alert.kind, alert.layer, alert.filters, alert.count, alert.total) == (
        "dead",
        "conv1",
        (0, 1, 2),
        3,
        8,
    )
    assert alert.fraction == pytest.approx(3 / 8)
    assert alert.step == 0 and alert.epoch is None
    assert alert.learning_rate == pytest.approx(1e-3)
    warnings = [r for r in caplog.records if "are dead" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
    message = warnings[0].getMessage()
    for part in ("layer 'conv1'", "[0, 1, 2]", "3 of 8 filters dead (37.5%)", "initialization"):
        assert part in message
    events = read_events(tmp_path)
    assert [v for _, v in events.scalars["dead_filters/conv1"]] == [3.0] * 4
    assert [v for _, v in events.scalars["dead_filters/pool1"]] == [3.0] * 4
    assert len(events.texts["alerts"]) == 1
    assert "`conv1`" in events.texts["alerts"][0][1]
    # Dead filters are drawn as red crossed tiles: the first tile of the grid is red.
    grid = events.images["filters/conv1/probe_0"][0][1]
    assert tuple(grid[4, 12]) == actwatch.render.tiles.DEAD_RGB


def test_healthy_model_raises_no_alert(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A model trained at a sane learning rate is checked and written at every step, with no
    dead filter, no alert and nothing logged at WARNING (no failed check either)."""
    model = tiny_cnn(filters=(8, 8), lr=1e-3)
    x, y = data(n=96)
    monitor = actwatch.ActivationMonitor(x[:4], tmp_path, stats_data=x[:64])
    with caplog.at_level(logging.WARNING, logger="actwatch"):
        model.fit(x, y, epochs=2, batch_size=16, callbacks=[monitor], verbose=0)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("actwatch")] == []
    assert monitor.alerts == []
    assert sorted(monitor.last_stats) == sorted(LAYERS)
    events = read_events(tmp_path)
    expected = {f"{m}/{layer}" for m in tags.METRICS for layer in LAYERS} | {
        f"network/{m}" for m in [*tags.METRICS, "learning_rate"]
    }
    assert expected <= set(events.scalars)  # the exact set: test_exact_tags_images_and_steps
    for tag in expected:
        assert [step for step, _ in events.scalars[tag]] == [0, 6, 12]  # 6 batches an epoch
    for layer in LAYERS:
        assert [v for _, v in events.scalars[f"dead_filters/{layer}"]] == [0.0] * 3
    assert "alerts" not in events.texts


def test_logs_dict_reaches_history_and_csv_logger(tmp_path: Path) -> None:
    """Network figures go into `logs`, so History and CSVLogger placed after it see them."""
    model = tiny_cnn()
    x, y = data()
    csv_path = tmp_path / "log.csv"
    monitor = actwatch.ActivationMonitor(x[:2], tmp_path / "tb", log_per_layer=True)
    history = model.fit(
        x,
        y,
        epochs=2,
        batch_size=16,
        callbacks=[monitor, keras.callbacks.CSVLogger(str(csv_path))],
        verbose=0,
    )
    for key in ("zero_fraction", "dead_fraction", "dormant_fraction", "hoyer"):
        assert len(history.history[f"actwatch_{key}"]) == 2
    with open(csv_path) as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    assert float(rows[-1]["actwatch_dead_fraction/conv1"]) == pytest.approx(
        monitor.last_stats["conv1"].dead_fraction
    )


def test_stop_on_dead_fraction_stops_training(tmp_path: Path) -> None:
    """A layer past stop_on_dead_fraction stops training (Keras still runs one epoch)."""
    model = dead_conv_model(6)
    x, y = data()
    monitor = actwatch.ActivationMonitor(x[:2], tmp_path, layers="conv1", stop_on_dead_fraction=0.5)
    history = model.fit(x, y, epochs=5, batch_size=16, callbacks=[monitor], verbose=0)
    assert len(history.history["loss"]) == 1


def test_batch_checks_and_no_batch_hook_otherwise(tmp_path: Path) -> None:
    """every_n_batches checks every N batches; without it no batch hook is defined."""
    plain = actwatch.ActivationMonitor(np.zeros((1, 16, 16, 3)), tmp_path / "a")
    assert is_default(plain.on_train_batch_end)
    model = tiny_cnn()
    x, y = data()
    monitor = actwatch.ActivationMonitor(x[:1], tmp_path / "b", every_n_batches=3, images=False)
    assert not is_default(monitor.on_train_batch_end)
    model.fit(x, y, epochs=2, batch_size=16, callbacks=[monitor], verbose=0)
    events = read_events(tmp_path / "b")
    assert [s for s, _ in events.scalars["network/hoyer"]] == [0, 3, 6, 8]
    assert events.images == {}


def test_batch_checks_see_the_current_weights(tmp_path: Path) -> None:
    """Mid-epoch checks read this batch's weights (JAX keeps them outside the model)."""
    model = tiny_cnn(lr=0.05)
    x, y = data()
    monitor = actwatch.ActivationMonitor(x[:2], tmp_path, every_n_batches=1, images=False)
    model.fit(x, y, epochs=1, batch_size=16, callbacks=[monitor], verbose=0)
    series = read_events(tmp_path).scalars["mean/conv1"]
    assert [s for s, _ in series] == [0, 1, 2, 3, 4]
    means = [v for _, v in series]
    assert len(set(means)) == len(means), f"stale weights at a batch check: {means}"
    final = keras.Model(model.inputs, model.get_layer("conv1").output).predict(x[:2], verbose=0)
    assert means[-1] == pytest.approx(ref.mean(ref.to_npc(final)), rel=1e-4, abs=1e-6)


def test_image_file_probes_are_resized(tmp_path: Path) -> None:
    """Probes given as image files and PIL images are loaded, resized and preprocessed."""
    paths = []
    for i, colour in enumerate([(255, 0, 0), (0, 128, 255)]):
        path = tmp_path / f"p{i}.png"
        Image.new("RGB", (40, 30), colour).save(path)
        paths.append(str(path))
    seen: list[np.ndarray] = []

    def preprocess(batch: np.ndarray) -> np.ndarray:
        seen.append(batch)
        return batch / 255.0

    model = tiny_cnn()
    x, y = data()
    monitor = actwatch.ActivationMonitor(
        [*paths, Image.open(paths[0])], tmp_path / "tb", preprocess=preprocess
    )
    model.fit(x, y, epochs=1, batch_size=32, callbacks=[monitor], verbose=0)
    assert seen[0].shape == (3, 16, 16, 3) and seen[0].max() == 255.0
    events = read_events(tmp_path / "tb")
    heat = events.images["heatmap/conv1/probe_0"][0][1]
    assert heat.shape == (64, 64, 3)


def test_steps_continue_across_fit_calls(tmp_path: Path) -> None:
    """A reused monitor continues its steps; the state already checked is not checked again."""
    model = tiny_cnn()
    x, y = data()
    monitor = actwatch.ActivationMonitor(x[:1], tmp_path, images=False)
    model.fit(x, y, epochs=2, batch_size=16, callbacks=[monitor], verbose=0)
    model.fit(x, y, epochs=1, batch_size=16, callbacks=[monitor], verbose=0)
    steps = [s for s, _ in read_events(tmp_path).scalars["network/mean"]]
    assert steps == [0, 4, 8, 12]


def test_an_argument_set_between_fits_is_checked_and_takes_effect(tmp_path: Path) -> None:
    """Review of issue 19: `monitor.images = False` between two fits was ignored (the
    arguments live in a frozen Settings). Setting one checks it as the constructor does."""
    model = tiny_cnn()
    x, y = data()
    monitor = actwatch.ActivationMonitor(x[:1], tmp_path)
    model.fit(x, y, epochs=1, batch_size=32, callbacks=[monitor], verbose=0)
    assert len(read_events(tmp_path).images["filters/conv1/probe_0"]) == 2
    monitor.images = False
    monitor.every_n_epochs = None  # so that every_n_batches may be set
    monitor.every_n_batches = 1
    assert monitor.images is False and monitor.settings.images is False
    assert not is_default(monitor.on_train_batch_end)
    model.fit(x, y, epochs=1, batch_size=32, callbacks=[monitor], verbose=0)
    events = read_events(tmp_path)
    assert len(events.images["filters/conv1/probe_0"]) == 2  # none written by the second fit
    assert [s for s, _ in events.scalars["network/mean"]] == [0, 2, 3, 4]
    monitor.every_n_batches = None
    assert is_default(monitor.on_train_batch_end) and monitor.every_n_epochs == 1
    for name, value, error in [
        ("images", "no", TypeError),
        ("patience", 0, ValueError),
        ("every_n_epochs", 2, None),
        ("every_n_batches", 3, ValueError),  # both: refused, as the constructor does
    ]:
        if error is None:
            setattr(monitor, name, value)
            continue
        before = monitor.settings
        with pytest.raises(error) as raised:
            setattr(monitor, name, value)
        kwargs = {"every_n_epochs": 2} if name == "every_n_batches" else {}
        with pytest.raises(error) as constructed:
            actwatch.ActivationMonitor(x[:1], tmp_path / "other", **kwargs, **{name: value})
        assert str(raised.value) == str(constructed.value)
        assert monitor.settings is before  # a refused value changes nothing
    assert monitor.patience == 1 and monitor.images is False and monitor.every_n_epochs == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_real_tensorboard_server_serves_our_tags(tmp_path: Path) -> None:
    """A real `tensorboard` on 127.0.0.1 lists our scalar and image tags over HTTP."""
    model = tiny_cnn()
    x, y = data()
    run = tmp_path / "run1"
    monitor = actwatch.ActivationMonitor(x[:1], run)
    model.fit(x, y, epochs=1, batch_size=32, callbacks=[monitor], verbose=0)
    port = _free_port()
    tensorboard = Path(sys.executable).parent / "tensorboard"
    process = subprocess.Popen(
        [
            str(tensorboard),
            "--logdir",
            str(tmp_path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--load_fast=false",
            "--samples_per_plugin=images=1000",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        scalars: dict[str, dict[str, object]] = {}
        while time.monotonic() < deadline:
            try:
                scalars = _get_json(f"{base}/data/plugin/scalars/tags")  # type: ignore[assignment]
                if scalars.get("run1"):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert "dead_fraction/conv1" in scalars["run1"]
        images = _get_json(f"{base}/data/plugin/images/tags")
        assert "filters/conv1/probe_0" in images["run1"]  # type: ignore[index]
        series = _get_json(f"{base}/data/plugin/scalars/scalars?run=run1&tag=zero_fraction/conv1")
        assert [point[1] for point in series] == [0, 2]  # type: ignore[union-attr]
    finally:
        process.terminate()
        process.wait(timeout=30)
