"""The probes room: one rule for `preprocess`, the model's inputs read in one place, and every
image's pixels brought to 0-255 by its bit depth."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

import actwatch
from actwatch.check.image_files import eight_bit
from actwatch.check.probes import model_inputs, prepare_probes, read_probe_source
from actwatch.render.figures import figure_png

from .helpers import data, tiny_cnn


def _pngs(tmp_path: Path, n: int = 2, size: int = 16) -> list[Path]:
    rng = np.random.default_rng(1)
    paths = []
    for i in range(n):
        path = tmp_path / f"probe{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _halve(batch: np.ndarray) -> np.ndarray:
    return np.asarray(batch) / 2.0


class TestPreprocessRule:
    def test_image_files_are_preprocessed(self, tmp_path: Path) -> None:
        """Images loaded from files hold raw 0-255 pixels and go through `preprocess`."""
        model = tiny_cnn()
        paths = _pngs(tmp_path)
        batch = prepare_probes(read_probe_source(paths), model_inputs(model), _halve)
        raw = np.stack([np.asarray(Image.open(p), dtype=np.float32) for p in paths])
        np.testing.assert_allclose(batch.inputs[0], raw / 2.0)
        # The picture behind heatmaps is the image itself, not the preprocessed values.
        assert batch.display is not None and batch.display.dtype == np.uint8

    def test_arrays_are_used_as_given(self, tmp_path: Path) -> None:
        """Arrays are in the model's input scale already: `preprocess` never touches them."""
        model = tiny_cnn()
        x, _ = data(n=4)
        batch = prepare_probes(read_probe_source(x), model_inputs(model), _halve)
        np.testing.assert_array_equal(batch.inputs[0], x)

    def test_monitor_mixes_array_probes_and_image_stats_data(self, tmp_path: Path) -> None:
        """With array probes and image stats_data, only the images are preprocessed."""
        model = tiny_cnn()
        x, y = data(n=32)
        paths = _pngs(tmp_path, n=3)
        seen: list[np.ndarray] = []

        def preprocess(batch: np.ndarray) -> np.ndarray:
            seen.append(np.array(batch))
            return np.asarray(batch) / 255.0

        monitor = actwatch.ActivationMonitor(
            x[:2], tmp_path / "logs", stats_data=paths, preprocess=preprocess, images=False
        )
        model.fit(x, y, epochs=1, batch_size=16, callbacks=[monitor], verbose=0)
        assert [a.shape for a in seen] == [(3, 16, 16, 3)]  # the stats_data images, once
        assert float(seen[0].max()) > 1.0  # raw pixels went in

    def test_preprocess_with_only_arrays_is_refused(self, tmp_path: Path) -> None:
        """A `preprocess` that could never run is an error, not a silent no-op."""
        x, _ = data(n=4)
        with pytest.raises(ValueError, match=r"`probes` is an array, which actwatch uses as"):
            actwatch.ActivationMonitor(x, tmp_path, preprocess=_halve)
        with pytest.raises(ValueError, match=r"`x` is an array, which actwatch uses as given"):
            actwatch.get_activations(tiny_cnn(), x, preprocess=_halve)

    def test_notebook_files_equal_preprocessed_arrays(self, tmp_path: Path) -> None:
        """Files with `preprocess` give the activations of the preprocessed array."""
        model = tiny_cnn()
        paths = _pngs(tmp_path)
        raw = np.stack([np.asarray(Image.open(p), dtype=np.float32) for p in paths])
        from_files = actwatch.get_activations(model, paths, "conv1", preprocess=_halve)
        from_array = actwatch.get_activations(model, raw / 2.0, "conv1")
        np.testing.assert_allclose(from_files["conv1"], from_array["conv1"], rtol=1e-5)


def test_model_inputs_refuses_an_unbuilt_model() -> None:
    """A model without known inputs is refused with what to do."""
    model = keras.Sequential([keras.layers.Conv2D(2, 3)])
    with pytest.raises(ValueError, match=r"needs a built model with known inputs"):
        model_inputs(model)


def _sixteen_bit_pair(tmp_path: Path, name: str, pixels: np.ndarray) -> tuple[Path, Path]:
    """`pixels` (uint8, grayscale) as an 8-bit PNG, and as a 16-bit PNG of the same picture
    (each value times 257, so 255 becomes 65535) written by Pillow."""
    eight, sixteen = tmp_path / f"{name}-8.png", tmp_path / f"{name}-16.png"
    Image.fromarray(pixels).save(eight)
    Image.fromarray(pixels.astype(np.uint16) * 257).save(sixteen)
    with Image.open(sixteen) as image:
        assert image.mode == "I;16"  # a real 16-bit file, read back as Pillow reads it
    return eight, sixteen


def _gradient() -> np.ndarray:
    return np.tile(np.linspace(0, 255, 64).round().astype(np.uint8), (48, 1))


def _camera() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    camera: np.ndarray = skimage_data.camera()
    return camera


def _batch(paths: list[Path]) -> np.ndarray:
    return prepare_probes(read_probe_source(paths), model_inputs(tiny_cnn())).inputs[0]


