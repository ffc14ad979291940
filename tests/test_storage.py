"""Log directories on object storage, against real servers (issue 21): moto's S3 server and a
GCS emulator on 127.0.0.1, and fsspec's `memory://`. Written by the real `Sink` (a spool
uploaded as new objects), read back by TensorBoard's own event reader, `actwatch report`, the
tab's index and a real `tensorboard --logdir s3://...` process. No Keras backend involved:
the fits are in test_storage_fit.py."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest
from tensorboard.compat.proto import event_pb2

from actwatch.cli import main as cli_main
from actwatch.dashboard.events_index import LogdirIndex
from actwatch.events import storage, tags
from actwatch.events.log_dir import CLAIM_FILE, check_log_dir, claim_log_dir
from actwatch.events.reader import find_runs
from actwatch.events.sink import Sink

from .records import read_records
from .storage_servers import FAST, S3, free_port, gcs_server, s3_server
from .tensorboard_server import tensorboard_server

pytestmark = pytest.mark.read_path

LAYER = "conv1"


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with s3_server() as server:
        yield server


@pytest.fixture
def s3_config(s3: S3, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> S3:
    """fsspec's own configuration pointing `s3://` at the server (what readers use), and
    the local copies of remote log dirs in `tmp_path`."""
    monkeypatch.setitem(fsspec.config.conf, "s3", dict(s3.options))
    monkeypatch.setenv("ACTWATCH_CACHE", str(tmp_path / "cache"))
    return s3


@pytest.fixture(scope="module")
def gcs() -> Iterator[dict[str, Any]]:
    with gcs_server() as options:
        yield options


def _write(
    log_dir: str, steps: range, *, interval: float = 30.0, pause: float = 0.0, **options: Any
) -> Sink:
    """A run of `steps` checks of actwatch's per-layer scalars, written by a real Sink to
    `log_dir` (claimed first, as a monitor does), closed at the end."""
    run = claim_log_dir(log_dir, steps[0], options or None)
    assert run == log_dir
    sink = Sink(run, priority="normal", upload_interval=interval, storage_options=options or None)
    grid = np.full((8, 8, 3), 120, dtype=np.uint8)

    def render() -> dict[str, tuple[np.ndarray, str]]:
        return {tags.filters_tag(LAYER, 0): (grid, "grid")}

    for step in steps:
        scalars = {tags.layer_tag(m, LAYER): (step / 100, "test") for m in tags.METRICS}
        first = step == steps[0]
        sink.submit(step, scalars=scalars, render=render if first else None, keep_images=True)
        if pause:
            sink.flush()
            time.sleep(pause)
    sink.close()
    return sink


def _objects(fs: Any, path: str) -> list[str]:
    fs.invalidate_cache()
    return sorted(p for p in fs.find(path) if p.rsplit("/", 1)[-1].startswith("events.out"))


def _steps_of_objects(fs: Any, names: list[str], tmp_path: Path) -> list[int]:
    """The steps of the checks in the objects `names`, read in name order, each object a
    whole sequence of CRC-checked records (no bytes after the last)."""
    steps = []
    for i, name in enumerate(names):
        local = tmp_path / f"object{i}"
        local.write_bytes(fs.cat_file(name))
        parsed = read_records(local)
        assert parsed.trailing == 0, name
        steps += [e.step for e in parsed.events if e.summary.value and e.step >= 0]
    return steps


class TestUrls:
    def test_an_unknown_protocol_is_a_value_error(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A protocol fsspec does not know is refused; no local folder is made of it."""
        monkeypatch.chdir(tmp_path)
        with pytest.raises(ValueError, match=r"protocol 'nosuch', which fsspec does not know"):
            check_log_dir("nosuch://bucket/run1")
        assert list(tmp_path.iterdir()) == []

    def test_a_missing_protocol_package_names_the_extra(self) -> None:
        """az:// without adlfs: a ValueError saying `pip install 'actwatch[azure]'`."""
        try:
            import adlfs  # noqa: F401
        except ImportError:
            with pytest.raises(ValueError, match=r"pip install 'actwatch\[azure\]'"):
                check_log_dir("az://container/run1")
        else:  # pragma: no cover - adlfs installed: the URL is accepted
            assert check_log_dir("az://container/run1") == "az://container/run1"

    def test_file_urls_are_local_paths(self, tmp_path: Path) -> None:
        assert check_log_dir(f"file://{tmp_path}/run1") == f"{tmp_path}/run1"
        assert (tmp_path / "run1").is_dir()

    def test_an_s3_url_never_makes_a_local_folder(
        self, s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """0.1 wrote `log_dir='s3://...'` to a local folder `s3:`: now it goes to the bucket."""
        monkeypatch.chdir(tmp_path)
        _write("s3://bucket/nolocal/run1", range(2), **s3.options)
        assert list(tmp_path.iterdir()) == []
        fs = fsspec.filesystem("s3", **s3.options)
        assert _objects(fs, "bucket/nolocal/run1")


class TestWriting:
    def test_uploads_are_new_whole_objects_in_name_order(self, tmp_path: Path) -> None:
        """memory://: each interval's records are a new object; none is rewritten; read in
        name order the objects hold every step in order; no claim and no spool are left."""
        fs = fsspec.filesystem("memory")
        seen: dict[str, bytes] = {}
        run = "memory://bucket/chunks/run1"
        claim_log_dir(run, 0)
        sink = Sink(run, priority="normal", upload_interval=0.2)
        for step in range(6):
            sink.submit(step, scalars={tags.layer_tag("zero_fraction", LAYER): (0.1, "test")})
            sink.flush()
            time.sleep(0.25)
            for name in _objects(fs, "/bucket/chunks/run1"):
                data = fs.cat_file(name)
                assert seen.setdefault(name, data) == data  # never rewritten
        assert sink.uploader is not None
        spool = sink.uploader.spool
        sink.close()
        names = _objects(fs, "/bucket/chunks/run1")
        assert len(names) >= 3
        assert _steps_of_objects(fs, names, tmp_path) == list(range(6))
        assert not fs.exists(f"/bucket/chunks/run1/{CLAIM_FILE}")
        assert not os.path.exists(spool)
        assert sink.uploader.failures == 0
        assert sink.uploader.bytes_uploaded == sum(len(fs.cat_file(n)) for n in names)

    def test_a_second_run_goes_to_a_sibling_url(self, caplog: pytest.LogCaptureFixture) -> None:
        """The claim rules hold on object storage: `<url>-2` after a first run."""
        _write("memory://bucket/sib/run1", range(2))
        with caplog.at_level(logging.WARNING, logger="actwatch"):
            assert claim_log_dir("memory://bucket/sib/run1", 0) == "memory://bucket/sib/run1-2"
        assert "already holds the events of an earlier run up to step 1" in caplog.text
        assert claim_log_dir("memory://bucket/sib/run1", 2) == "memory://bucket/sib/run1"

    def test_s3_round_trip_read_by_tensorboard(
        self, s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Several objects on moto's S3, read by TensorBoard's own EventAccumulator through
        its S3 file system (boto3): every step, in order, across the objects."""
        from tensorboard.backend.event_processing import event_accumulator

        _write("s3://bucket/tb/run1", range(5), interval=0.2, pause=0.25, **s3.options)
        fs = fsspec.filesystem("s3", **s3.options)
        assert len(_objects(fs, "bucket/tb/run1")) >= 3
        monkeypatch.setenv("S3_ENDPOINT", s3.endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_REGION", "us-east-1")
        # TensorBoard's S3 file system reads S3_ENDPOINT when it is made (at its import).
        from tensorboard.compat.tensorflow_stub.io import gfile

        monkeypatch.setitem(gfile._REGISTERED_FILESYSTEMS, "s3", gfile.S3FileSystem())
        accumulator = event_accumulator.EventAccumulator("s3://bucket/tb/run1")
        accumulator.Reload()
        tag = tags.layer_tag("zero_fraction", LAYER)
        tensors = accumulator.Tensors(tag)
        assert [t.step for t in tensors] == [0, 1, 2, 3, 4]

    def test_gcs_keeps_every_upload(self, gcs: dict[str, Any], tmp_path: Path) -> None:
        """On the GCS emulator (where append is an overwrite) every interval's upload is
        kept: the steps of all objects are every step written."""
        _write("gs://gbucket/run1", range(5), interval=0.2, pause=0.25, **gcs)
        fs = fsspec.filesystem("gs", **gcs)
        names = _objects(fs, "gbucket/run1")
        assert len(names) >= 3
        assert _steps_of_objects(fs, names, tmp_path) == list(range(5))

    def test_a_failed_upload_is_retried_and_training_goes_on(
        self, s3: S3, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The server stops mid-run: uploads fail (logged once), checks are still accepted;
        once it is back, the retries upload everything."""
        options = {**s3.options, **FAST}
        run = "s3://bucket/retry/run1"
        claim_log_dir(run, 0, options)
        sink = Sink(run, priority="normal", upload_interval=0.3, storage_options=options)
        scalar = tags.layer_tag("zero_fraction", LAYER)
        sink.submit(0, scalars={scalar: (0.1, "test")})
        sink.flush()
        assert sink.uploader is not None
        deadline = time.monotonic() + 10
        while sink.uploader.uploads == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        s3.stop()
        try:
            with caplog.at_level(logging.WARNING, logger="actwatch"):
                for step in (1, 2, 3):
                    sink.submit(step, scalars={scalar: (0.1, "test")})
                sink.flush()
                deadline = time.monotonic() + 15
                while sink.uploader.failures == 0 and time.monotonic() < deadline:
                    time.sleep(0.05)
            # The failed chunk's bytes are fixed at its first attempt: a check written while
            # the store is down goes to the next chunk, so a retry never rewrites an object
            # (the failed attempt may have landed) with other bytes.
            [(spool_file, end)] = sink.uploader._retry.items()
            done, chunk = sink.uploader._done[spool_file]
            sink.submit(4, scalars={scalar: (0.1, "test")})
            sink.flush()
        finally:
            s3.start()
        assert sink.uploader.failures >= 1
        assert "failed" in caplog.text and "retried with back-off" in caplog.text
        sink.close()
        fs = fsspec.filesystem("s3", **s3.options)
        names = _objects(fs, "bucket/retry/run1")
        assert _steps_of_objects(fs, names, tmp_path) == [0, 1, 2, 3, 4]
        assert sink.uploader.pending() == 0
        [retried] = [n for n in names if f".{chunk:06d}." in os.path.basename(n)]
        assert len(fs.cat_file(retried)) == end - done

    def test_a_lost_spool_file_is_said_and_the_others_go_up(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A spool file removed under the uploader (a temp-folder cleaner) is logged and
        dropped; the uploader thread lives on and the other files still go up."""
        fs = fsspec.filesystem("memory")
        spool = tmp_path / "spool"
        spool.mkdir()
        uploader = storage.Uploader("memory://bucket/lost/run1", str(spool), interval=0.2)
        gone, kept = spool / "events.out.tfevents.1.gone", spool / "events.out.tfevents.2.kept"
        gone.write_bytes(b"x" * 10)
        kept.write_bytes(b"y" * 20)
        gone.unlink()
        with caplog.at_level(logging.WARNING, logger="actwatch"):
            uploader.written(str(gone), 10)
            uploader.written(str(kept), 20)
            deadline = time.monotonic() + 10
            while uploader.uploads == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
        assert "cannot be read" in caplog.text and "the other files go on" in caplog.text
        assert uploader.close(timeout=5)
        [name] = _objects(fs, "/bucket/lost/run1")
        assert fs.cat_file(name) == b"y" * 20

    def test_an_unreachable_endpoint_or_bucket_is_a_clear_error(self, s3: S3) -> None:
        """Before training, the claim fails with a ValueError saying what to check."""
        closed = {**s3.options, **FAST, "endpoint_url": f"http://127.0.0.1:{free_port()}"}
        with pytest.raises(ValueError, match=r"cannot be written .*endpoint is reachable"):
            claim_log_dir("s3://bucket/down/run1", 0, closed)
        with pytest.raises(ValueError, match=r"'s3://no-such-bucket/run1' cannot be written"):
            claim_log_dir("s3://no-such-bucket/run1", 0, {**s3.options, **FAST})

    def test_a_kill_loses_at_most_the_last_interval(self, s3: S3, tmp_path: Path) -> None:
        """SIGKILL mid-run: every uploaded object is whole, and every check submitted more
        than an interval (plus slack) before the kill is on the store."""
        interval = 0.5
        script = (
            "import sys, time\n"
            "from actwatch.events.sink import Sink\n"
            f"options = {s3.options!r}\n"
            "sink = Sink('s3://bucket/kill/run1', priority='normal', "
            f"upload_interval={interval}, storage_options=options)\n"
            "for step in range(1000):\n"
            "    sink.submit(step, scalars={'zero_fraction/conv1': (0.1, 'test')})\n"
            "    sink.flush()\n"
            "    print(step, time.time(), flush=True)\n"
            "    time.sleep(0.05)\n"
        )
        child = subprocess.Popen(
            [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path
        )
        fs = fsspec.filesystem("s3", **s3.options)
        deadline = time.monotonic() + 30
        while len(_objects(fs, "bucket/kill/run1")) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        killed_at = time.time()
        os.kill(child.pid, signal.SIGKILL)
        out, _ = child.communicate()
        written = {int(a): float(b) for a, b in (line.split() for line in out.splitlines())}
        steps = _steps_of_objects(fs, _objects(fs, "bucket/kill/run1"), tmp_path)
        assert steps == list(range(len(steps)))
        safe = [s for s, t in written.items() if t < killed_at - interval - 1.0]
        assert safe and set(safe) <= set(steps)


class TestReading:
    def test_report_and_find_runs_of_an_s3_log_dir(
        self, s3_config: S3, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`actwatch report s3://...` reads the runs through the one reader (a local copy
        refreshed by size/ETag), with fsspec's own configuration for the endpoint."""
        _write("s3://bucket/sweep/lr_1", range(3), interval=0.2, pause=0.25, **s3_config.options)
        _write("s3://bucket/sweep/lr_2", range(2), **s3_config.options)
        assert [p.name for p in find_runs("s3://bucket/sweep")] == ["lr_1", "lr_2"]
        page = tmp_path / "report.html"
        assert cli_main(["report", "s3://bucket/sweep", "-o", str(page)]) == 0
        html = page.read_text(encoding="utf-8")
        assert "lr_1" in html and "lr_2" in html

    def test_the_tab_index_reads_a_remote_log_dir_incrementally(
        self, s3_config: S3, tmp_path: Path
    ) -> None:
        """The tab's index of `s3://...`: runs, scalars, the grid's PNG; a new upload adds
        its object only (the copy of earlier objects is kept)."""
        options = s3_config.options
        run = "s3://bucket/tab/run1"
        claim_log_dir(run, 0, options)
        sink = Sink(run, priority="normal", upload_interval=0.2, storage_options=options)
        grid = np.full((8, 8, 3), 90, dtype=np.uint8)
        scalars = {tags.layer_tag("zero_fraction", LAYER): (0.25, "test")}
        sink.submit(
            0,
            scalars=scalars,
            render=lambda: {tags.filters_tag(LAYER, 0): (grid, "grid")},
        )
        sink.flush()
        time.sleep(0.5)
        index = LogdirIndex("s3://bucket/tab", max_age=0)
        index.refresh(force=True)
        found = index.run("run1")
        assert found is not None and found.steps == [0]
        png = found.read_image(tags.filters_tag(LAYER, 0), 0)
        assert png is not None and png.startswith(b"\x89PNG")
        version, read = found.version, found.bytes_read
        sink.submit(1, scalars=scalars)
        sink.close()
        index.refresh(force=True)
        assert found.steps == [0, 1]
        assert found.version == version and found.bytes_read > read
        assert found.series("zero_fraction")[LAYER].get(1) == 0.25

    def test_the_tab_index_and_report_read_gcs(
        self, gcs: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`gs://` through fsspec's configuration (gcsfs' endpoint): the index and the report."""
        _write("gs://gbucket/tab/run1", range(3), interval=0.2, pause=0.25, **gcs)
        for protocol in ("gs", "gcs"):
            monkeypatch.setitem(fsspec.config.conf, protocol, dict(gcs))
        monkeypatch.setenv("ACTWATCH_CACHE", str(tmp_path / "cache"))
        index = LogdirIndex("gs://gbucket/tab", max_age=0)
        # The emulator under load may list the last upload a moment late (seen once in 5 CI
        # runs: steps [0, 1]); the tab's next refresh sees it, so look again for up to 10 s.
        deadline = time.monotonic() + 10.0
        while True:
            index.refresh(force=True)
            found = index.run("run1")
            if (found is not None and found.steps == [0, 1, 2]) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert found is not None and found.steps == [0, 1, 2]
        page = tmp_path / "report.html"
        assert cli_main(["report", "gs://gbucket/tab", "-o", str(page)]) == 0
        assert "run1" in page.read_text(encoding="utf-8")

    def test_a_tensorboard_process_with_an_s3_logdir(
        self, s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`tensorboard --logdir s3://...` (TensorBoard's Python loader: its fast loader takes
        local and gs:// paths only; boto3 for S3): TensorBoard lists the run and the actwatch
        tab serves it, the endpoint given by fsspec's environment variables."""
        _write("s3://bucket/served/run1", range(2), **s3.options)
        for name, value in {
            "S3_ENDPOINT": s3.endpoint,  # TensorBoard's boto3 S3 file system
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "FSSPEC_S3_ENDPOINT_URL": s3.endpoint,  # the actwatch tab, through fsspec
            "FSSPEC_S3_KEY": "testing",
            "FSSPEC_S3_SECRET": "testing",
            "ACTWATCH_CACHE": str(tmp_path / "cache"),
        }.items():
            monkeypatch.setenv(name, value)
        logdir: Any = "s3://bucket/served"
        with tensorboard_server(logdir, tmp_path / "tb.log", load_fast="false") as server:
            deadline = time.monotonic() + 60
            runs: Any = []
            while time.monotonic() < deadline:
                runs = server.json("/data/plugin/actwatch/runs")
                tb_runs = server.json("/data/runs")
                if runs and "run1" in tb_runs:
                    break
                time.sleep(0.5)
            assert "run1" in tb_runs
            assert "run1" in str(runs)


def test_event_records_of_the_spool_are_tensorboard_events(tmp_path: Path) -> None:
    """Every uploaded object starts at a record: the first holds the file version."""
    _write("memory://bucket/version/run1", range(1))
    fs = fsspec.filesystem("memory")
    first = _objects(fs, "/bucket/version/run1")[0]
    (tmp_path / "first").write_bytes(fs.cat_file(first))
    event = read_records(tmp_path / "first").events[0]
    assert isinstance(event, event_pb2.Event) and event.file_version == "brain.Event:2"
    assert storage.is_url("memory://x") and not storage.is_url("file:///x")
