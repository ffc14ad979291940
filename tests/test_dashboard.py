"""The actwatch tab of TensorBoard: the events index, the data API over a real `tensorboard`
process (both loaders), and the page in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from actwatch.dashboard.events_index import LogdirIndex, RunIndex
from actwatch.dashboard.plugin import ActwatchPlugin
from actwatch.diagnose.alerts import Alert
from actwatch.events import summaries, tags
from actwatch.events.records import EVENT_FILE_PREFIX, RecordWriter, frame
from actwatch.events.sink import Sink

from .chromium import DevTools, chromium_session
from .fit_logs import fit_run
from .helpers import read_events
from .tensorboard_server import Server, tensorboard_server

pytestmark = [
    pytest.mark.slow,
    # The tab and its index never touch Keras: once per make test, in its first (PyTorch) run,
    # where TensorFlow is blocked.
    pytest.mark.read_path,
]

XSS = "<img src=x onerror=alert(1)>"
SCAN_LAYERS = ("conv_a", XSS, "conv_b", "block_1/conv")  # and a nested layer's path
CHECKS = 30
EVERY = 10
#: A per-layer metric that is not in tags.METRICS, described as actwatch describes its own
#: (other metrics are added over time: the dashboard must list what it finds).
EXTRA_METRIC = "rms"


def _scan_value(metric: str, layer: int, step: int) -> float:
    return round(0.01 * step / EVERY + 0.1 * layer + 0.001 * len(metric), 4)


def _scan_pixel(layer: int, step: int) -> int:
    return (step // EVERY) * 8 + layer


def _dead_alert(layer: str, step: int) -> Alert:
    return Alert(
        kind="dead",
        layer=layer,
        step=step,
        epoch=step // 20,
        filters=(0, 2),
        dead_filters=(0, 2),
        died_since_last_check=(0, 2),
        count=2,
        total=8,
        fraction=0.25,
        learning_rate=0.5,
        message=f"Epoch {step // 20 + 1} (step {step}): 2 filter(s) of layer '{layer}' are dead: "
        "[0, 2]. The usual cause is a learning rate that is too high.",
    )


def write_scan_run(log_dir: Path, checks: int = CHECKS) -> None:
    """`checks` checks of three layers (one named like markup) through actwatch's own Sink:
    every per-layer metric plus `EXTRA_METRIC`, two probes of grids, probe 0's heatmaps, and
    alerts at steps 50 and 200. Each grid is one grey level that tells its layer and step."""
    sink = Sink(str(log_dir))
    for check in range(checks):
        step = check * EVERY
        scalars = {
            tags.layer_tag(metric, layer): (_scan_value(metric, i, step), "test")
            for i, layer in enumerate(SCAN_LAYERS)
            for metric in tags.METRICS
        }
        for i, layer in enumerate(SCAN_LAYERS):
            scalars[tags.layer_tag(EXTRA_METRIC, layer)] = (
                _scan_value(EXTRA_METRIC, i, step),
                f"Root mean square. Layer `{layer}`.",
            )
        alerts = [_dead_alert(XSS, step), _dead_alert("conv_b", step)] if step in (50, 200) else []

        def render(step: int = step) -> dict[str, tuple[np.ndarray, str]]:
            images = {}
            for i, layer in enumerate(SCAN_LAYERS):
                grid = np.full((10, 14, 3), _scan_pixel(i, step), dtype=np.uint8)
                images[tags.filters_tag(layer, 0)] = (grid, "test")
                images[tags.filters_tag(layer, 1)] = (255 - grid, "test")
                images[tags.heatmap_tag(layer, 0)] = (grid // 2, "test")
            return images

        sink.submit(step, scalars=scalars, texts=tags.alert_texts(alerts), render=render)
        assert sink.flush(30)
    sink.close()


def events_file(run: Path) -> Path:
    (path,) = sorted(run.glob(f"{EVENT_FILE_PREFIX}*"))
    return path


@pytest.fixture(scope="module")
def logdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Runs: `fit` (a real tiny fit, 2 dead conv1 filters, so an alert), `scan` (30 checks
    through the Sink), `cut` (scan's file cut inside its last record), `keras` (scalars only,
    no actwatch data), `live_true`/`live_false` (2 checks; the tests append to them), and
    `plain` (per-layer scalars only, as with images=False; layer paths with '/'), and
    `outside`, a link to a run outside the log directory (not followed)."""
    root = tmp_path_factory.mktemp("dashboard_logs")
    outside = tmp_path_factory.mktemp("outside_the_logdir")
    write_scan_run(outside, checks=1)
    (root / "outside").symlink_to(outside, target_is_directory=True)
    fit_run(root / "fit", dead=2, epochs=3)
    write_scan_run(root / "scan")
    (root / "cut").mkdir()
    whole = events_file(root / "scan").read_bytes()
    (root / "cut" / events_file(root / "scan").name).write_bytes(whole[:-100])
    sink = Sink(str(root / "keras"))
    for step in range(3):
        sink.submit(step, scalars={"epoch_loss": (1.0 / (step + 1), "loss")})
    sink.close()
    for name in ("live_true", "live_false"):
        write_scan_run(root / name, checks=2)
    sink = Sink(str(root / "plain"))
    for check in range(3):
        sink.submit(
            check * EVERY,
            scalars={
                tags.layer_tag(metric, layer): (0.1 * check, "test")
                for layer in PLAIN_LAYERS
                for metric in tags.METRICS
            },
        )
        assert sink.flush(30)
    sink.close()
    return root


