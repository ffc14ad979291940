"""The probes room: one rule for `preprocess`, and the model's inputs read in one place."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

import actwatch
from actwatch.check.probes import model_inputs, prepare_probes, read_probe_source

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
