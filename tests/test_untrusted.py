"""Untrusted files: probe images behind Pillow's bomb guard; no code runs from model files."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

import actwatch
from actwatch import cli
from actwatch.check.probes import read_probe_source
from actwatch.inspection import load_model

from .helpers import tiny_cnn

SRC = Path(actwatch.__file__).parent


def _png(path: Path, side: int) -> Path:
    Image.fromarray(np.full((side, side, 3), 128, np.uint8)).save(path)
    return path


def test_bomb_guard_refuses_the_warning_zone_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above MAX_IMAGE_PIXELS Pillow only warns: actwatch refuses, and never decodes it."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    small, big = _png(tmp_path / "small.png", 30), _png(tmp_path / "big.png", 40)  # 900, 1600 px
    images = read_probe_source([small]).images
    assert images is not None and len(images) == 1
    with pytest.raises(ValueError, match=r"'.*big\.png' is too large to decode safely \(Image "
                       r"size \(1600 pixels\) exceeds limit of 1000 pixels"):  # fmt: skip
        read_probe_source([small, big])


def test_bad_image_files_refused_by_the_notebook_functions_too(tmp_path: Path) -> None:
    """`get_activations` reads files with the same guard and messages as the callback."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(buffer, format="JPEG")
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(buffer.getvalue()[:200])
    message = (
        r"^Invalid value for argument `x`: '.*cut\.jpg' could not be read as an image "
        r"\(OSError: Truncated File Read\)\. Pass a PNG, JPEG or other file Pillow reads\.$"
    )
    with pytest.raises(ValueError, match=message):
        actwatch.get_activations(tiny_cnn(), [truncated])


def test_decoded_probe_is_resized_not_trusted_for_size(tmp_path: Path) -> None:
    """A large (but allowed) image becomes a probe of the model's input size."""
    model = tiny_cnn()
    acts = actwatch.get_activations(model, [_png(tmp_path / "big.png", 512)], ["conv1"])
    assert acts["conv1"].shape == (1, 16, 16, 4)


RAN = "ACTWATCH_TEST_LAMBDA_RAN"


@pytest.fixture
def lambda_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A saved model whose Lambda layer, if ever called, sets the environment variable RAN.

    The control: Keras' own unsafe load calls it (so the side effect would show).
    """
    monkeypatch.delenv(RAN, raising=False)
    inputs = keras.Input((16, 16, 3))
    marked = keras.layers.Lambda(
        # Self-contained: a loaded lambda sees no globals of this module.
        lambda t: (__import__("os").environ.__setitem__("ACTWATCH_TEST_LAMBDA_RAN", "1"), t)[1],
        name="code",
    )(inputs)
    outputs = keras.layers.Conv2D(2, 3, activation="relu", name="conv")(marked)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    monkeypatch.delenv(RAN)  # building the model called it once
    keras.saving.load_model(path, safe_mode=False)
    assert os.environ.pop(RAN) == "1", "the control: an unsafe load runs the lambda"
    return path


def test_load_model_refuses_a_lambda_and_never_runs_it(lambda_model: Path) -> None:
    """`actwatch.inspection.load_model` refuses a Lambda layer with actwatch's message; the
    lambda's code never runs."""
    message = (
        rf"^Could not load '{re.escape(str(lambda_model))}' as a Keras model \(ValueError: "
        r"Requested the deserialization of a `?Lambda`? layer.*\)\. Expected a `\.keras` file "
        r"saved with `model\.save\('model\.keras'\)`; models with Lambda layers cannot be "
        r"loaded with safe_mode=True\.$"
    )
    with pytest.raises(ValueError, match=message):
        load_model(lambda_model)
    assert RAN not in os.environ


def test_inspect_command_refuses_a_lambda_and_never_runs_it(
    lambda_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`actwatch inspect` on a model with a Lambda exits with status 2 and actwatch's one-line
    error, writes nothing, and never runs the lambda."""
    image = _png(tmp_path / "image.png", 16)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["inspect", str(lambda_model), str(image), "-o", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"actwatch inspect: error: Could not load '{lambda_model}'")
    assert "cannot be loaded with safe_mode=True" in err and "Traceback" not in err
    assert RAN not in os.environ
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "pattern",
    [r"\bimport pickle\b", r"\bpickle\.load", r"allow_pickle\s*=\s*True", r"safe_mode\s*=\s*False",
     r"\beval\(", r"\bexec\(", r"torch\.load\("],
)  # fmt: skip
def test_source_never_unpickles_or_evaluates(pattern: str) -> None:
    """No actwatch module, in any of its rooms, unpickles, evaluates text, or turns safe_mode
    off."""
    modules = sorted(SRC.rglob("*.py"))
    assert {"notebook.py", "reader.py", "page.py", "events_index.py"} <= {p.name for p in modules}
    offenders = [
        str(path.relative_to(SRC))
        for path in modules
        if re.search(pattern, path.read_text("utf-8"))
    ]
    assert offenders == []
