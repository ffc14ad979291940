"""A damaged events file read by the report and the tab through the one reader (issue 19, 7).

A real fit's events file, 4 bytes overwritten inside one record: the report and the tab skip
that record alone, agree on what is left, keep the layers in network order, and log what
they really do.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from tensorboard.plugins import base_plugin
from werkzeug.test import Client

from actwatch import report
from actwatch.dashboard.events_index import RunIndex
from actwatch.dashboard.plugin import ActwatchPlugin
from actwatch.events import reader

from .fit_logs import fit_run

# Reading, rendering and serving: no Keras backend involved, so once per make test.
pytestmark = pytest.mark.read_path

LAYERS = ["conv1", "pool1", "conv2", "pool2"]  # helpers.tiny_cnn's watched layers
#: The records a fit's file starts with: the file version, the custom-scalars layout, the
#: first check (which carries every tag's metadata: plugin names and descriptions).
FIRST_RECORDS = {"file version": 0, "layout": 1, "first check": 2}


@pytest.fixture(scope="module")
def fit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real fit (checks at steps 0, 3, 6, 9; update ratios the step after each)."""
    run = tmp_path_factory.mktemp("fit") / "run"
    fit_run(run, dead=2)
    return run


def _damaged_copy(fit_dir: Path, root: Path, record: int, *, header: bool = False) -> Path:
    """A copy of the run whose `record`-th record has 4 bytes overwritten: in its payload, or
    in its length header."""
    run = root / "run"
    shutil.copytree(fit_dir, run)
    (path,) = reader.event_files(run)
    offsets = [r.offset for r, _ in reader.events(path)]
    data = bytearray(path.read_bytes())
    at = offsets[record] + (2 if header else 16)
    data[at : at + 4] = bytes(255 - b for b in data[at : at + 4])
    path.write_bytes(bytes(data))
    return run


@pytest.mark.parametrize("record", FIRST_RECORDS)
def test_report_keeps_every_other_check(
    fit_dir: Path, tmp_path: Path, record: str, caplog: pytest.LogCaptureFixture
) -> None:
    """4 bytes overwritten inside one of a file's first records lose that record only: the
    report reads the other checks (it used to find none and refuse the run)."""
    whole = report.read_run(fit_dir)
    run = _damaged_copy(fit_dir, tmp_path, FIRST_RECORDS[record])
    with caplog.at_level(logging.WARNING, logger="actwatch"):
        log = report.read_run(run)
        page = report.write_report(run, tmp_path / "report.html")
    lost = [0] if record == "first check" else []
    assert log.layers == LAYERS
    assert log.steps == [s for s in whole.steps if s not in lost] and len(log.steps) >= 3
    assert sorted(log.grids["conv1"]) == [s for s in sorted(whole.grids["conv1"]) if s not in lost]
    assert sorted(log.histograms["conv2"]) == log.steps
    assert log.series("rms", "pool2")[0] == log.steps  # known by name, its metadata lost
    assert log.scalars["update_ratio/conv1"] == whole.scalars["update_ratio/conv1"]
    assert "filters of conv1 in run run" in page.read_text(encoding="utf-8")
    assert "that record is skipped" in caplog.text
    assert "the rest of that file is skipped" not in caplog.text


@pytest.mark.parametrize("record", FIRST_RECORDS)
def test_tab_and_report_agree_and_layers_keep_network_order(
    fit_dir: Path, tmp_path: Path, record: str
) -> None:
    """The tab's index reads what the report reads, counts the damaged record's bytes, and
    its `runs` route lists the layers in network order (the update ratios written after the
    first check, of conv1 and conv2 only, used to come first)."""
    run = _damaged_copy(fit_dir, tmp_path, FIRST_RECORDS[record])
    log = report.read_run(run)
    index = RunIndex(name=".", path=run)
    index.refresh()
    assert index.layers == log.layers == LAYERS
    assert index.steps == log.steps
    for metric in ("dead_fraction", "rms", "update_ratio"):
        for layer, series in index.series(metric).items():
            assert dict(zip(series.steps, series.values, strict=True)) == pytest.approx(
                log.scalars[f"{metric}/{layer}"]
            )
    (path,) = reader.event_files(run)
    records = [r for r, _ in reader.events(path)]
    size = path.stat().st_size
    assert index.damaged_bytes + sum(len(r.payload) + 16 for r in records) == size
    assert index.damaged_bytes > 0 and index.tail_bytes == 0
    plugin = ActwatchPlugin(base_plugin.TBContext(logdir=str(tmp_path)))
    response = Client(plugin.get_plugin_apps()["/runs"]).get("/runs")
    assert response.status_code == 200
    assert json.loads(response.get_data())["run"]["layers"] == LAYERS


def test_log_says_what_is_skipped(
    fit_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A damaged payload: "that record is skipped" (the next ones are read); a damaged
    length header: "the rest of that file is skipped", and it is."""
    run = _damaged_copy(fit_dir, tmp_path / "payload", 4)  # the second check
    with caplog.at_level(logging.WARNING, logger="actwatch"):
        steps = report.read_run(run).steps
    assert steps == [0, 6, 9]
    assert "failed its data CRC check; that record is skipped" in caplog.text
    assert "rest of that file" not in caplog.text
    caplog.clear()
    run = _damaged_copy(fit_dir, tmp_path / "header", 4, header=True)
    with caplog.at_level(logging.WARNING, logger="actwatch"):
        steps = report.read_run(run).steps
        index = RunIndex(name=".", path=run)
        index.refresh()
    assert steps == index.steps == [0]
    assert "failed its header CRC check; the rest of that file is skipped" in caplog.text
    (path,) = reader.event_files(run)
    fourth = [r for r, _ in reader.events(path)][-1]  # the update ratios of step 1
    assert index.damaged_bytes == path.stat().st_size - (fourth.offset + len(fourth.payload) + 16)
