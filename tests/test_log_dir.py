"""`claim_log_dir`: a new run never lands in a directory holding another run; it is said where
it goes instead (issue 19: two fits into one log_dir showed as one run, the first one lost)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from tensorboard.compat.proto import event_pb2
from tensorboard.util import tensor_util

from actwatch.events.log_dir import (
    CLAIM_FILE,
    CLAIM_STALE_SECONDS,
    claim_log_dir,
    last_step,
    release_claim,
)
from actwatch.events.records import EVENT_FILE_PREFIX, read_records
from actwatch.events.sink import Sink

HOST = socket.gethostname()


def _claim_at_once(code: str, run: str, processes: int) -> list[str]:
    """Start `processes` Pythons running `code` (which prints "ready", waits for a line, then
    prints the directory it claimed for `run` and stays alive until stdin closes), let them
    all claim at (nearly) the same instant, and return what each claimed."""
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", code, run],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    pipes = [(w.stdin, w.stdout) for w in workers]
    for _, out in pipes:
        assert out is not None and out.readline() == "ready\n"
    for into, _ in pipes:
        assert into is not None
        into.write("go\n")
        into.flush()
    got = [out.readline().strip() for _, out in pipes if out is not None]
    for worker in workers:
        worker.communicate("")
    return got


def _write_run(log_dir: str, value: float) -> None:
    """One check written by a real Sink, as a monitor's run writes it."""
    sink = Sink(log_dir, priority="normal")
    sink.submit(1, scalars={"network/learning_rate": (value, "the learning rate")})
    sink.close()


def _events(log_dir: str | Path) -> list[Path]:
    return sorted(p for p in Path(log_dir).iterdir() if p.name.startswith(EVENT_FILE_PREFIX))


def _learning_rates(path: Path) -> list[float]:
    """The values of the scalar `network/learning_rate` in the events file `path`."""
    values = []
    for record in read_records(path):
        for value in event_pb2.Event.FromString(record.payload).summary.value:
            if value.tag == "network/learning_rate":
                values.append(float(tensor_util.make_ndarray(value.tensor)))
    return values


def _claim_text(log_dir: str | Path) -> str:
    """The claim's "<host> <pid>", its time checked (within a minute of now) and cut off."""
    host, pid, made = (Path(log_dir) / CLAIM_FILE).read_text(encoding="utf-8").split()
    assert abs(float(made) - time.time()) < 60
    return f"{host} {pid}\n"


class _SlowJob:
    """What a `Sink`'s writer thread takes next: it waits at `gate` (its first read)."""

    render = None

    def __init__(self, gate: threading.Event) -> None:
        self.gate = gate

    @property
    def wall_time(self) -> float:
        self.gate.wait(30)
        return time.time()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "actwatch" and r.levelno == logging.WARNING
    ]


