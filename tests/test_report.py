"""`actwatch.report`: real logs from a real fit, read back and drawn as one HTML page."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from actwatch import report
from actwatch.events import reader, runs, tags
from actwatch.events.sink import Sink

from .chromium import chromium_session
from .fit_logs import MATH_LAYER, SCRIPT_LAYER, fit_run, write_script_run
from .helpers import read_events

# Reading, rendering and serving: no Keras backend involved, so once per make test.
pytestmark = pytest.mark.read_path

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LOGDIR with three runs: healthy, dying (2 of conv1's 4 filters dead), and one written
    with the Sink whose layer names are markup and broken matplotlib math."""
    root = tmp_path_factory.mktemp("logs")
    fit_run(root / "healthy")
    fit_run(root / "dying", dead=2)
    write_script_run(root / "nested" / "script")
    return root


@pytest.fixture(scope="module")
def page(logs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out") / "report.html"
    assert report.write_report(logs, out, progress=False) == out
    return out


class _Images(HTMLParser):
    """Collects every <img> (alt, src) and the page's text."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[tuple[str, str]] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag == "img":
            values = dict(attrs)
            self.images.append((values.get("alt") or "", values.get("src") or ""))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(path: Path) -> _Images:
    parser = _Images()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


class TestReading:
    def test_read_run_equals_tensorboard_event_accumulator(self, logs: Path) -> None:
        """Scalars, probe-0 filter grids and alerts are exactly what TensorBoard reads."""
        for name in ("healthy", "dying"):
            run = report.read_run(logs / name)
            expected = read_events(logs / name)
            assert {t: sorted(v.items()) for t, v in run.scalars.items()} == {
                t: sorted((s, pytest.approx(v)) for s, v in values)
                for t, values in expected.scalars.items()
            }
            for layer, grids in run.grids.items():
                want = expected.images[tags.filters_tag(layer, 0)]
                assert sorted(grids) == [s for s, _ in want]
                for step, image in want:
                    decoded = np.asarray(Image.open(io.BytesIO(grids[step])).convert("RGB"))
                    np.testing.assert_array_equal(decoded, image)
            assert run.alerts == expected.texts.get(tags.ALERTS, [])

    def test_layers_steps_and_alerts_of_a_real_fit(self, logs: Path) -> None:
        """Layers come in model order; 3 epochs of 3 batches give checks at 0, 3, 6 and 9."""
        healthy = report.read_run(logs / "healthy")
        assert healthy.layers == ["conv1", "pool1", "conv2", "pool2"]
        assert healthy.steps == [0, 3, 6, 9]
        assert healthy.alerts == []
        dying = report.read_run(logs / "dying")
        assert dying.layers == ["conv1", "pool1", "conv2", "pool2"]
        assert dying.series("dead_fraction", "conv1") == ([0, 3, 6, 9], [0.5] * 4)
        assert [step for step, _ in dying.alerts] == [0]
        assert "2 filter(s) of layer `conv1` are dead: [0, 1]." in dying.alerts[0][1]

    def test_reader_equals_tensorboard_record_reader(self, logs: Path) -> None:
        """The one reader's records are exactly those of TensorBoard's own record reader
        (TensorFlow's C reader on the tensorflow backend, TensorBoard's stub elsewhere)."""
        from tensorboard.backend.event_processing import event_file_loader

        files = reader.event_files(logs / "dying")
        assert files
        for file in files:
            ours = [record.payload for record, _ in reader.events(file)]
            theirs = list(event_file_loader.RawEventFileLoader(str(file)).Load())
            assert len(ours) > 4
            assert ours == theirs

    def test_truncated_file_keeps_every_complete_check(self, logs: Path, tmp_path: Path) -> None:
        """A file cut mid-record (training still writing) reads up to the last whole record."""
        (source,) = reader.event_files(logs / "healthy")
        whole = [event for _, event in reader.events(source)]
        copy = tmp_path / source.name
        copy.write_bytes(source.read_bytes()[:-100])
        cut = [event for _, event in reader.events(copy)]
        assert [e.step for e in cut] == [e.step for e in whole[:-1]]

    def test_corrupt_last_record_is_reported_and_skipped(
        self, logs: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A last record whose CRC fails is left out with a warning naming the file."""
        (source,) = reader.event_files(logs / "healthy")
        data = bytearray(source.read_bytes())
        data[-10] ^= 0xFF  # inside the last record's payload
        copy = tmp_path / source.name
        copy.write_bytes(bytes(data))
        with caplog.at_level(logging.WARNING, logger="actwatch"):
            events = list(reader.events(copy))
        assert len(events) == len(list(reader.events(source))) - 1
        assert "failed its data CRC check" in caplog.text
        assert copy.name in caplog.text

    def test_reading_api_is_still_reachable_from_report(self) -> None:
        """`actwatch.report` re-exports what moved to `actwatch.events.runs` (API unchanged)."""
        assert report.RunLog is runs.RunLog
        assert report.find_runs is runs.find_runs
        assert report.read_run is runs.read_run
        assert report.__all__ == ["RunLog", "find_runs", "read_run", "write_report"]

    def test_runs_are_found_recursively_and_sorted(self, logs: Path) -> None:
        assert report.find_runs(logs) == [logs / "dying", logs / "healthy", logs / "nested/script"]


class TestPage:
    def test_every_section_and_run_is_on_the_page(self, page: Path) -> None:
        """One page: each run's curves, dead heatmap, filter triptychs and alerts."""
        parsed = _parse(page)
        text = " ".join(parsed.text)
        for section in ("Sparsity over training", "Dead filters", "Filter grids", "Alerts"):
            assert section in text
        for run in ("healthy", "dying", "nested/script"):
            assert f"sparsity curves of run {run}" in [alt for alt, _ in parsed.images]
            assert f"dead fraction of run {run}" in [alt for alt, _ in parsed.images]
        # Filter triptychs: 4 layers in each fitted run, 2 in the Sink run.
        filter_images = [alt for alt, _ in parsed.images if alt.startswith("filters of ")]
        assert len(filter_images) == 10
        assert "not watched" in text  # the script run has none of the fitted layers
        for run in ("healthy", "dying"):  # histograms and the colorful dimension (issue 12)
            assert f"activation histograms of run {run}" in [alt for alt, _ in parsed.images]
            assert f"colorful dimension of run {run}" in [alt for alt, _ in parsed.images]
            assert f"signals of run {run}" in [alt for alt, _ in parsed.images]
        assert "Activation histograms and the colorful dimension" in text

    def test_images_are_inline_pngs_and_match_the_files(self, page: Path) -> None:
        """Every <img> is a PNG data URI, and each is also a file in <stem>_figures."""
        parsed = _parse(page)
        files = sorted((page.parent / "report_figures").glob("*.png"))
        # 3 runs x (curves, dead), 10 filter triptychs, 2 fitted runs x (histograms, signals,
        # colorful, learning rate: their update ratios).
        assert len(parsed.images) == len(files) == 3 * 2 + 10 + 2 * 4
        inline = []
        for _, src in parsed.images:
            assert src.startswith("data:image/png;base64,")
            png = base64.b64decode(src.split(",", 1)[1])
            width, height = Image.open(io.BytesIO(png)).size
            assert width > 100 and height > 50
            inline.append(png)
        assert sorted(inline) == sorted(f.read_bytes() for f in files)

    def test_triptych_picks_first_middle_and_last_check(self, logs: Path) -> None:
        """Of the checks that have images, the first, the middle and the last are drawn."""
        picked = report.page._picked_steps
        assert picked([0, 3, 6, 9]) == [("first", 0), ("middle", 6), ("last", 9)]
        assert picked([0, 3, 6]) == [("first", 0), ("middle", 3), ("last", 6)]
        assert picked([4, 8]) == [("first", 4), ("last", 8)]
        assert picked([4]) == [("first", 4)]
        assert picked([]) == []
        # The sink may skip a check's images under load, never its scalars.
        run = report.read_run(logs / "healthy")
        assert run.grids["conv1"].keys() <= set(run.steps)
        assert 0 in run.grids["conv1"]

    def test_names_from_the_logs_are_text_not_markup(self, page: Path) -> None:
        """Layer names and alert texts that are HTML appear escaped; the page has no script."""
        source = page.read_text(encoding="utf-8")
        parsed = _parse(page)
        assert "script" not in parsed.tags
        assert parsed.tags.count("img") == len(parsed.images) == 24
        assert "<b>lost</b>" not in source
        assert "&lt;b&gt;lost&lt;/b&gt;" in source
        text = "".join(parsed.text)
        assert SCRIPT_LAYER in text
        assert MATH_LAYER in text
        assert "<i>co</i>" not in source
        assert "Content-Security-Policy" in source

    def test_alerts_of_the_dying_run_are_listed(self, page: Path) -> None:
        parsed = _parse(page)
        text = " ".join(parsed.text)
        assert "step 0:" in text and "are dead" in text
        assert "no alerts" in text  # the healthy run

    def test_same_report_with_and_without_tensorflow(self, logs: Path, page: Path) -> None:
        """`actwatch report` with TensorFlow made unimportable writes the very same page."""
        out = page.parent.parent / "notf" / "report.html"
        code = (
            "import sys; sys.modules['tensorflow'] = None\n"
            "from actwatch.cli import main\n"
            f"code = main(['report', {str(logs)!r}, '-o', {str(out)!r}])\n"
            "assert sys.modules['tensorflow'] is None\n"
            "sys.exit(code)\n"
        )
        env = {**os.environ, "KERAS_BACKEND": "jax"}
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr
        assert out.read_text(encoding="utf-8") == page.read_text(encoding="utf-8")
        for figure in sorted((page.parent / "report_figures").glob("*.png")):
            assert (out.parent / "report_figures" / figure.name).read_bytes() == figure.read_bytes()


class TestProgressAndErrors:
    def test_progress_bar_when_asked(
        self, logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        report.write_report(logs / "healthy", tmp_path / "r.html", progress=True)
        err = capsys.readouterr().err
        assert "\rreading events [" in err and "100%" in err and "MB" in err
        assert "\rdrawing figures [" in err and "10/10 figures" in err

    def test_no_progress_bar_when_stderr_is_not_a_terminal(
        self, logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        report.write_report(logs / "healthy", tmp_path / "r.html")
        assert capsys.readouterr().err == ""

    def test_missing_logdir(self, tmp_path: Path) -> None:
        with pytest.raises(FileNotFoundError, match=r"'.*nowhere' does not exist\. Pass the"):
            report.write_report(tmp_path / "nowhere", tmp_path / "r.html")

    def test_logdir_without_event_files(self, tmp_path: Path) -> None:
        (tmp_path / "empty").mkdir()
        with pytest.raises(FileNotFoundError, match=r"No TensorBoard event files"):
            report.write_report(tmp_path / "empty", tmp_path / "r.html")

    def test_logdir_with_other_event_files_only(self, tmp_path: Path) -> None:
        """Event files without actwatch tags (say Keras' TensorBoard callback) are refused."""
        sink = Sink(str(tmp_path / "keras" / "train"))
        sink.submit(1, scalars={"epoch_loss": (0.5, "loss")})
        sink.close()
        with pytest.raises(ValueError, match=r"No actwatch data .* \['train'\]"):
            report.write_report(tmp_path / "keras", tmp_path / "r.html")

    def test_other_runs_are_skipped_with_a_note(self, logs: Path, tmp_path: Path) -> None:
        root = tmp_path / "mixed"
        shutil.copytree(logs / "healthy", root / "healthy")
        sink = Sink(str(root / "validation"))
        sink.submit(1, scalars={"epoch_loss": (0.5, "loss")})
        sink.close()
        out = report.write_report(root, tmp_path / "r.html")
        assert "Skipped (no actwatch tags): validation." in out.read_text(encoding="utf-8")

    def test_output_that_is_a_directory(self, logs: Path, tmp_path: Path) -> None:
        with pytest.raises(IsADirectoryError, match=r"is a directory\. Pass a file name"):
            report.write_report(logs, tmp_path)


# Headless Chromium -----------------------------------------------------------------------


@pytest.fixture
def chromium(tmp_path: Path) -> Any:
    with chromium_session(tmp_path) as tools:
        yield tools


_PAGE_FACTS = """JSON.stringify({
  images: document.images.length,
  decoded: [...document.images].filter(i => i.complete && i.naturalWidth > 0).length,
  scripts: document.querySelectorAll('script').length,
  text: document.body.innerText,
  alts: [...document.images].map(i => i.alt),
})"""


@pytest.mark.slow
def test_report_in_headless_chromium(chromium: Any, page: Path, tmp_path: Path) -> None:
    """The page renders: every image decodes, no console error, markup names are text."""
    # The console check must see errors when there are some.
    control = tmp_path / "control.html"
    control.write_text("<!DOCTYPE html><script>console.error('control error')</script>")
    chromium.open(control.as_uri())
    assert any("control error" in e for e in chromium.errors())

    chromium.call(
        "Emulation.setDeviceMetricsOverride",
        width=1280,
        height=900,
        deviceScaleFactor=1,
        mobile=False,
    )
    chromium.open(page.as_uri())
    facts = json.loads(chromium.evaluate(_PAGE_FACTS))
    assert facts["images"] == 24
    assert facts["decoded"] == 24
    assert facts["scripts"] == 0
    assert SCRIPT_LAYER in facts["text"]
    assert MATH_LAYER in facts["text"]
    assert "<b>lost</b>" in facts["text"]
    assert f"filters of {SCRIPT_LAYER} in run nested/script" in facts["alts"]
    shot = chromium.call("Page.captureScreenshot", format="png")
    image = Image.open(io.BytesIO(base64.b64decode(shot["data"])))
    assert image.size == (1280, 900)
    pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.std() > 10  # a rendered page, not a blank one
    (tmp_path / "screenshot.png").write_bytes(base64.b64decode(shot["data"]))
    assert chromium.errors() == []