PLAIN_LAYERS = ("stem/conv", "head")


@pytest.fixture(scope="module", params=["true", "false"])
def server(
    request: pytest.FixtureRequest, logdir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """A real `tensorboard --logdir` with default flags, `--load_fast=true` or `false`."""
    log = tmp_path_factory.mktemp("tensorboard") / "tensorboard.log"
    with tensorboard_server(logdir, log, load_fast=request.param) as server:
        server.load_fast = request.param  # type: ignore[attr-defined]
        yield server


# The index, without a server ----------------------------------------------------------------


def test_index_reads_only_what_was_appended(tmp_path: Path) -> None:
    """A refresh reads only appended bytes; half a record waits (tail_bytes) until whole."""
    write_scan_run(tmp_path, checks=3)
    path = events_file(tmp_path)
    run = RunIndex(name=".", path=tmp_path)
    run.refresh()
    assert run.steps == [0, 10, 20]
    assert run.bytes_read == path.stat().st_size and run.tail_bytes == 0
    event = summaries.event(
        30, 0.0, [summaries.scalar(tags.layer_tag("dead_fraction", "conv_a"), 0.75)]
    )
    framed = frame(event.SerializeToString())
    with open(path, "ab") as handle:
        handle.write(framed[:10])
    run.refresh()
    assert run.steps == [0, 10, 20] and run.tail_bytes == 10
    before = run.bytes_read
    with open(path, "ab") as handle:
        handle.write(framed[10:])
    run.refresh()
    assert run.steps == [0, 10, 20, 30] and run.tail_bytes == 0
    assert run.bytes_read - before == len(framed)
    assert run.series("dead_fraction")["conv_a"].get(30) == 0.75
    png = run.read_image(tags.filters_tag(XSS, 0), 20)  # read alone from its record
    assert png is not None
    assert (np.asarray(Image.open(io.BytesIO(png))) == _scan_pixel(1, 20)).all()
    assert run.read_image(tags.filters_tag(XSS, 0), 30) is None


def test_index_stops_at_a_corrupt_record_and_rereads_a_replaced_file(tmp_path: Path) -> None:
    """A damaged record ends the reading of its file (earlier checks kept); a file that
    shrank is read again from its start."""
    write_scan_run(tmp_path, checks=4)
    path = events_file(tmp_path)
    whole = path.read_bytes()
    index = LogdirIndex(tmp_path.parent, max_age=0)
    index.refresh()
    run = index.run(tmp_path.name)
    assert run is not None and run.steps == [0, 10, 20, 30]
    damaged = bytearray(whole)
    damaged[-20] ^= 0xFF  # inside the last check's payload: its CRC fails
    path.write_bytes(bytes(damaged[:-5]))  # shorter: the file is read again
    index.refresh()
    run = index.run(tmp_path.name)
    assert run is not None and run.steps == [0, 10, 20]
    assert len(run.images[tags.filters_tag("conv_a", 0)]) == 3


def _record_ends(path: Path) -> list[int]:
    """The byte offset after each record of `path`."""
    data, ends, at = path.read_bytes(), [], 0
    while at < len(data):
        at += 16 + int.from_bytes(data[at : at + 8], "little")
        ends.append(at)
    return ends


def test_index_skips_a_damaged_record_and_counts_it(tmp_path: Path) -> None:
    """A record in the middle whose payload fails its CRC is skipped, the checks after it are
    read, and its bytes are counted as damaged (not as a tail that may still come); a damaged
    length header ends its file, the rest counted as damaged."""
    write_scan_run(tmp_path, checks=5)
    path = events_file(tmp_path)
    whole = path.read_bytes()
    ends = _record_ends(path)
    assert ends[-1] == len(whole) and len(ends) == 6  # the file-version event, five checks
    damaged = bytearray(whole)
    damaged[ends[2] + 40] ^= 0xFF  # inside the third check's payload (step 20)
    path.write_bytes(bytes(damaged))
    run = RunIndex(name=".", path=tmp_path)
    run.refresh()
    assert run.steps == [0, 10, 30, 40]
    assert run.damaged_bytes == ends[3] - ends[2] and run.tail_bytes == 0
    assert run.read_image(tags.filters_tag(XSS, 0), 40) is not None
    # The damaged record last: it may still be being written, so it waits as a tail.
    path.write_bytes(bytes(damaged[: ends[3]]))
    run = RunIndex(name=".", path=tmp_path)
    run.refresh()
    assert run.steps == [0, 10] and run.tail_bytes == ends[3] - ends[2]
    assert run.damaged_bytes == 0
    with open(path, "ab") as handle:  # more follows: now it is damaged, and skipped
        handle.write(whole[ends[3] :])
    run.refresh()
    assert run.steps == [0, 10, 30, 40] and run.damaged_bytes == ends[3] - ends[2]
    assert run.tail_bytes == 0
    # A damaged length header: the next record cannot be found.
    damaged = bytearray(whole)
    damaged[ends[2] + 2] ^= 0xFF
    path.write_bytes(bytes(damaged))
    run = RunIndex(name=".", path=tmp_path)
    run.refresh()
    assert run.steps == [0, 10] and run.damaged_bytes == len(whole) - ends[2]
    assert run.tail_bytes == 0
    # Tried again when the file grows (a header read while it was being written, say).
    with open(path, "r+b") as handle:
        handle.seek(ends[2] + 2)
        handle.write(whole[ends[2] + 2 : ends[2] + 3])
        handle.seek(0, os.SEEK_END)
        handle.write(b"\0" * 5)
    run.refresh()
    assert run.steps == [0, 10, 20, 30, 40] and run.damaged_bytes == 0 and run.tail_bytes == 5


def test_index_does_not_skip_a_record_being_written(tmp_path: Path) -> None:
    """A last record whose length is there but whose bytes are not yet (a live run) is not
    taken for a damaged one: it waits as a tail, and is read once whole."""
    write_scan_run(tmp_path, checks=2)
    path = events_file(tmp_path)
    event = summaries.event(
        20, 0.0, [summaries.scalar(tags.layer_tag("dead_fraction", "conv_a"), 0.75)]
    )
    framed = frame(event.SerializeToString())
    with open(path, "ab") as handle:
        handle.write(framed[:12] + bytes(len(framed) - 12))  # the header, then zeros
    run = RunIndex(name=".", path=tmp_path)
    run.refresh()
    assert run.steps == [0, 10] and run.tail_bytes == len(framed) and run.damaged_bytes == 0
    whole = path.read_bytes()[: -len(framed)] + framed
    path.write_bytes(whole + framed)  # the record written, and one more after it
    run.refresh()
    assert run.steps == [0, 10, 20] and run.tail_bytes == 0 and run.damaged_bytes == 0


def test_index_rereads_a_file_rewritten_in_place(tmp_path: Path) -> None:
    """A file rewritten under the same inode with more bytes (`cp` over it) is read again
    from its start, not from where the old one ended."""
    write_scan_run(tmp_path / "a", checks=2)
    write_scan_run(tmp_path / "b", checks=4)
    path = events_file(tmp_path / "a")
    run = RunIndex(name=".", path=tmp_path / "a")
    run.refresh()
    assert run.steps == [0, 10]
    other = events_file(tmp_path / "b").read_bytes()
    inode = path.stat().st_ino
    with open(path, "r+b") as handle:  # same inode, other bytes, longer
        handle.write(b"\0" * 64 + other[64:])
        handle.write(other[:64][::-1])
    assert path.stat().st_ino == inode and path.stat().st_size > len(other) - 1
    run.refresh()
    assert run.steps == []  # the rewritten file's first record is damaged: nothing to read
    path.write_bytes(other)
    run.refresh()
    assert run.steps == [0, 10, 20, 30]


def test_index_survives_odd_files_and_finds_new_runs(tmp_path: Path) -> None:
    """A named pipe named like an events file is not opened (it would block), a whole record
    that is no Event is skipped, a second file and a new run are found at the next refresh,
    an `update_ratio` (written the step after a check) adds no check step."""
    write_scan_run(tmp_path / "a", checks=2)
    os.mkfifo(tmp_path / "a" / f"{EVENT_FILE_PREFIX}0.fifo")
    index = LogdirIndex(tmp_path, max_age=0)
    worker = threading.Thread(target=index.refresh, daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "the index blocked on a named pipe"
    assert index.runs()["a"].steps == [0, 10]
    second = tmp_path / "a" / f"{EVENT_FILE_PREFIX}9.second.actwatch"
    version = index.runs()["a"].version
    png = base64.b64decode(ONE_PIXEL)
    writer = RecordWriter(second)
    writer.write(b"not an Event proto \xff\xff\xff")
    image = summaries.image(tags.filters_tag("conv_a", 0), png, width=1, height=1)
    writer.write(summaries.event(0, 0.0, [image]).SerializeToString())  # step 0 again
    values = [summaries.scalar(tags.layer_tag("dead_fraction", "conv_c"), 0.5)]
    writer.write(summaries.event(20, 0.0, values).SerializeToString())
    about = f"{tags.LEARNING_METRICS['update_ratio']} Layer `conv_c`."
    values = [summaries.scalar(tags.layer_tag("update_ratio", "conv_c"), 1e-3, about)]
    writer.write(summaries.event(21, 0.0, values).SerializeToString())
    writer.close()
    write_scan_run(tmp_path / "b" / "nested", checks=1)
    index.refresh()
    runs = index.runs()
    assert sorted(runs) == ["a", "b/nested"]
    assert runs["a"].steps == [0, 10, 20] and runs["a"].layers[-1] == "conv_c"
    assert runs["a"].series("update_ratio")["conv_c"].steps.tolist() == [21]
    assert runs["a"].damaged_bytes == 0 and runs["b/nested"].steps == [0]
    # Step 0's grid written again (a run restarted in its directory): the new one is served,
    # and the version in the page's image URLs changes.
    assert runs["a"].read_image(tags.filters_tag("conv_a", 0), 0) == png
    assert runs["a"].version > version


def _plugin_get(plugin: ActwatchPlugin, route: str, **query: str) -> tuple[int, bytes]:
    from werkzeug.test import Client

    app = plugin.get_plugin_apps()[f"/{route}"]
    response = Client(app).get(f"/{route}", query_string=query)
    return response.status_code, response.get_data()


def test_plugin_unreadable_run_and_is_active(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """is_active() answers at once, True once actwatch data is found; a run whose file
    cannot be read is left out (not a 500) and read once it can be, the others are served;
    a malformed step is a 400."""
    from tensorboard.plugins import base_plugin

    from actwatch.events import reader

    plugin = ActwatchPlugin(base_plugin.TBContext(logdir=str(tmp_path)))
    started = time.monotonic()
    assert plugin.is_active() is False
    assert time.monotonic() - started < 1
    write_scan_run(tmp_path / "good", checks=2)
    write_scan_run(tmp_path / "bad", checks=2)
    plugin._active_scanned = -1e9  # past the throttle
    assert plugin.is_active() is True
    os.symlink(tmp_path / "nowhere", tmp_path / "good" / f"{EVENT_FILE_PREFIX}1.dangling")
    (tmp_path / "good" / f"{EVENT_FILE_PREFIX}2.directory").mkdir()
    bad = events_file(tmp_path / "bad")
    events = reader.events

    def refuse(path: Path, state: object = None) -> Iterator[object]:
        if Path(path) == bad:
            raise PermissionError(13, "Permission denied", str(path))
        return events(path, state)  # type: ignore[arg-type]

    monkeypatch.setattr(reader, "events", refuse)
    plugin._index.max_age = 0  # type: ignore[union-attr]
    status, body = _plugin_get(plugin, "runs")
    assert status == 200 and sorted(json.loads(body)) == ["good"]
    monkeypatch.setattr(reader, "events", events)
    status, body = _plugin_get(plugin, "runs")
    assert status == 200 and json.loads(body)["bad"]["steps"] == [0, 10]
    status, body = _plugin_get(plugin, "image", run="good", tag=tags.filters_tag(XSS, 0), step="10")
    assert status == 200 and body.startswith(b"\x89PNG")
    for step in (" 10", "1_0", "\u0661\u0660", "10.0", "9" * 30):
        status, body = _plugin_get(
            plugin, "image", run="good", tag=tags.filters_tag(XSS, 0), step=step
        )
        assert status == 400 and set(json.loads(body)) == {"error"}, step


def test_requests_while_the_run_is_written_and_replaced(tmp_path: Path) -> None:
    """Request threads reading images and scalars while checks are appended and the file is
    replaced by a shorter one: every answer is a whole PNG or JSON (200, or 404 for a step
    gone), never a 500 or a torn read."""
    from tensorboard.plugins import base_plugin
    from werkzeug.test import Client

    write_scan_run(tmp_path / "a", checks=6)
    path = events_file(tmp_path / "a")
    whole = path.read_bytes()
    short = whole[: _record_ends(path)[2]]  # the file-version event and two checks
    plugin = ActwatchPlugin(base_plugin.TBContext(logdir=str(tmp_path)))
    plugin._index.max_age = 0  # type: ignore[union-attr]
    apps = plugin.get_plugin_apps()
    answers: list[tuple[int, str, bytes]] = []
    stop = threading.Event()

    def ask(route: str, **query: str) -> None:
        client = Client(apps[f"/{route}"])
        while not stop.is_set():
            response = client.get(f"/{route}", query_string=query)
            answers.append((response.status_code, response.mimetype, response.get_data()))

    threads = [
        threading.Thread(target=ask, args=("image",), kwargs=dict(run="a", tag=tag, step="40"))
        for tag in (tags.filters_tag("conv_a", 0), tags.heatmap_tag("block_1/conv", 0))
    ]
    threads.append(
        threading.Thread(target=ask, args=("scalars",), kwargs=dict(run="a", metric="mean"))
    )
    for thread in threads:
        thread.start()
    try:
        for _ in range(3):
            path.write_bytes(short)
            time.sleep(0.2)
            path.write_bytes(whole)
            time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    codes = {code for code, _, _ in answers}
    assert codes <= {200, 404} and 200 in codes, codes
    for code, mime, body in answers:
        if mime == "image/png":
            assert code == 200 and Image.open(io.BytesIO(body)).size == (14, 10)
        else:
            assert mime == "application/json"
            json.loads(body)


def test_no_tensorflow_imported_by_the_plugin(tmp_path: Path) -> None:
    """In a fresh interpreter, without TensorFlow blocked: importing the plugin, indexing a
    run and reading an image back import no TensorFlow."""
    write_scan_run(tmp_path, checks=1)
    code = (
        "import sys\n"
        "from actwatch.dashboard.plugin import ActwatchPlugin\n"
        "from actwatch.dashboard.events_index import LogdirIndex\n"
        f"index = LogdirIndex({str(tmp_path.parent)!r})\n"
        "index.refresh()\n"
        f"run = index.run({tmp_path.name!r})\n"
        "assert run.read_image('filters/conv_a/probe_0', 0).startswith(b'\\x89PNG')\n"
        "assert run.alert_list() == [], run.alert_list()\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ACTWATCH_BLOCK_TENSORFLOW"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]


def test_alert_text_parsed_back() -> None:
    """`tags.alert_texts` parses back to step, layer, kind and the plain message."""
    alerts = [_dead_alert(XSS, 50), _dead_alert("conv_b", 50)]
    ((body, _),) = tags.alert_texts(alerts).values()
    parsed = tags.parse_alerts(50, body, list(SCAN_LAYERS))
    assert [(a.step, a.layer, a.kind, a.message) for a in parsed] == [
        (50, a.layer, a.kind, a.message) for a in alerts
    ]


# Over HTTP ------------------------------------------------------------------------------------


def test_plugins_listing_enables_the_tab(server: Server) -> None:
    """TensorBoard lists `actwatch` as enabled, loaded as an iframe from its ES module."""
    listing = server.json("/data/plugins_listing")
    assert listing["actwatch"]["enabled"] is True
    assert listing["actwatch"]["loading_mechanism"] == {
        "type": "IFRAME",
        "module_path": "/data/plugin/actwatch/index.js",
    }


def test_static_files_and_security_headers(server: Server) -> None:
    """The module and stylesheet are served with their MIME type and nosniff; TensorBoard's
    security validator logs no complaint about any response."""
    for path, mime in (("index.js", "text/javascript"), ("style.css", "text/css")):
        status, headers, body = server.get(f"/data/plugin/actwatch/{path}")
        assert status == 200 and headers["Content-Type"].startswith(mime)
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert b"innerHTML" not in body
    status, headers, _ = server.get("/data/plugin_entry.html", name="actwatch")
    assert status == 200
    # TensorBoard's page for the iframe: scripts from the server itself and its one inline
    # loader (by hash) only; no inline script, no other host ('unsafe-eval' is TensorBoard's).
    (script_src,) = [
        d.split()[1:]
        for d in headers["Content-Security-Policy"].split(";")
        if d.split()[:1] == ["script-src"]
    ]
    assert "'self'" in script_src
    assert all(s in ("'self'", "'unsafe-eval'") or s.startswith("'sha256-") for s in script_src)
    for query in ({"run": "nope"}, {"run": "scan"}):
        status, headers, _ = server.get("/data/plugin/actwatch/alerts", **query)
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Content-Type"].startswith("application/json")
    assert "will become an error" not in server.log.read_text(errors="replace")


FIT_LAYERS = ["conv1", "pool1", "conv2", "pool2"]  # helpers.tiny_cnn's watched layers


def test_runs_lists_actwatch_runs(server: Server, logdir: Path) -> None:
    """`runs`: the runs with actwatch data, their layers in network order, every check."""
    runs = server.json("/data/plugin/actwatch/runs")
    # Not `outside` (a link out of the log directory), nor `keras` (no actwatch data).
    assert sorted(runs) == ["cut", "fit", "live_false", "live_true", "plain", "scan"]
    assert runs["plain"]["layers"] == list(PLAIN_LAYERS) and runs["plain"]["drawn"] == []
    assert runs["plain"]["steps"] == [0, EVERY, 2 * EVERY] and runs["plain"]["probes"] == 0
    scan = runs["scan"]
    assert scan["layers"] == list(SCAN_LAYERS)
    assert scan["steps"] == [EVERY * i for i in range(CHECKS)]
    assert scan["probes"] == 2
    assert scan["metrics"] == sorted([*tags.METRICS, EXTRA_METRIC])
    assert scan["tail_bytes"] == 0
    fit = runs["fit"]
    events = read_events(logdir / "fit")
    # Every check: the steps of the per-layer scalars but `update_ratio`, written at the step
    # after a check.
    steps = {
        s
        for tag in events.scalars
        if tag.partition("/")[2] in FIT_LAYERS and not tag.startswith("update_ratio/")
        for s, _ in events.scalars[tag]
    }
    assert fit["layers"] == FIT_LAYERS and fit["steps"] == sorted(steps)
    assert {s for s, _ in events.scalars["zero_fraction/conv1"]} == steps  # every check
    assert {s for s, _ in events.images["filters/conv1/probe_0"]} <= steps
    updates = {s for s, _ in events.scalars["update_ratio/conv1"]}
    assert updates and not updates & steps
    cut = runs["cut"]
    assert cut["steps"] == scan["steps"][:-1] and cut["tail_bytes"] > 0
    assert cut["damaged_bytes"] == 0 and scan["damaged_bytes"] == 0


def test_image_serves_every_check(server: Server) -> None:
    """`image` serves all 30 checks of a tag, each the grid written at that step, while
    TensorBoard's own images route samples 10 of them."""
    tag = tags.filters_tag(XSS, 0)
    deadline = time.monotonic() + 60
    sampled: list[object] = []
    while True:  # TensorBoard's loaders read the logs in the background
        status, _, body = server.get("/data/plugin/images/images", run="scan", tag=tag, sample=0)
        sampled = json.loads(body) if status == 200 else []
        if len(sampled) == 10 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(sampled) == 10, (status, body[:300])
    for check in range(CHECKS):
        step = check * EVERY
        status, headers, body = server.get(
            "/data/plugin/actwatch/image", run="scan", tag=tag, step=step
        )
        assert status == 200 and headers["Content-Type"] == "image/png"
        assert headers["X-Content-Type-Options"] == "nosniff"
        pixels = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
        assert pixels.shape == (10, 14, 3)
        assert (pixels == _scan_pixel(1, step)).all(), step
    status, _, body = server.get(
        "/data/plugin/actwatch/image", run="scan", tag=tags.heatmap_tag("block_1/conv", 0), step=70
    )
    heatmap = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    assert status == 200 and (heatmap == _scan_pixel(3, 70) // 2).all()
    steps = server.json("/data/plugin/actwatch/images", run="scan")
    assert steps[tags.heatmap_tag("conv_b", 0)] == [EVERY * i for i in range(CHECKS)]
    assert tags.heatmap_tag("conv_b", 1) not in steps


def test_scalars_equal_the_events(server: Server, logdir: Path) -> None:
    """`scalars` holds every per-layer metric's values, equal to the events' scalars."""
    events = read_events(logdir / "fit")
    runs = server.json("/data/plugin/actwatch/runs")
    for metric in runs["fit"]["metrics"]:
        answer = server.json("/data/plugin/actwatch/scalars", run="fit", metric=metric)
        written = {
            layer: dict(events.scalars[tags.layer_tag(metric, layer)])
            for layer in FIT_LAYERS
            if tags.layer_tag(metric, layer) in events.scalars
        }
        assert answer["layers"] == list(written)
        assert answer["steps"] == sorted({s for values in written.values() for s in values})
        for layer, values in zip(answer["layers"], answer["values"], strict=True):
            served = {s: v for s, v in zip(answer["steps"], values, strict=True) if v is not None}
            finite = {s: v for s, v in written[layer].items() if np.isfinite(v)}
            assert served == finite, (metric, layer)
    extra = server.json("/data/plugin/actwatch/scalars", run="scan", metric=EXTRA_METRIC)
    expected = [_scan_value(EXTRA_METRIC, 1, s) for s in extra["steps"]]
    assert extra["values"][1] == pytest.approx(expected, rel=1e-6)


def test_alerts(server: Server, logdir: Path) -> None:
    """`alerts`: step, layer, kind and message of every alert, in step order."""
    fit = server.json("/data/plugin/actwatch/alerts", run="fit")
    (text,) = [t for _, t in read_events(logdir / "fit").texts[tags.ALERTS]][:1]
    assert fit and fit[0]["layer"] == "conv1" and fit[0]["kind"] == "dead"
    assert fit[0]["message"].replace("'conv1'", "`conv1`") in text
    scan = server.json("/data/plugin/actwatch/alerts", run="scan")
    assert [(a["step"], a["layer"], a["kind"]) for a in scan] == [
        (50, XSS, "dead"),
        (50, "conv_b", "dead"),
        (200, XSS, "dead"),
        (200, "conv_b", "dead"),
    ]
    assert scan[0]["message"] == _dead_alert(XSS, 50).message


@pytest.mark.parametrize(
    ("route", "query", "code"),
    [
        ("alerts", {"run": "nope"}, 404),
        ("alerts", {"run": "../../etc"}, 404),
        ("alerts", {"run": "../../../../../../etc/passwd"}, 404),
        ("alerts", {"run": "keras"}, 404),  # a run without actwatch data
        ("alerts", {}, 400),
        ("scalars", {"run": "scan", "metric": "nope"}, 404),
        ("scalars", {"run": "scan"}, 400),
        ("image", {"run": "scan", "tag": "filters/nope/probe_0", "step": "0"}, 404),
        ("image", {"run": "scan", "tag": "dead_fraction/conv_a", "step": "0"}, 404),
        ("image", {"run": "scan", "tag": "filters/conv_a/probe_0", "step": "5"}, 404),
        ("image", {"run": "scan", "tag": "filters/conv_a/probe_0", "step": "x"}, 400),
        ("image", {"run": "scan", "tag": "filters/conv_a/probe_0"}, 400),
        ("image", {"run": "/etc", "tag": "filters/conv_a/probe_0", "step": "0"}, 404),
        ("images", {"run": "scan/../scan"}, 404),
        ("images", {"run": "..%2F..%2Fetc"}, 404),
        ("images", {"run": "outside"}, 404),  # a link out of the log directory
        ("images", {"run": str(Path.cwd())}, 404),
        ("image", {"run": "scan", "tag": "filters/conv_a/probe_0", "step": "1_0"}, 400),
    ],
)
def test_bad_queries_get_json_errors(
    server: Server, route: str, query: dict[str, str], code: int
) -> None:
    """A missing or malformed parameter is a 400, an unknown run/metric/tag/step a 404, both
    as JSON; no parameter reaches outside the log directory."""
    status, headers, body = server.get(f"/data/plugin/actwatch/{route}", **query)
    assert status == code
    assert headers["Content-Type"].startswith("application/json")
    assert set(json.loads(body)) == {"error"}


ONE_PIXEL = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
)


def test_appended_checks_are_served(server: Server, logdir: Path) -> None:
    """A check appended to a run's file after the server started is served within seconds."""
    run = f"live_{server.load_fast}"  # type: ignore[attr-defined]
    path = events_file(logdir / run)
    png = base64.b64decode(ONE_PIXEL)
    values = [
        summaries.scalar(tags.layer_tag("dead_fraction", layer), 0.5) for layer in SCAN_LAYERS
    ]
    values.append(summaries.image(tags.filters_tag("conv_a", 0), png, width=1, height=1))
    writer = RecordWriter(path)
    writer.write(summaries.event(99, 0.0, values).SerializeToString())
    writer.close()
    deadline = time.monotonic() + 30
    while 99 not in server.json("/data/plugin/actwatch/runs")[run]["steps"]:
        assert time.monotonic() < deadline, "the appended check never showed"
        time.sleep(0.5)
    status, _, body = server.get(
        "/data/plugin/actwatch/image", run=run, tag=tags.filters_tag("conv_a", 0), step=99
    )
    assert status == 200 and body == png


# In headless Chromium ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    with chromium_session(tmp_path_factory.mktemp("chromium"), window="1400,1000") as tools:
        yield tools


FRAME = "document.querySelector('iframe').contentDocument"


def _wait_idle(chromium: DevTools, doc: str, timeout: float = 60) -> None:
    """Wait until the page has drawn and every image of it has loaded."""
    check = f"""(() => {{ const d = {doc}; if (!d || !d.body) return false;
      return d.body.dataset.state === 'idle' && d.querySelector('.aw-run') !== null &&
        [...d.images].every(i => i.complete); }})()"""
    deadline = time.monotonic() + timeout
    while not chromium.evaluate(check):
        assert time.monotonic() < deadline, "the actwatch page never finished loading"
        time.sleep(0.1)


def _grids(chromium: DevTools, doc: str, run: str) -> list[tuple[str, int]]:
    """`(src, natural width)` of every filter grid shown for `run`."""
    images: list[tuple[str, int]] = chromium.evaluate(
        f"""[...{doc}.querySelectorAll('.aw-run[data-run="{run}"] img.aw-img-filters')]
        .map(i => [i.src, i.naturalWidth])"""
    )
    return [(src, width) for src, width in images]


def _errors(chromium: DevTools) -> list[str]:
    """Console errors but the one of /favicon.ico (TensorBoard has none at its root): a failed
    image or API request of the page is one."""
    events = chromium.events
    chromium.events = [
        e
        for e in events
        if not (
            e.get("method") == "Log.entryAdded"
            and e["params"]["entry"].get("url", "").endswith("/favicon.ico")
        )
    ]
    try:
        return chromium.errors()
    finally:
        chromium.events = events


def test_page_in_headless_chromium(server: Server, chromium: DevTools) -> None:
    """The tab renders layer names as text, two runs side by side; the slider, the arrow keys
    and a heatmap click change the step, and the grids' bytes with it; no console error."""
    chromium.open(f"{server.url}/#actwatch")
    _wait_idle(chromium, FRAME)
    doc = FRAME
    # Pick `fit` and `scan` (the first two runs are picked at first).
    chromium.evaluate(
        f"""[...{doc}.querySelectorAll('.aw-run-choice')]
        .filter(l => ['fit', 'scan'].includes(l.textContent) !== l.querySelector('input').checked)
        .forEach(l => l.querySelector('input').click())"""
    )
    _wait_idle(chromium, doc)
    runs = chromium.evaluate(f"[...{doc}.querySelectorAll('.aw-run')].map(r => r.dataset.run)")
    assert sorted(runs) == ["fit", "scan"]
    text = chromium.evaluate(f"{doc}.body.innerText")
    for layer in (*FIT_LAYERS, *SCAN_LAYERS):
        assert layer in text
    assert chromium.evaluate(f"{doc}.querySelectorAll('img:not(.aw-img)').length") == 0
    assert chromium.evaluate(f"{doc}.querySelector('[onerror]')") is None
    assert not any(e.get("method") == "Page.javascriptDialogOpening" for e in chromium.events)
    assert "step 200" in text and "'conv_b'" in text  # the alerts, listed

    # The slider: every check of the run, each step its own grids.
    slider = f"{doc}.querySelector('.aw-slider')"
    runs = server.json("/data/plugin/actwatch/runs")
    steps = sorted({*runs["fit"]["steps"], *runs["scan"]["steps"]})
    assert chromium.evaluate(f"{slider}.max") == str(len(steps) - 1)
    seen = []
    for step in (30, 170):
        chromium.evaluate(
            f"(() => {{ const s = {slider}; s.value = '{steps.index(step)}'; "
            "s.dispatchEvent(new Event('input')); })()"
        )
        _wait_idle(chromium, doc)
        assert chromium.evaluate(f"{doc}.body.dataset.step") == str(step)
        grids = _grids(chromium, doc, "scan")
        assert len(grids) == len(SCAN_LAYERS) and all(width == 14 for _, width in grids)
        seen.append([server.get(src.removeprefix(server.url))[2] for src, _ in grids])
    assert all(a != b for a, b in zip(*seen, strict=True))
    # The arrow keys step through checks.
    chromium.evaluate(
        f"{doc}.dispatchEvent(new KeyboardEvent('keydown', {{key: 'ArrowRight', bubbles: true}}))"
    )
    _wait_idle(chromium, doc)
    assert chromium.evaluate(f"{doc}.body.dataset.step") == str(180)
    # A click on a heatmap cell selects that layer and step.
    chromium.evaluate(
        f"""(() => {{ const c = {doc}.querySelector('.aw-run[data-run="scan"] canvas');
        const r = c.getBoundingClientRect(); const cell = r.width / {CHECKS};
        c.dispatchEvent(new MouseEvent('click', {{clientX: r.left + cell * 5.5,
          clientY: r.top + (8 + 16 * 2.5) * r.height / c.height, bubbles: true}})); }})()"""
    )
    _wait_idle(chromium, doc)
    assert chromium.evaluate(f"{doc}.body.dataset.step") == str(5 * EVERY)
    assert "conv_b at step 50" in chromium.evaluate(f"{doc}.body.innerText")
    # A click on a filter's tile shows its dead/alive history, read from the grids' dead
    # marks: conv1's filter 0 never fires (bias -100), so it is dead at every check.
    chromium.evaluate(
        f"""(() => {{ const i = {doc}.querySelector(
          '.aw-run[data-run="fit"] .aw-layer[data-layer="conv1"] img.aw-img-filters');
        const r = i.getBoundingClientRect(); const k = r.width / i.naturalWidth;
        i.dispatchEvent(new MouseEvent('click', {{clientX: r.left + 10 * k,
          clientY: r.top + 10 * k, bubbles: true}})); }})()"""
    )
    deadline = time.monotonic() + 30
    while not chromium.evaluate(f"!!{doc}.querySelector('.aw-history .aw-strip')"):
        assert time.monotonic() < deadline, chromium.evaluate(f"{doc}.body.innerText")
        time.sleep(0.1)
    history = chromium.evaluate(f"{doc}.querySelector('.aw-history').innerText")
    checks = len(server.json("/data/plugin/actwatch/images", run="fit")["filters/conv1/probe_0"])
    assert f"Filter 0 of conv1 (probe 0): dead at {checks} of {checks} checks" in history
    assert _errors(chromium) == []

    # A run with scalars only beside one cut inside its last record: its heatmap and a note,
    # no image asked for; the other's grids and a note that nothing whole is lost.
    chromium.evaluate(
        f"""[...{doc}.querySelectorAll('.aw-run-choice')]
        .filter(l => ['plain', 'cut'].includes(l.textContent) !== l.querySelector('input').checked)
        .forEach(l => l.querySelector('input').click())"""
    )
    _wait_idle(chromium, doc)
    plain = f"{doc}.querySelector('.aw-run[data-run=\"plain\"]')"
    assert "no filter grids" in chromium.evaluate(f"{plain}.innerText")
    assert chromium.evaluate(f"{plain}.querySelectorAll('img').length") == 0
    labels = chromium.evaluate(
        f"[...{plain}.querySelectorAll('.aw-label')].map(l => l.textContent)"
    )
    assert labels == list(PLAIN_LAYERS)
    assert len(_grids(chromium, doc, "cut")) == len(SCAN_LAYERS)  # block_1/conv's too
    cut = chromium.evaluate(f"{doc}.querySelector('.aw-run[data-run=\"cut\"]').innerText")
    assert "not a whole record yet" in cut and "nothing written whole is lost" in cut
    # A folded alert list stays folded when the page draws again (a slider step).
    summary = f"{doc}.querySelector('.aw-run[data-run=\"cut\"] .aw-alerts summary')"
    chromium.evaluate(f"{summary}.click()")
    time.sleep(0.2)  # the toggle event is asynchronous
    chromium.evaluate(
        f"{doc}.dispatchEvent(new KeyboardEvent('keydown', {{key: 'ArrowLeft', bubbles: true}}))"
    )
    _wait_idle(chromium, doc)
    assert chromium.evaluate(f"{summary}.parentElement.open") is False
    assert _errors(chromium) == []

    # The plugin's own page, opened directly, is the same page.
    chromium.open(f"{server.url}/data/plugin_entry.html?name=actwatch")
    _wait_idle(chromium, "document")
    assert XSS in chromium.evaluate("document.body.innerText")
    assert _errors(chromium) == []
    screenshot = os.environ.get("ACTWATCH_SCREENSHOT")
    if screenshot and server.load_fast == "true":  # type: ignore[attr-defined]
        shot = chromium.call("Page.captureScreenshot", format="png")
        Path(screenshot).write_bytes(base64.b64decode(shot["data"]))


def test_logdir_copy_is_not_needed(tmp_path: Path) -> None:
    """An empty log directory: no runs, and the index does not fail."""
    index = LogdirIndex(tmp_path, max_age=0)
    index.refresh()
    assert index.runs() == {}
    shutil.rmtree(tmp_path)
    index.refresh()
    assert index.runs() == {}