class TestBitDepth:
    """Issue 19: a 16-bit PNG was fed with almost every pixel clipped to 255 (white)."""

    @pytest.mark.parametrize("picture", [_gradient, _camera], ids=["gradient", "camera"])
    def test_sixteen_bit_png_is_fed_as_its_eight_bit_twin(
        self, tmp_path: Path, picture: Callable[[], np.ndarray]
    ) -> None:
        """A 16-bit PNG gives exactly the batch of the same picture saved with 8 bits."""
        eight, sixteen = _sixteen_bit_pair(tmp_path, "picture", picture())
        batch = _batch([sixteen])
        np.testing.assert_array_equal(batch, _batch([eight]))
        assert (batch == 255).mean() < 0.1  # not an almost white image

    def test_scaled_by_bit_depth_not_by_the_image_range(self, tmp_path: Path) -> None:
        """A dark 16-bit image stays dark (divided by 257, not stretched to its own max)."""
        dark = tmp_path / "dark.png"
        Image.fromarray(np.full((16, 16), 1000, np.uint16)).save(dark)
        np.testing.assert_array_equal(_batch([dark]), np.full((1, 16, 16, 3), 4.0))  # 1000/257

    def test_sixteen_bit_values_all_below_256_are_not_read_as_eight_bit(
        self, tmp_path: Path
    ) -> None:
        """Review of issue 19: a dark 16-bit image (every value <= 255), as a file (`I;16`)
        and as the `I` image older Pillow decodes it to, is scaled by its 16-bit depth."""
        pixels = np.tile(np.arange(0, 256, 16, dtype=np.uint16), (16, 1))  # 0..240
        path = tmp_path / "dark16.png"
        Image.fromarray(pixels).save(path)
        with Image.open(path) as image:
            assert image.mode == "I;16"
            as_i = image.convert("I")
        expected = np.round(pixels / 257.0)  # 0 or 1: nearly black, as in the 16-bit file
        assert expected.max() == 1
        for given in (path, as_i):
            batch = prepare_probes(read_probe_source([given]), model_inputs(tiny_cnn())).inputs[0]
            np.testing.assert_array_equal(batch[0, ..., 0], expected)

    @pytest.mark.parametrize(
        ("mode", "values", "expected"),
        [
            ("I;16", [0, 128, 129, 257, 32896, 65535], [0, 0, 1, 1, 128, 255]),
            ("I;16B", [0, 128, 129, 257, 32896, 65535], [0, 0, 1, 1, 128, 255]),
            ("I", [0, 128, 129, 257, 32896, 65535], [0, 0, 1, 1, 128, 255]),
            ("I", [0, 7, 128, 200, 254, 255], [0, 0, 0, 1, 1, 1]),  # 16-bit, all <= 255
            ("F", [0.0, 0.25, 0.5, 1.0, 0.002, 0.998], [0, 64, 128, 255, 1, 254]),
            ("F", [0.0, 7.0, 128.0, 255.0, 1.5, 254.6], [0, 7, 128, 255, 2, 255]),  # 0-255
            ("L", [0, 7, 128, 255, 1, 254], [0, 7, 128, 255, 1, 254]),
        ],
    )
    def test_each_mode_by_its_bit_depth(
        self, mode: str, values: list[float], expected: list[int]
    ) -> None:
        """The 8-bit value of each Pillow mode's pixels: 16 bits / 257, floats in [0, 1] * 255."""
        dtype = {"I;16": "<u2", "I;16B": ">u2", "I": "<i4", "F": "<f4", "L": "u1"}[mode]
        raw = np.asarray(values, dtype=dtype).reshape(1, -1)
        image = Image.frombytes(mode, (raw.shape[1], 1), raw.tobytes())
        assert image.mode == mode
        converted = eight_bit(image, "probes", "the image")
        assert converted.mode == "L"
        assert np.asarray(converted).ravel().tolist() == expected

    @pytest.mark.parametrize(
        ("mode", "values", "message"),
        [
            ("I", [0, 70000], "is a 32-bit integer image with values from 0 to 70000; expected "
             "16-bit (0-65535) pixels, as Pillow decodes 16-bit files."),
            ("I", [-1, 5], "is a 32-bit integer image with values from -1 to 5; expected 16-bit "
             "(0-65535) pixels, as Pillow decodes 16-bit files."),
            ("F", [-1.0, 1.0], "is a floating-point image with values from -1 to 1; expected "
             "values in [0, 1] (or 0-255)."),
            ("F", [0.0, 1000.0], "is a floating-point image with values from 0 to 1000; "
             "expected values in [0, 1] (or 0-255)."),
            ("F", [0.0, float("nan")], "holds NaN or Inf pixels."),
        ],
    )  # fmt: skip
    def test_pixels_out_of_every_bit_depth_are_refused(
        self, mode: str, values: list[float], message: str
    ) -> None:
        """Values no bit depth explains: an error saying what was found and what to do."""
        raw = np.asarray(values, dtype="<i4" if mode == "I" else "<f4").reshape(1, -1)
        image = Image.frombytes(mode, (raw.shape[1], 1), raw.tobytes())
        expected = (
            f"Invalid value for argument `probes`: a PIL image of size 2x1 {message} Convert "
            "it to an 8-bit image (mode 'L' or 'RGB', pixels 0-255) yourself, e.g. "
            "Image.fromarray(np.clip(pixels, 0, 255).astype('uint8'))."
        )
        with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
            read_probe_source([image])

    def test_notebook_functions_see_the_eight_bit_picture(self, tmp_path: Path) -> None:
        """`plot_filters` and `get_activations` on a 16-bit PNG equal those on its 8-bit twin."""
        model = tiny_cnn()
        eight, sixteen = _sixteen_bit_pair(tmp_path, "gradient", _gradient())
        figures = [
            figure_png(actwatch.plot_filters(model, [path], "conv1", preprocess=_halve))
            for path in (eight, sixteen)
        ]
        assert figures[0] == figures[1]
        acts = [actwatch.get_activations(model, [p], "conv1")["conv1"] for p in (eight, sixteen)]
        np.testing.assert_array_equal(acts[0], acts[1])
