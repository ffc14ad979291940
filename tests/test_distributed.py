"""Distributed training: the chief alone writes, nobody deadlocks, statistics equal one device.

Each strategy runs in fresh processes (device setup must precede framework start-up), only
under the backend it belongs to.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import keras
import pytest

ROOT = Path(__file__).resolve().parent.parent
BACKEND = keras.backend.backend()


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _launch(mode: str, log_dir: Path, result: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.distributed_worker", mode, str(log_dir), str(result)],
        cwd=ROOT,
        # Without conftest's JAX compilation cache: collectives compile fresh in each worker.
        env={
            **{k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"},
            "KERAS_BACKEND": BACKEND,
            "CUDA_VISIBLE_DEVICES": "",
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process: subprocess.Popen[str], timeout: float = 240) -> None:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"worker timed out (deadlock?):\n{output[-4000:]}")
    assert process.returncode == 0, output[-4000:]


def _events(log_dir: Path) -> list[Path]:
    return sorted(log_dir.glob("events.out.tfevents.*"))


def _assert_equal_to_single_device(result_path: Path, replicas: int) -> None:
    result = json.loads(result_path.read_text())
    assert result["replicas"] == replicas
    assert result["failed"] is False
    assert all(result["dead_equal"].values())
    for layer, expected in result["single"].items():
        for metric, value in expected.items():
            assert result["monitor"][layer][metric] == pytest.approx(value, rel=1e-4, abs=1e-5)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute runs on the TensorFlow backend")
def test_tf_mirrored_strategy_two_cpus(tmp_path: Path) -> None:
    """MirroredStrategy over 2 logical CPUs: one events file, single-device statistics."""
    result = tmp_path / "result.json"
    process = _launch("mirrored", tmp_path / "logs", result, {})
    _finish(process)
    assert len(_events(tmp_path / "logs")) == 1
    _assert_equal_to_single_device(result, 2)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute runs on the TensorFlow backend")
def test_tf_multi_worker_mirrored_two_processes(tmp_path: Path) -> None:
    """MultiWorkerMirroredStrategy, 2 workers on 127.0.0.1: only the chief writes."""
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        processes.append(
            _launch(
                "multiworker",
                tmp_path / f"logs{index}",
                tmp_path / f"result{index}.json",
                {"TF_CONFIG": tf_config},
            )
        )
    for process in processes:
        _finish(process)
    assert len(_events(tmp_path / "logs0")) == 1
    assert _events(tmp_path / "logs1") == []
    for index in range(2):
        _assert_equal_to_single_device(tmp_path / f"result{index}.json", 2)


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on the JAX backend")
def test_jax_data_parallel_two_host_devices(tmp_path: Path) -> None:
    """keras.distribution.DataParallel over 2 host devices: single-device statistics."""
    result = tmp_path / "result.json"
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    process = _launch("jax", tmp_path / "logs", result, env)
    _finish(process)
    assert len(_events(tmp_path / "logs")) == 1
    _assert_equal_to_single_device(result, 2)


@pytest.mark.skipif(BACKEND != "torch", reason="torch.distributed runs on the PyTorch backend")
def test_torch_process_group_rank_zero_writes(tmp_path: Path) -> None:
    """Under torch.distributed (gloo, 2 ranks) only rank 0 writes events."""
    port = _free_ports(1)[0]
    processes = []
    for rank in range(2):
        env = {
            "RANK": str(rank),
            "WORLD_SIZE": "2",
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        processes.append(
            _launch("torch", tmp_path / f"logs{rank}", tmp_path / f"result{rank}.json", env)
        )
    for process in processes:
        _finish(process)
    assert len(_events(tmp_path / "logs0")) == 1
    assert _events(tmp_path / "logs1") == []
    for rank in range(2):
        _assert_equal_to_single_device(tmp_path / f"result{rank}.json", 2)


@pytest.mark.skipif(BACKEND != "jax", reason="jax.distributed runs on the JAX backend")
def test_jax_two_processes_data_parallel(tmp_path: Path) -> None:
    """2 JAX processes (`jax.distributed` on 127.0.0.1, CPU collectives over gloo), each
    feeding half of every batch to keras.distribution.DataParallel over both: process 0 alone
    writes events and raises alerts, both stop (`stop_on_dead_fraction`, half of conv1 dead),
    and the statistics are those of the whole `stats_data` on one device."""
    coordinator = f"127.0.0.1:{_free_ports(1)[0]}"
    processes = [
        _launch(
            "jax_multihost",
            tmp_path / f"logs{index}",
            tmp_path / f"result{index}.json",
            {"ACTWATCH_COORDINATOR": coordinator, "ACTWATCH_PROCESS_ID": str(index)},
        )
        for index in range(2)
    ]
    for process in processes:
        _finish(process, timeout=120)
    assert len(_events(tmp_path / "logs0")) == 1
    assert _events(tmp_path / "logs1") == []  # the other process writes nothing
    results = [json.loads((tmp_path / f"result{i}.json").read_text()) for i in range(2)]
    assert results[0]["stop_training"] is results[1]["stop_training"] is True  # 2 of 4 dead
    assert results[0]["alerts"] > 0 == results[1]["alerts"]
    for index in range(2):
        _assert_equal_to_single_device(tmp_path / f"result{index}.json", 2)


@pytest.mark.skipif(BACKEND != "jax", reason="keras.distribution runs on the JAX backend")
def test_jax_model_parallel_layout_map(tmp_path: Path) -> None:
    """keras.distribution.ModelParallel over 4 host devices, conv kernels and the Dense
    kernel sharded over the "model" axis by a LayoutMap: the monitor's statistics equal the
    unsharded model's."""
    result = tmp_path / "result.json"
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    _finish(_launch("model_parallel", tmp_path / "logs", result, env), timeout=120)
    assert len(_events(tmp_path / "logs")) == 1
    _assert_equal_to_single_device(result, 4)
    sharding = json.loads(result.read_text())["sharding"]
    assert any("'model'" in s for s in sharding), sharding  # the kernels were sharded
