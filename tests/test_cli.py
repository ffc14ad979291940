"""The `actwatch` command through a subprocess: `report`, `inspect` and `demo`."""

from __future__ import annotations

import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

import actwatch

from .fit_logs import fit_run
from .helpers import tiny_cnn

pytestmark = pytest.mark.slow


def actwatch_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KERAS_BACKEND": keras.backend.backend(), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, "-m", "actwatch", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


class _Table(HTMLParser):
    """The rows of the first table of a page, as text cells."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None
        self._tables = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self._tables += 1
        if self._tables == 1 and tag == "tr":
            self.rows.append([])
        if self._tables == 1 and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


class TestReport:
    def test_report_of_a_real_fit(self, tmp_path: Path) -> None:
        """`actwatch report LOGDIR -o FILE` writes the page and its figures and says where."""
        fit_run(tmp_path / "logs" / "run1", dead=2)
        out = tmp_path / "site" / "r.html"
        done = actwatch_cli("report", tmp_path / "logs", "-o", out)
        assert done.returncode == 0, done.stderr
        assert f"Report written to {out}" in done.stdout
        assert f"Figures: {tmp_path / 'site' / 'r_figures'}" in done.stdout
        assert "run1" in out.read_text(encoding="utf-8")
        figures = sorted(p.name for p in (tmp_path / "site" / "r_figures").iterdir())
        assert figures == [
            "00-run1-dead-fraction.png",
            "00-run1-filters-00-conv1.png",
            "00-run1-filters-01-pool1.png",
            "00-run1-filters-02-conv2.png",
            "00-run1-filters-03-pool2.png",
            "00-run1-sparsity.png",
        ]
        assert "\r" not in done.stderr  # no progress bar when stderr is not a terminal

    def test_missing_logdir_is_one_clear_line(self, tmp_path: Path) -> None:
        done = actwatch_cli("report", tmp_path / "nowhere")
        assert done.returncode == 2
        assert "actwatch report: error: Invalid value for LOGDIR:" in done.stderr
        assert "does not exist" in done.stderr
        assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    tiny_cnn().save(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """A real photo (JPEG, larger than the model's input) and a generated PNG."""
    from skimage import data

    folder = tmp_path_factory.mktemp("images")
    photo = folder / "astronaut.jpg"
    Image.fromarray(data.astronaut()).resize((64, 64)).save(photo)
    generated = folder / "noise.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(generated)
    return [photo, generated]


class TestInspect:
    def test_inspect_writes_grids_heatmaps_and_statistics(
        self, saved_model: Path, images: list[Path], tmp_path: Path
    ) -> None:
        """PNG figures per image, and a table equal to `activation_stats` on the same images."""
        out = tmp_path / "inspect"
        done = actwatch_cli(
            "inspect",
            saved_model,
            *images,
            "--layers",
            "conv1",
            "pool2",
            "--preprocess",
            "scale255",
            "-o",
            out,
        )
        assert done.returncode == 0, done.stderr
        assert f"Open {out / 'stats.html'}" in done.stdout
        assert sorted(p.name for p in out.iterdir()) == [
            "filters-00-astronaut.png",
            "filters-01-noise.png",
            "heatmaps-00-astronaut.png",
            "heatmaps-01-noise.png",
            "stats.html",
            "stats.png",
        ]
        for png in out.glob("*.png"):
            assert min(Image.open(png).size) > 100
        table = _Table()
        table.feed((out / "stats.html").read_text(encoding="utf-8"))
        header, *rows = table.rows
        assert header[:5] == ["layer", "output shape", "filters", "zero fraction", "dead"]
        model = keras.saving.load_model(saved_model, safe_mode=True)
        stats = actwatch.activation_stats(
            model, [str(i) for i in images], ["conv1", "pool2"], preprocess=lambda x: x / 255.0
        )
        assert [row[0] for row in rows] == ["conv1", "pool2"]
        for row in rows:
            s = stats[row[0]]
            assert row[1] == {"conv1": "(None, 16, 16, 4)", "pool2": "(None, 4, 4, 8)"}[row[0]]
            assert row[2] == str(s.filters)
            assert row[3] == f"{s.zero_fraction:.3f}"
            assert row[4] == f"{s.dead_count} ({s.dead_fraction:.0%})"
            assert row[6] == f"{s.hoyer:.3f}"

    def test_safe_mode_refuses_a_lambda_layer(self, images: list[Path], tmp_path: Path) -> None:
        """A model holding Python code (a Lambda layer) is not loaded: nothing from it runs."""
        inputs = keras.Input((16, 16, 3))
        x = keras.layers.Lambda(lambda t: t * 2.0, name="code")(inputs)
        outputs = keras.layers.Conv2D(2, 3, activation="relu", name="conv")(x)
        path = tmp_path / "lambda.keras"
        keras.Model(inputs, outputs).save(path)
        done = actwatch_cli("inspect", path, images[0], "-o", tmp_path / "out")
        assert done.returncode == 2
        assert f"actwatch inspect: error: Could not load '{path}' as a Keras model" in done.stderr
        assert "safe_mode" in done.stderr
        assert not (tmp_path / "out").exists()

    def test_unknown_layer_and_missing_image(
        self, saved_model: Path, images: list[Path], tmp_path: Path
    ) -> None:
        done = actwatch_cli("inspect", saved_model, images[0], "--layers", "convX")
        assert done.returncode == 2
        assert "no layer named 'convX'" in done.stderr and "Traceback" not in done.stderr
        done = actwatch_cli("inspect", saved_model, tmp_path / "missing.png")
        assert done.returncode == 2
        assert "missing.png" in done.stderr and "Traceback" not in done.stderr

    def test_preprocess_choices_are_documented(self) -> None:
        done = actwatch_cli("inspect", "--help")
        assert done.returncode == 0
        for choice in ("none", "scale255", "tf", "torch", "caffe"):
            assert f"  {choice} " in done.stdout


def _image_folder(root: Path) -> Path:
    """Two classes of 6 small PNGs each (the Caltech-101 layout)."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(("bright", "dark")):
        (root / name).mkdir(parents=True)
        for i in range(6):
            base = 200 if k == 0 else 40
            pixels = np.clip(base + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_demo_with_and_without_data_ends_with_a_report(tmp_path: Path) -> None:
    """Two demo runs (generated data, an image folder) and a report comparing them."""
    logs, page = tmp_path / "logs", tmp_path / "reports" / "demo.html"
    common = ["--epochs", "1", "--size", "32", "--log-dir", logs, "--report", page]
    done = actwatch_cli("demo", "--samples", "64", "--run", "generated", *common)
    assert done.returncode == 0, done.stderr
    assert f"Report of every run under {logs}: {page}" in done.stdout
    folder = _image_folder(tmp_path / "images")
    done = actwatch_cli("demo", "--data", folder, "--run", "folder", *common)
    assert done.returncode == 0, done.stderr
    assert "Found 12 files belonging to 2 classes." in done.stdout + done.stderr
    text = page.read_text(encoding="utf-8")
    assert "sparsity curves of run folder" in text
    assert "sparsity curves of run generated" in text
    names = {p.name for p in (tmp_path / "reports" / "demo_figures").iterdir()}
    assert {"00-folder-sparsity.png", "01-generated-sparsity.png"} <= names


def test_demo_rejects_a_data_path_that_is_not_a_folder(tmp_path: Path) -> None:
    done = actwatch_cli("demo", "--data", tmp_path / "nope", "--log-dir", tmp_path / "logs")
    assert done.returncode == 2
    assert "Invalid value for --data:" in done.stderr and "is not a directory" in done.stderr
