"""The `actwatch` command through a subprocess: `report`, `inspect` and `demo`."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import keras
import numpy as np
import pytest
from matplotlib import cbook
from PIL import Image

import actwatch
from actwatch import cli, demo
from actwatch.inspection import import_modules

from .conftest import BLOCK_ENV
from .fit_logs import fit_run
from .helpers import tiny_cnn

pytestmark = pytest.mark.slow

BACKEND = keras.backend.backend()


def actwatch_cli(
    *args: str | Path,
    cwd: Path | None = None,
    block: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m actwatch ARGS` as a user who set no TF_CPP_MIN_LOG_LEVEL (unless `env`
    does). The modules in `block` (and TensorFlow, when this test run blocks it: see
    conftest.py) cannot be imported in that process."""
    block = [*block, *(["tensorflow"] if os.environ.get(BLOCK_ENV) == "1" else [])]
    command = [sys.executable, "-m", "actwatch"]
    if block:
        command[1:] = [
            "-c",
            f"import sys\nfor m in {block!r}: sys.modules[m] = None\n"
            "from actwatch.cli import main\nsys.exit(main())",
        ]
    inherited = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    full_env = {**inherited, "KERAS_BACKEND": BACKEND, "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    return subprocess.run(
        [*command, *map(str, args)],
        capture_output=True,
        text=True,
        env=full_env,
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
            "00-run1-colorful-dimension.png",
            "00-run1-dead-fraction.png",
            "00-run1-filters-00-conv1.png",
            "00-run1-filters-01-pool1.png",
            "00-run1-filters-02-conv2.png",
            "00-run1-filters-03-pool2.png",
            "00-run1-histograms.png",
            "00-run1-learning-rate.png",
            "00-run1-signals.png",
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
    folder = tmp_path_factory.mktemp("images")
    photo = folder / "hopper.jpg"
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as image:
        image.resize((64, 64)).save(photo)
    generated = folder / "noise.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(generated)
    return [photo, generated]


class TestInspect:
    def test_inspect_writes_grids_heatmaps_and_statistics(
        self, saved_model: Path, images: list[Path], tmp_path: Path
    ) -> None:
        """PNG figures per image, and a table equal to `activation_stats` on the same images
        (`--inference`: the inference view)."""
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
            "--inference",
            "-o",
            out,
        )
        assert done.returncode == 0, done.stderr
        assert f"Open {out / 'stats.html'}" in done.stdout
        assert sorted(p.name for p in out.iterdir()) == [
            "filters-00-hopper.png",
            "filters-01-noise.png",
            "heatmaps-00-hopper.png",
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
            model,
            [str(i) for i in images],
            ["conv1", "pool2"],
            preprocess=lambda x: x / 255.0,
            inference=True,
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

    def test_inspect_reads_a_sixteen_bit_png_as_its_eight_bit_picture(
        self, saved_model: Path, tmp_path: Path
    ) -> None:
        """Issue 19: a 16-bit PNG (the camera photo, or a gradient without scikit-image) gives
        the statistics of the same picture with 8 bits, not of an almost white image."""
        try:
            from skimage import data as skimage_data

            pixels = skimage_data.camera()
        except ImportError:
            pixels = np.tile(np.linspace(0, 255, 64).round().astype(np.uint8), (48, 1))
        eight, sixteen = tmp_path / "camera8.png", tmp_path / "camera16.png"
        Image.fromarray(pixels).save(eight)
        Image.fromarray(pixels.astype(np.uint16) * 257).save(sixteen)
        assert Image.open(sixteen).mode == "I;16"
        out = tmp_path / "inspect"
        layers = ["conv1", "pool2"]
        done = actwatch_cli(
            "inspect", saved_model, sixteen, "--layers", *layers, "--preprocess", "scale255",
            "-o", out,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        table = _Table()
        table.feed((out / "stats.html").read_text(encoding="utf-8"))
        model = keras.saving.load_model(saved_model, compile=False, safe_mode=True)
        stats = actwatch.activation_stats(model, [eight], layers, preprocess=lambda x: x / 255.0)
        rows = {row[0]: row for row in table.rows[1:]}
        for layer, s in stats.items():
            assert rows[layer][3] == f"{s.zero_fraction:.3f}"
            assert rows[layer][6] == f"{s.hoyer:.3f}"
            assert rows[layer][7] == f"{s.mean:.4g}"


#: A module registering a custom layer, as a user's project holds one.
CUSTOM_LAYERS = """
import keras


@keras.saving.register_keras_serializable(package="actwatch_tests")
class Brighten(keras.layers.Layer):
    def __init__(self, amount=0.5, **kwargs):
        super().__init__(**kwargs)
        self.amount = amount

    def call(self, x):
        return x + self.amount

    def get_config(self):
        return {**super().get_config(), "amount": self.amount}
"""


@dataclass(frozen=True)
class CustomModel:
    """A saved model with a registered custom layer, and the folder of that layer's module."""

    path: Path
    folder: Path
    module: Path


@pytest.fixture(scope="module")
def custom_model(tmp_path_factory: pytest.TempPathFactory) -> CustomModel:
    folder = tmp_path_factory.mktemp("project")
    module = folder / "awcustom_layers.py"
    module.write_text(CUSTOM_LAYERS, encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "path", list(sys.path))
        (layers,) = import_modules([str(module)])
    sys.modules.pop("awcustom_layers")
    inputs = keras.Input((16, 16, 3))
    x = layers.Brighten(0.25, name="brighten")(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    outputs = keras.layers.MaxPooling2D(name="pool")(x)
    path = tmp_path_factory.mktemp("model") / "custom.keras"
    keras.Model(inputs, outputs).save(path)
    return CustomModel(path, folder, module)


class TestImport:
    def test_a_custom_layer_is_refused_with_the_import_to_add(
        self, custom_model: CustomModel, images: list[Path], tmp_path: Path
    ) -> None:
        """Issue 19: without its module the model does not load, and the error names the
        class and the `--import` that registers it; that advice, followed from the project
        folder, loads it."""
        done = actwatch_cli("inspect", custom_model.path, images[0], "-o", tmp_path / "a")
        assert done.returncode == 2
        assert done.stderr == (
            f"actwatch inspect: error: Could not load '{custom_model.path}': it uses the custom "
            "class 'Brighten', which no imported module registers (it was saved from module "
            "'awcustom_layers'). Import the module that defines it with "
            "`@keras.saving.register_keras_serializable()` first: `actwatch inspect --import "
            "awcustom_layers ...` (a dotted module name or a .py file), or `import` it in "
            "Python.\n"
        )
        out = tmp_path / "b"
        done = actwatch_cli(
            "inspect", custom_model.path, images[0], "--import", "awcustom_layers", "-o", out,
            cwd=custom_model.folder,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        table = _Table()
        table.feed((out / "stats.html").read_text(encoding="utf-8"))
        assert [row[0] for row in table.rows[1:]] == ["conv", "pool"]

    def test_a_py_file_is_imported_from_anywhere(
        self, custom_model: CustomModel, images: list[Path], tmp_path: Path
    ) -> None:
        """`--import path/to/layers.py` from another folder, given twice with another module."""
        helper = tmp_path / "helper.py"
        helper.write_text("VALUE = 1\n", encoding="utf-8")
        out = tmp_path / "out"
        done = actwatch_cli(
            "inspect", custom_model.path, images[0], "--import", helper, "--import",
            custom_model.module, "-o", out, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert (out / "stats.html").is_file()

    def test_a_dotted_name_is_found_from_the_current_folder(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The installed `actwatch` script has no current folder on `sys.path` (unlike
        `python -m`): a dotted name is still looked up there first."""
        package = tmp_path / "awproject"
        package.mkdir()
        (package / "__init__.py").write_text("", encoding="utf-8")
        (package / "layers.py").write_text("VALUE = 42\n", encoding="utf-8")
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
        for name in ("awproject", "awproject.layers"):
            monkeypatch.delitem(sys.modules, name, raising=False)
        (module,) = import_modules(["awproject.layers"])
        assert module.VALUE == 42

    @pytest.mark.parametrize(
        ("given", "error"),
        [
            ("awmissing_module", "ModuleNotFoundError: No module named 'awmissing_module'"),
            ("{tmp}/missing.py", "FileNotFoundError: '{tmp}/missing.py' is not a file"),
        ],
    )
    def test_a_module_that_is_not_there(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str, error: str
    ) -> None:
        """A wrong name or path: one line saying what to pass instead, no traceback."""
        given, error = given.format(tmp=tmp_path), error.format(tmp=tmp_path)
        message = (
            f"Invalid value for --import: could not import {given!r} ({error}); pass a dotted "
            "module name importable from the current folder (e.g. mypkg.layers) or the path "
            "of a .py file."
        )
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            import_modules([given])

    def test_a_module_that_raises(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A module whose own code fails (here a missing dependency, then an error): the error
        says so, the command exits with one line, and no half-run module is left behind."""
        broken = tmp_path / "awbroken.py"
        broken.write_text("import awnot_installed_dependency\n", encoding="utf-8")
        with pytest.raises(ValueError, match=re.escape(
            f"could not import '{broken}' (ModuleNotFoundError: No module named "
            "'awnot_installed_dependency'); the module itself raised it."
        )):  # fmt: skip
            import_modules([str(broken)])
        assert "awbroken" not in sys.modules
        broken.write_text("raise RuntimeError('boom')\n", encoding="utf-8")
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", cli.TF_LOG_LEVEL)  # fd 2 left as it is
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["inspect", "m.keras", "x.png", "--import", str(broken)])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == (
            f"actwatch inspect: error: Invalid value for --import: could not import "
            f"'{broken}' (RuntimeError: boom); the module itself raised it.\n"
        )


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


@pytest.mark.skipif(
    BACKEND != "torch", reason="the demo's code is the same everywhere: once, in the PyTorch run"
)
def test_demo_with_and_without_data_ends_with_a_report(tmp_path: Path) -> None:
    """Two demo runs (generated data, an image folder) and a report comparing them; off the
    TensorFlow backend both run with `import tensorflow` blocked (`--data` reads the folder
    with Pillow, not tf.data)."""
    logs, page = tmp_path / "logs", tmp_path / "reports" / "demo.html"
    common = ["--epochs", "1", "--size", "32", "--log-dir", logs, "--report", page]
    done = actwatch_cli("demo", "--samples", "64", "--run", "generated", *common)
    assert done.returncode == 0, done.stderr
    assert f"Report of every run under {logs}: {page}" in done.stdout
    assert "scikit-image is not installed" not in done.stderr  # the dev install has it
    folder = _image_folder(tmp_path / "images")
    done = actwatch_cli("demo", "--data", folder, "--run", "folder", *common)
    assert done.returncode == 0, done.stderr
    assert "Found 12 files belonging to 2 classes." in done.stdout
    text = page.read_text(encoding="utf-8")
    assert "sparsity curves of run folder" in text
    assert "sparsity curves of run generated" in text
    names = {p.name for p in (tmp_path / "reports" / "demo_figures").iterdir()}
    assert {"00-folder-sparsity.png", "01-generated-sparsity.png"} <= names
    # Issue 12: the demo's report has histograms, the colorful dimension and top-k strips.
    assert {"00-folder-histograms.png", "00-folder-colorful-dimension.png"} <= names
    assert any(name.startswith("01-generated-topk-") for name in names)


@pytest.mark.skipif(BACKEND != "torch", reason="one backend is enough: the photos are numpy")
def test_demo_runs_without_scikit_image_and_says_how_to_get_its_photos(tmp_path: Path) -> None:
    """Without scikit-image (its import blocked) the demo trains and reports as usual, and says
    once how to get the scikit-image photos."""
    logs, page = tmp_path / "logs", tmp_path / "report.html"
    short = ["--samples", "64", "--epochs", "1", "--size", "32"]
    done = actwatch_cli("demo", *short, "--log-dir", logs, "--report", page, block=["skimage"])
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(demo.SKIMAGE_NOTE) == 1
    assert "install actwatch[demo] for the scikit-image photos" in demo.SKIMAGE_NOTE
    assert f"Report of every run under {logs}: {page}" in done.stdout
    assert "sparsity curves of run lr_0.001" in page.read_text(encoding="utf-8")


class TestDemoData:
    def test_probes_with_scikit_image_are_two_generated_images_and_two_photos(self) -> None:
        """The demo's 4 probes: 2 generated images, then scikit-image's astronaut and coffee."""
        x_val, _ = demo.make_dataset(8, 32, seed=1)
        probes = demo._probes(x_val, 32)
        assert probes.shape == (4, 32, 32, 3) and probes.dtype == np.float32
        np.testing.assert_array_equal(probes[:2], x_val[:2])
        np.testing.assert_array_equal(probes[2:], demo.photo_probes(32, ["astronaut", "coffee"]))

    def test_probes_without_scikit_image_end_with_grace_hopper(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Without scikit-image: 3 generated images and matplotlib's photo of Grace Hopper, a
        real photo every install has, and one warning naming the `actwatch[demo]` extra."""
        monkeypatch.setitem(sys.modules, "skimage", None)
        x_val, _ = demo.make_dataset(8, 32, seed=1)
        with caplog.at_level(logging.WARNING, logger="actwatch"):
            probes = demo._probes(x_val, 32)
        assert probes.shape == (4, 32, 32, 3)
        np.testing.assert_array_equal(probes[:3], x_val[:3])
        hopper = demo.grace_hopper(32)
        np.testing.assert_array_equal(probes[3], hopper)
        assert hopper.std() > 0.1  # a photo, not a blank
        assert [r.getMessage() for r in caplog.records] == [demo.SKIMAGE_NOTE]
        with pytest.raises(ImportError, match=re.escape("pip install 'actwatch[demo]'")):
            demo.photo_probes(32)

    def test_image_folder_batches_every_image_once_per_epoch_with_its_class(
        self, tmp_path: Path
    ) -> None:
        """`--data DIR`: classes are the sub-folders in order, each epoch yields every image
        once (resized, in [0, 1]) with its folder's label, reshuffled after every epoch."""
        root = _image_folder(tmp_path / "images")
        (root / "dark" / "notes.txt").write_text("not an image")
        (root / "dark" / "deeper").mkdir()
        Image.new("RGB", (10, 30), (40, 40, 40)).save(root / "dark" / "deeper" / "x.jpg")
        folder = demo._ImageFolder(str(root), 16, batch_size=5, seed=0)
        assert folder.class_names == ["bright", "dark"]
        assert len(folder.paths) == 13 and len(folder) == 3

        def epoch() -> tuple[list[int], np.ndarray, np.ndarray]:
            batches = [folder[i] for i in range(len(folder))]
            folder.on_epoch_end()
            return (
                [len(x) for x, _ in batches],
                np.concatenate([x for x, _ in batches]),
                np.concatenate([y for _, y in batches]),
            )

        sizes, x, y = epoch()
        assert sizes == [5, 5, 3]
        assert x.shape == (13, 16, 16, 3) and x.dtype == np.float32
        assert x.min() >= 0.0 and x.max() <= 1.0
        bright = x.reshape(13, -1).mean(axis=1) > 0.5
        np.testing.assert_array_equal(y, np.where(bright, 0, 1))
        assert sorted(y.tolist()) == [0] * 6 + [1] * 7
        _, x2, _ = epoch()
        assert not np.array_equal(x, x2)  # a new order
        np.testing.assert_allclose(np.sort(x.ravel()), np.sort(x2.ravel()))  # the same images

    def test_image_folder_reads_16_bit_files_by_their_bit_depth(self, tmp_path: Path) -> None:
        """A 16-bit grayscale PNG in `--data` gives the pixels of its 8-bit twin, not white."""
        ramp = np.tile(np.linspace(0, 255, 16).round().astype(np.uint16), (16, 1))
        for name, image in (
            ("eight", Image.fromarray(ramp.astype(np.uint8))),
            ("sixteen", Image.fromarray(ramp * 257)),
        ):
            (tmp_path / name).mkdir()
            image.save(tmp_path / name / "ramp.png")
        folder = demo._ImageFolder(str(tmp_path), 16, batch_size=2, seed=0)
        assert Image.open(folder.paths[1]).mode.startswith("I")  # a 16-bit file indeed
        eight, sixteen = folder.images(np.array([0, 1]))
        np.testing.assert_array_equal(sixteen, eight)
        assert float(sixteen.mean()) < 0.6

    def test_image_folder_without_images_is_a_clear_error(self, tmp_path: Path) -> None:
        (tmp_path / "empty_class").mkdir()
        with pytest.raises(ValueError, match=r"Invalid value for --data: .* holds no images"):
            demo._ImageFolder(str(tmp_path), 16, batch_size=4, seed=0)


def test_demo_rejects_a_data_path_that_is_not_a_folder(tmp_path: Path) -> None:
    done = actwatch_cli("demo", "--data", tmp_path / "nope", "--log-dir", tmp_path / "logs")
    assert done.returncode == 2
    assert "Invalid value for --data:" in done.stderr and "is not a directory" in done.stderr


# A line of TensorFlow's C++ log (absl or TSL format), or absl's notice before it is set up.
NATIVE_LOG_LINE = re.compile(
    r"^([IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\]|\d{4}-\d\d-\d\d [\d:.]+: [IWEF] )"
    r"|absl::InitializeLog|oneDNN|cuInit|computation placer|cuda drivers",
    re.MULTILINE,
)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's start-up log")
def test_tensorflow_start_up_log_is_held_back(tmp_path: Path) -> None:
    """`actwatch demo` on TensorFlow: stderr holds no C++ start-up lines (oneDNN, cuInit, ...),
    stdout the training and actwatch lines. With the user's own TF_CPP_MIN_LOG_LEVEL=0 the
    same start-up lines do show (so the first check has something to miss)."""
    common = ["--samples", "64", "--epochs", "1", "--size", "32", "--report", tmp_path / "r.html"]
    done = actwatch_cli("demo", "--log-dir", tmp_path / "logs", *common)
    assert done.returncode == 0, done.stderr
    assert NATIVE_LOG_LINE.search(done.stderr) is None, done.stderr
    assert "accuracy:" in done.stdout and "Trained for" in done.stdout
    assert "Report of every run under" in done.stdout
    loud_env = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    # `actwatch report` loads no backend at all: nothing to hold back even when asked for.
    report = actwatch_cli("report", tmp_path / "logs", "-o", tmp_path / "r2.html", env=loud_env)
    assert report.returncode == 0, report.stderr
    assert NATIVE_LOG_LINE.search(report.stderr) is None, report.stderr
    loud = actwatch_cli("demo", "--log-dir", tmp_path / "loud", *common, env=loud_env)
    assert loud.returncode == 0, loud.stderr
    assert NATIVE_LOG_LINE.search(loud.stderr) is not None, loud.stderr


def test_native_stderr_filter_passes_on_all_but_start_up_noise() -> None:
    """What native code writes to fd 2 while the backend loads is held back when it is a
    start-up notice, and passed on otherwise (a Python warning, an unknown C++ error)."""
    code = """
import os, sys, warnings
from actwatch.cli import _START_UP_NOISE, _native_stderr_filtered
print("before", file=sys.stderr, flush=True)
with _native_stderr_filtered(_START_UP_NOISE):
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are "
                b"written to STDERR\\n")
    os.write(2, b"I0000 00:00:1795870915.851919    4825 port.cc:153] oneDNN custom operations "
                b"are on.\\n")
    os.write(2, b"2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/"
                b"cudart_stub.cc:32] Could not find cuda drivers on your machine.\\n")
    os.write(2, b"To enable the following instructions: AVX2 FMA, in other operations, "
                b"rebuild TensorFlow with the appropriate compiler flags.\\n")
    os.write(2, b"E0000 00:00:1795870918.333454    4825 cuda_platform.cc:52] failed call to "
                b"cuInit: INTERNAL: CUDA error\\n")
    os.write(2, b"E0000 00:00:1795870918.333454    4825 bfc_allocator.cc:9] out of memory\\n")
    warnings.warn("a Python warning that matters")
print("after", file=sys.stderr, flush=True)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[0] == "before" and lines[-1] == "after"
    middle = "\n".join(lines[1:-1])
    assert "bfc_allocator.cc:9] out of memory" in middle
    assert "UserWarning: a Python warning that matters" in middle
    for noise in ("absl::InitializeLog", "oneDNN", "cuda drivers", "instructions", "cuInit"):
        assert noise not in middle
