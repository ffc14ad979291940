"""TensorBoard's HParams data, written without TensorFlow: read back by a real TensorBoard's
hparams plugin over HTTP, runs sorted by the final actwatch figures."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

import actwatch
from actwatch.events import hparams, tags
from actwatch.events.runs import read_run

from .fit_logs import dying_cnn
from .helpers import data
from .tensorboard_server import Server, tensorboard_server

JAX_ONLY = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="what is written does not depend on the backend: tested once, on JAX",
)


def _post(server: Server, route: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        f"{server.url}/data/plugin/hparams/{route}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=60) as response:
        assert response.status == 200
        return json.loads(response.read())


def _fit(log_dir: Path, *, dead: int, optimizer: Any, **monitor: Any) -> None:
    x, y = data(32)
    model = dying_cnn(dead)
    model.compile(optimizer, "sparse_categorical_crossentropy")
    callback = actwatch.ActivationMonitor(
        x[:2], str(log_dir), stats_data=x[:16], images=False, histograms=False, **monitor
    )
    model.fit(x, y, batch_size=16, epochs=1, callbacks=[callback], verbose=0)


@JAX_ONLY
def test_hparams_tab_sorts_runs_by_final_dead_fraction(tmp_path: Path) -> None:
    """Three runs: the plugin lists optimizer, learning rate, batch size, epochs, model,
    parameters and the user's hparams, and sorts the runs by network/dead_fraction."""
    logdir = tmp_path / "sweep"
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, 10, 0.5)
    _fit(logdir / "a", dead=0, optimizer=keras.optimizers.Adam(1e-3), hparams={"dropout": 0.0})
    _fit(logdir / "b", dead=3, optimizer=keras.optimizers.SGD(schedule), hparams={"dropout": 0.5})
    _fit(logdir / "c", dead=2, optimizer=keras.optimizers.Adam(3e-3), hparams={"dropout": 0.25})
    with tensorboard_server(logdir, tmp_path / "tb.log", load_fast="false") as server:
        experiment = _post(server, "experiment", {"experimentName": ""})
        columns = {info["name"]: info for info in experiment["hparamInfos"]}
        assert set(columns) >= {
            "optimizer",
            "learning_rate",
            "lr_schedule",
            "batch_size",
            "epochs",
            "model",
            "parameters",
            "dropout",
        }
        assert columns["learning_rate"]["type"] == "DATA_TYPE_FLOAT64"
        assert columns["optimizer"]["type"] == "DATA_TYPE_STRING"
        metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
        assert metrics == [tag for tag, _ in hparams.METRICS]
        request = {
            "experimentName": "",
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE"],
            "colParams": [
                {"metric": {"tag": tags.network_tag("dead_fraction")}, "order": "ORDER_DESC"}
            ],
            "startIndex": 0,
            "sliceSize": 10,
        }
        groups = _post(server, "session_groups", request)["sessionGroups"]
    assert len(groups) == 3
    runs = [g["sessions"][0]["name"] for g in groups]
    final = {r: read_run(logdir / r).last(tags.network_tag("dead_fraction")) for r in "abc"}
    dead = [g["metricValues"][0]["value"] for g in groups]
    assert dead == pytest.approx([final[r] for r in runs])  # the last value of each run
    assert dead == sorted(dead, reverse=True) and dead[0] > 0.0 and runs[-1] == "a"
    by_run = {g["sessions"][0]["name"]: g["hparams"] for g in groups}
    assert by_run["b"]["optimizer"] == "SGD"
    assert by_run["b"]["lr_schedule"] == "ExponentialDecay"
    assert by_run["b"]["learning_rate"] == pytest.approx(0.05)
    assert by_run["a"]["learning_rate"] == pytest.approx(1e-3)
    assert by_run["a"]["lr_schedule"] == "constant"
    assert by_run["a"]["batch_size"] == 16 and by_run["a"]["epochs"] == 1
    assert by_run["a"]["model"] == "tiny" and by_run["a"]["parameters"] > 100
    assert by_run["c"]["dropout"] == 0.25


def test_hparams_rejected_before_training(tmp_path: Path) -> None:
    """A wrong `hparams` is a TypeError in the constructor, naming what was received."""
    x = np.zeros((2, 16, 16, 3), "float32")
    with pytest.raises(TypeError, match=r"Expected a dict .* Received: hparams=\[1\]"):
        actwatch.ActivationMonitor(x, str(tmp_path), hparams=[1])
    with pytest.raises(TypeError, match=r"hparams\['layers'\] must be a bool.*Received: \[1, 2\]"):
        actwatch.ActivationMonitor(x, str(tmp_path), hparams={"layers": [1, 2]})
    with pytest.raises(TypeError, match="non-empty str"):
        actwatch.ActivationMonitor(x, str(tmp_path), hparams={3: 1})
    with pytest.raises(TypeError, match="finite float"):
        actwatch.ActivationMonitor(x, str(tmp_path), hparams={"x": float("nan")})
    checked = hparams.check_hparams({"a": np.float32(0.5), "b": np.int64(3), "c": True})
    assert checked == {"a": 0.5, "b": 3, "c": True}
    assert type(checked["b"]) is int
