"""The actwatch tab of TensorBoard: the events index, the data API over a real `tensorboard`
process (both loaders), and the page in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from actwatch import summaries, tags
from actwatch.alerts import Alert
from actwatch.dashboard.events_index import LogdirIndex, RunIndex, parse_alerts
from actwatch.records import EVENT_FILE_PREFIX, RecordWriter, frame
from actwatch.sink import Sink

from .chromium import DevTools, chromium_session
from .fit_logs import fit_run
from .helpers import read_events
from .tensorboard_server import Server, tensorboard_server

pytestmark = pytest.mark.slow

XSS = "<img src=x onerror=alert(1)>"
SCAN_LAYERS = ("conv_a", XSS, "conv_b")
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
    no actwatch data), `live_true`/`live_false` (2 checks; the tests append to them)."""
    root = tmp_path_factory.mktemp("dashboard_logs")
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
    return root


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


def test_alert_text_parsed_back() -> None:
    """`tags.alert_texts` parses back to step, layer, kind and the plain message."""
    alerts = [_dead_alert(XSS, 50), _dead_alert("conv_b", 50)]
    ((body, _),) = tags.alert_texts(alerts).values()
    parsed = parse_alerts(50, body, list(SCAN_LAYERS))
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
    assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]
    for query in ({"run": "nope"}, {"run": "scan"}):
        status, headers, _ = server.get("/data/plugin/actwatch/alerts", **query)
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Content-Type"].startswith("application/json")
    assert "will become an error" not in server.log.read_text(errors="replace")


FIT_LAYERS = ["conv1", "pool1", "conv2", "pool2"]  # helpers.tiny_cnn's watched layers


def test_runs_lists_actwatch_runs(server: Server, logdir: Path) -> None:
    """`runs`: the runs with actwatch data, their layers in network order, every check."""
    runs = server.json("/data/plugin/actwatch/runs")
    assert sorted(runs) == ["cut", "fit", "live_false", "live_true", "scan"]
    scan = runs["scan"]
    assert scan["layers"] == list(SCAN_LAYERS)
    assert scan["steps"] == [EVERY * i for i in range(CHECKS)]
    assert scan["probes"] == 2
    assert scan["metrics"] == sorted([*tags.METRICS, EXTRA_METRIC])
    assert scan["tail_bytes"] == 0
    fit = runs["fit"]
    events = read_events(logdir / "fit")
    steps = {
        s
        for tag in events.scalars
        if tag.partition("/")[2] in FIT_LAYERS
        for s, _ in events.scalars[tag]
    }
    assert fit["layers"] == FIT_LAYERS and fit["steps"] == sorted(steps)
    assert {s for s, _ in events.scalars["zero_fraction/conv1"]} <= steps  # every check
    cut = runs["cut"]
    assert cut["steps"] == scan["steps"][:-1] and cut["tail_bytes"] > 0


def test_image_serves_every_check(server: Server) -> None:
    """`image` serves all 30 checks of a tag, each the grid written at that step, while
    TensorBoard's own images route samples 10 of them."""
    tag = tags.filters_tag(XSS, 0)
    deadline = time.monotonic() + 60
    while True:  # TensorBoard's loaders read the logs in the background
        sampled = server.json("/data/plugin/images/images", run="scan", tag=tag, sample=0)
        if len(sampled) == 10 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert len(sampled) == 10
    for check in range(CHECKS):
        step = check * EVERY
        status, headers, body = server.get(
            "/data/plugin/actwatch/image", run="scan", tag=tag, step=step
        )
        assert status == 200 and headers["Content-Type"] == "image/png"
        pixels = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
        assert pixels.shape == (10, 14, 3)
        assert (pixels == _scan_pixel(1, step)).all(), step
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


def test_appended_checks_are_served(server: Server, logdir: Path) -> None:
    """A check appended to a run's file after the server started is served within seconds."""
    run = f"live_{server.load_fast}"  # type: ignore[attr-defined]
    path = events_file(logdir / run)
    png = base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg=="
    )
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
    """Console errors but the 404 of /favicon.ico (TensorBoard has none at its root)."""
    favicon = [
        e
        for e in chromium.events
        if e.get("method") == "Log.entryAdded"
        and e["params"]["entry"].get("url", "").endswith("/favicon.ico")
    ]
    return [e for e in chromium.errors() if not (favicon and "404" in e)]


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

    # The plugin's own page, opened directly, is the same page.
    chromium.open(f"{server.url}/data/plugin_entry.html?name=actwatch")
    _wait_idle(chromium, "document")
    assert XSS in chromium.evaluate("document.body.innerText")
    assert _errors(chromium) == []
    screenshot = os.environ.get("ACTWATCH_SCREENSHOT")
    if screenshot and server.load_fast == "true":  # type: ignore[attr-defined]
        shot = chromium.call("Page.captureScreenshot", format="png")
        Path(screenshot).write_bytes(base64.b64decode(shot["data"]))


def test_no_tensorflow_import_in_the_plugin() -> None:
    """The plugin's modules import no TensorFlow (checked in this process's modules)."""
    import sys

    import actwatch.dashboard.plugin  # noqa: F401

    if os.environ.get("ACTWATCH_BLOCK_TENSORFLOW") == "1":
        assert sys.modules.get("tensorflow") is None


def test_logdir_copy_is_not_needed(tmp_path: Path) -> None:
    """An empty log directory: no runs, and the index does not fail."""
    index = LogdirIndex(tmp_path, max_age=0)
    index.refresh()
    assert index.runs() == {}
    shutil.rmtree(tmp_path)
    index.refresh()
    assert index.runs() == {}