class TestFreeDirectory:
    def test_a_new_directory_is_used_as_given_and_claimed(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A directory no run used is returned as given (created), claimed, without a word."""
        log_dir = str(tmp_path / "logs" / "run1")
        with caplog.at_level(logging.DEBUG, logger="actwatch"):
            assert claim_log_dir(log_dir) == log_dir
        assert _claim_text(log_dir) == f"{HOST} {os.getpid()}\n"
        assert _warnings(caplog) == []

    def test_other_files_do_not_make_a_directory_taken(self, tmp_path: Path) -> None:
        """Only actwatch's events files (and live claims) count: a TensorBoard callback's or
        any other file does not move the run."""
        (tmp_path / f"{EVENT_FILE_PREFIX}1700000000.host.1.v2").write_bytes(b"")
        (tmp_path / "notes.txt").write_text("mine")
        (tmp_path / "train").mkdir()
        assert claim_log_dir(tmp_path) == str(tmp_path)


class TestEarlierRun:
    def test_a_second_run_goes_to_a_sibling_and_both_are_kept(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """lr 1e-3 then 0.5 into one log_dir: the second run is written to `run1-2`, which a
        WARNING says, and each directory holds its own run's events only."""
        log_dir = str(tmp_path / "run1")
        _write_run(claim_log_dir(log_dir), 1e-3)
        (first,) = _events(log_dir)
        with caplog.at_level(logging.WARNING, logger="actwatch"):
            second = claim_log_dir(log_dir)
        assert second == f"{log_dir}-2"
        assert _warnings(caplog) == [
            f"actwatch: log_dir {log_dir!r} already holds the events of an earlier run up to "
            f"step 1 ({first.name}); this run is written to {second!r} instead, so that both runs "
            "are kept. Give each run its own log_dir to name it yourself."
        ]
        _write_run(second, 0.5)
        assert _events(log_dir) == [first]
        assert len(_events(second)) == 1
        for directory, value in ((log_dir, 1e-3), (second, 0.5)):
            (path,) = _events(directory)
            assert _learning_rates(path) == [pytest.approx(value)]

    def test_a_run_resumed_after_the_last_step_goes_on_in_the_same_directory(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Training resumed past the last step written (a checkpoint, `initial_epoch`)
        continues its run; resumed at or before it, it would overwrite steps: a sibling."""
        log_dir = str(tmp_path / "run1")
        _write_run(claim_log_dir(log_dir, start_step=0), 1e-3)  # a check at step 1
        with caplog.at_level(logging.WARNING, logger="actwatch"):
            assert claim_log_dir(log_dir, start_step=2) == log_dir
            assert _warnings(caplog) == []
            assert claim_log_dir(log_dir, start_step=1) == f"{log_dir}-2"
            assert "up to step 1" in _warnings(caplog)[0]

    def test_a_resume_after_the_update_ratio_of_the_last_check_continues(
        self, tmp_path: Path
    ) -> None:
        """A crash after the last check's update ratio (written alone at the step after it):
        the run resumed from that check's checkpoint still continues its directory, and a
        run moved to a sibling resumes in that sibling."""
        log_dir = str(tmp_path / "run1")
        sink = Sink(log_dir, priority="normal")
        sink.submit(8, scalars={"network/zero_fraction": (0.5, "z")})
        sink.submit(9, scalars={"update_ratio/conv1": (1e-3, "u")}, texts={"alerts": ("a", "")})
        sink.close()
        assert last_step(log_dir) == 8
        assert claim_log_dir(log_dir, start_step=9) == log_dir
        sibling = claim_log_dir(log_dir, start_step=0)  # a new run: kept apart
        assert sibling == f"{log_dir}-2"
        _write_run(sibling, 0.5)  # its check at step 1
        assert claim_log_dir(log_dir, start_step=2) == sibling  # the sibling's run resumed
        assert claim_log_dir(log_dir, start_step=1) == f"{log_dir}-3"

    def test_the_last_step_is_found_from_the_headers_past_images_and_damage(
        self, tmp_path: Path
    ) -> None:
        """`last_step`: the highest step of the directory's files; a damaged last record
        leaves the one before it."""
        sink = Sink(str(tmp_path), priority="normal")
        image = np.zeros((64, 64, 3), np.uint8)
        for step in (3, 7, 11):
            sink.submit(step, scalars={"a": (1.0, "a")}, render=lambda: {"img": (image, "i")})
        sink.close()
        assert last_step(tmp_path) == 11
        (path,) = _events(tmp_path)
        data = bytearray(path.read_bytes())
        data[-8] ^= 0xFF  # inside the last record's payload
        path.write_bytes(bytes(data))
        assert last_step(tmp_path) == 7
        assert last_step(tmp_path / "..") is None

    def test_the_first_free_sibling_is_taken(self, tmp_path: Path) -> None:
        """run1, run1-2 hold runs and run1-3 is a file: the third run goes to run1-4."""
        log_dir = str(tmp_path / "run1")
        for expected in (log_dir, f"{log_dir}-2"):
            directory = claim_log_dir(log_dir)
            assert directory == expected
            _write_run(directory, 0.1)
        Path(f"{log_dir}-3").write_text("not a directory")
        assert claim_log_dir(log_dir) == f"{log_dir}-4"

    @pytest.mark.parametrize("suffix", ["/", "/./"])
    def test_a_trailing_separator_names_the_sibling_of_the_folder(
        self, tmp_path: Path, suffix: str
    ) -> None:
        """`logs/run1/` gives `logs/run1-2`, not a folder inside run1."""
        _write_run(claim_log_dir(tmp_path / "run1"), 0.1)
        assert claim_log_dir(f"{tmp_path / 'run1'}{suffix}") == str(tmp_path / "run1-2")

    def test_the_current_folder_gets_a_sibling_by_its_name(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """log_dir='.' after a first run there: the sibling is named after the folder."""
        (tmp_path / "run1").mkdir()
        monkeypatch.chdir(tmp_path / "run1")
        _write_run(claim_log_dir("."), 0.1)
        assert claim_log_dir(".") == os.path.join(os.path.realpath(tmp_path), "run1-2")


class TestClaims:
    def test_another_monitor_of_this_process_that_has_not_written_yet(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Two monitors built before either wrote: the second does not join the first."""
        log_dir = str(tmp_path / "run1")
        assert claim_log_dir(log_dir) == log_dir
        with caplog.at_level(logging.WARNING, logger="actwatch"):
            assert claim_log_dir(log_dir) == f"{log_dir}-2"
        claim = os.path.join(log_dir, CLAIM_FILE)
        assert _warnings(caplog) == [
            f"actwatch: log_dir {log_dir!r} is claimed by another monitor of this process, "
            f"whose run has not written yet (delete {claim!r} if that process is gone); this "
            f"run is written to '{log_dir}-2' instead, so that both runs are kept. Give each "
            "run its own log_dir to name it yourself."
        ]

    def test_a_live_process_claim_holds(self, tmp_path: Path) -> None:
        """A claim by a process that still runs (here the parent) is respected."""
        (tmp_path / CLAIM_FILE).write_text(f"{HOST} {os.getppid()}\n")
        assert claim_log_dir(tmp_path) == f"{tmp_path}-2"

    def test_a_claim_from_another_host_holds(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Whether a process on another host runs cannot be told: its recent claim holds."""
        (tmp_path / CLAIM_FILE).write_text(f"elsewhere 12 {time.time():.0f}\n")
        with caplog.at_level(logging.WARNING, logger="actwatch"):
            assert claim_log_dir(tmp_path) == f"{tmp_path}-2"
        assert "is claimed by process 12 on host 'elsewhere'" in _warnings(caplog)[0]

    def test_an_old_claim_from_another_host_is_stale(self, tmp_path: Path) -> None:
        """Another host's claim older than CLAIM_STALE_SECONDS (by its time, or for a claim
        without one, the file's time) is replaced: a crash there does not block the folder."""
        old = time.time() - CLAIM_STALE_SECONDS - 10
        (tmp_path / CLAIM_FILE).write_text(f"elsewhere 12 {old:.0f}\n")
        assert claim_log_dir(tmp_path) == str(tmp_path)
        assert _claim_text(tmp_path) == f"{HOST} {os.getpid()}\n"
        other = tmp_path / "other"
        other.mkdir()
        (other / CLAIM_FILE).write_text("elsewhere 12\n")
        os.utime(other / CLAIM_FILE, (old, old))
        assert claim_log_dir(other) == str(other)

    def test_the_claim_is_released_and_another_process_claim_is_kept(self, tmp_path: Path) -> None:
        """release_claim (at train end) removes this process's claim only: none is left."""
        run = claim_log_dir(tmp_path / "run1")
        release_claim(run)
        assert not (Path(run) / CLAIM_FILE).exists()
        (Path(run) / CLAIM_FILE).write_text("elsewhere 12 1\n")
        release_claim(run)
        assert (Path(run) / CLAIM_FILE).exists()

    def test_a_writer_still_at_work_after_close_keeps_the_claim(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """`Sink.close` gives up waiting after its timeout while the writer goes on: the run's
        claim stays until the writer is done, so no other run takes the directory meanwhile."""
        run = claim_log_dir(tmp_path / "run1")
        sink = Sink(run, priority="normal")
        gate = threading.Event()
        sink._queue.put(_SlowJob(gate))
        sink.close(timeout=0.2)
        assert (Path(run) / CLAIM_FILE).exists(), "released while the writer was at work"
        (said,) = [m for m in _warnings(caplog) if "still writing" in m]
        assert "Until uploaded" not in said  # a local run has no spool
        gate.set()
        sink._thread.join(10)
        assert not sink._thread.is_alive()
        assert not (Path(run) / CLAIM_FILE).exists()

    def test_a_remote_writer_still_at_work_says_where_its_spool_is(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """On object storage the same warning names the spool folder, which holds what is not
        uploaded yet, in case the process ends before the writer."""
        sink = Sink(claim_log_dir("memory://actwatch-tests/slow-writer"), priority="normal")
        gate = threading.Event()
        sink._queue.put(_SlowJob(gate))
        sink.close(timeout=0.2)
        assert sink.uploader is not None
        (said,) = [m for m in _warnings(caplog) if "still writing" in m]
        assert f"Until uploaded, the events are in {sink.uploader.spool}" in said
        gate.set()
        sink._thread.join(10)

    def test_a_claim_whose_process_is_gone_is_replaced(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A run that crashed before its first write leaves a stale claim: the directory is
        reused (it holds no events), without a warning."""
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        (tmp_path / CLAIM_FILE).write_text(f"{HOST} {gone.pid}\n")
        with caplog.at_level(logging.WARNING, logger="actwatch"):
            assert claim_log_dir(tmp_path) == str(tmp_path)
        assert _claim_text(tmp_path) == f"{HOST} {os.getpid()}\n"
        assert _warnings(caplog) == []

    def test_runs_starting_at_once_in_threads_get_a_directory_each(self, tmp_path: Path) -> None:
        """Eight monitors claiming one log_dir at the same instant: eight directories."""
        barrier = threading.Barrier(8)
        got: list[str] = []

        def claim() -> None:
            barrier.wait()
            got.append(claim_log_dir(tmp_path / "run"))

        threads = [threading.Thread(target=claim) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        expected = {str(tmp_path / "run")} | {f"{tmp_path / 'run'}-{n}" for n in range(2, 9)}
        assert set(got) == expected

    def test_processes_starting_at_once_get_a_directory_each(self, tmp_path: Path) -> None:
        """Three processes (a sweep launched in parallel) claiming one log_dir at once."""
        code = (
            "import sys\n"
            "from actwatch.events.log_dir import claim_log_dir\n"
            "print('ready', flush=True)\n"
            "sys.stdin.readline()\n"
            "print(claim_log_dir(sys.argv[1]), flush=True)\n"
            "sys.stdin.read()\n"  # stay alive, as a training run does, until released
        )
        run = str(tmp_path / "run")
        got = _claim_at_once(code, run, 3)
        assert sorted(got) == [run, f"{run}-2", f"{run}-3"]

    def test_processes_taking_over_one_stale_claim_get_a_directory_each(
        self, tmp_path: Path
    ) -> None:
        """A sweep relaunched after a crash: four processes find the same stale claim at once.
        Each reads it as stale (made slow here, 0.3 s, so all four read it before any acts);
        one takes it over, the others go on to siblings: never two in one directory (each
        removing the stale claim could remove the claim another had just made)."""
        code = (
            "import sys, time\n"
            "from actwatch.events import log_dir\n"
            "owner = log_dir._claim_owner\n"
            "def slow(claim):\n"
            "    found = owner(claim)\n"
            "    time.sleep(0.3)\n"
            "    return found\n"
            "log_dir._claim_owner = slow\n"
            "print('ready', flush=True)\n"
            "sys.stdin.readline()\n"
            "print(log_dir.claim_log_dir(sys.argv[1]), flush=True)\n"
            "sys.stdin.read()\n"
        )
        run = tmp_path / "run"
        run.mkdir()
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        (run / CLAIM_FILE).write_text(f"{HOST} {gone.pid}\n")
        got = _claim_at_once(code, str(run), 4)
        assert sorted(got) == sorted([str(run)] + [f"{run}-{n}" for n in range(2, 5)]), got


def test_a_directory_that_cannot_be_written_is_refused_as_check_log_dir_does(
    tmp_path: Path,
) -> None:
    """A log_dir under a file: the same message as the constructor's check."""
    (tmp_path / "a_file").write_text("x")
    message = (
        r"^Invalid value for argument `log_dir`: '.*a_file/run1' cannot be created or written "
        r"\(Not a directory\)\. Pass a directory you can write to\.$"
    )
    with pytest.raises(ValueError, match=message):
        claim_log_dir(tmp_path / "a_file" / "run1")


def test_a_claimed_directory_without_events_is_no_run(tmp_path: Path) -> None:
    """The claim file is invisible to the readers: only events files make a run."""
    from actwatch.events.reader import find_runs

    claim_log_dir(tmp_path / "claimed")
    _write_run(claim_log_dir(tmp_path / "written"), 0.1)
    assert [run.name for run in find_runs(tmp_path)] == ["written"]
