"""A real `model.fit` writing to object storage (issue 21), on every backend, TensorFlow not
needed off its backend: moto's S3 server and the GCS emulator on 127.0.0.1, read back with
TensorBoard's own event reader; an unreachable store fails before the first batch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import keras
import pytest

import actwatch
from actwatch.events import tags

from .helpers import data, tiny_cnn
from .storage_servers import FAST, S3, free_port, gcs_server, s3_server


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with s3_server() as server:
        yield server


def _fit(log_dir: str, **monitor: Any) -> tuple[actwatch.ActivationMonitor, list[int]]:
    """Two epochs of one batch of a tiny CNN with a monitor writing to `log_dir` (no
    pictures: the storage is what is tested); the batches run."""
    x, y = data(16)
    batches: list[int] = []
    count = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: batches.append(b))
    monitor_ = actwatch.ActivationMonitor(x[:2], log_dir, images=False, **monitor)
    tiny_cnn().fit(x, y, batch_size=16, epochs=2, callbacks=[monitor_, count], verbose=0)
    return monitor_, batches


def _steps(local_run: Path) -> list[int]:
    """Steps of `zero_fraction/conv1` read by TensorBoard's EventAccumulator."""
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(str(local_run))
    accumulator.Reload()
    return [t.step for t in accumulator.Tensors(tags.layer_tag("zero_fraction", "conv1"))]


def test_a_fit_writes_to_s3(s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """log_dir='s3://...': the bucket gets the run (no local `s3:` folder, no claim left)."""
    monkeypatch.chdir(tmp_path)
    url = f"s3://bucket/fit-{keras.backend.backend()}/run1"
    monitor, batches = _fit(url, storage_options=s3.options, upload_interval=5)
    assert monitor.run_dir == url and batches
    assert list(tmp_path.iterdir()) == []
    fs = fsspec.filesystem("s3", **s3.options)
    local = tmp_path / "copy"
    fs.get(url.removeprefix("s3://") + "/", str(local), recursive=True)
    assert {p.name.startswith("events.out.") for p in local.iterdir()} == {True}
    assert _steps(local) == [0, 1, 2]


def test_a_fit_writes_to_gcs(tmp_path: Path) -> None:
    """log_dir='gs://...' on the GCS emulator (append is an overwrite there): every check."""
    if keras.backend.backend() != "jax":
        pytest.skip("the GCS path is the same on every backend: run once, under JAX")
    with gcs_server() as options:
        _fit("gs://gbucket/fit/run1", storage_options=options)
        fs = fsspec.filesystem("gs", **options)
        fs.get("gbucket/fit/run1/", str(tmp_path / "copy"), recursive=True)
    assert _steps(tmp_path / "copy") == [0, 1, 2]


def test_an_unreachable_store_fails_before_the_first_batch(s3: S3) -> None:
    """No endpoint: a ValueError from on_train_begin, not one batch trained."""
    closed = {**s3.options, **FAST, "endpoint_url": f"http://127.0.0.1:{free_port()}"}
    batches: list[int] = []
    with pytest.raises(ValueError, match=r"cannot be written .*credentials are set"):
        _, batches = _fit("s3://bucket/down/run1", storage_options=closed)
    assert batches == []


def test_storage_arguments_are_checked_in_the_constructor() -> None:
    """Wrong `storage_options` / `upload_interval` / protocol: errors before training."""
    x, _ = data(2)
    with pytest.raises(TypeError, match=r"Expected None or a dict of fsspec arguments"):
        actwatch.ActivationMonitor(x, "memory://b/run", storage_options="http://x")
    with pytest.raises(ValueError, match=r"Received: upload_interval=0"):
        actwatch.ActivationMonitor(x, "memory://b/run", upload_interval=0)
    with pytest.raises(ValueError, match=r"'nosuch', which fsspec does not know"):
        actwatch.ActivationMonitor(x, "nosuch://b/run")
