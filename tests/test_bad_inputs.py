"""Bad arguments and inputs are rejected before the first batch, with the exact message pinned."""

from __future__ import annotations

import inspect
import io
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from PIL import Image

import actwatch

from .helpers import data, tiny_cnn

X, Y = data(8)


@dataclass(frozen=True)
class Files:
    """Image files (good and bad) and paths, made once per module."""

    root: Path
    ok: Path
    truncated: Path
    text: Path
    bomb: Path
    missing: Path
    plain_file: Path


@dataclass(frozen=True)
class Case:
    """One wrong argument: what to pass, where it is refused, the error and its message."""

    id: str
    kwargs: Callable[[Files], dict[str, Any]]
    stage: str  # "init": the constructor raises; "fit": `on_train_begin` raises
    error: type[Exception]
    message: str | re.Pattern[str]  # a str is matched literally, in full


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _bomb_png(side: int) -> bytes:
    """A tiny PNG whose header claims side x side RGB pixels."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 16))
        + _png_chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    root = tmp_path_factory.mktemp("images")
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    png = buffer.getvalue()
    ok = root / "ok.png"
    ok.write_bytes(png)
    truncated = root / "truncated.png"
    truncated.write_bytes(png[: len(png) // 2])
    text = root / "notes.png"
    text.write_text("not an image\n")
    bomb = root / "bomb.png"
    bomb.write_bytes(_bomb_png(40_000))  # 1.6 G pixels in 80 bytes
    plain_file = root / "a_file"
    plain_file.write_text("x")
    return Files(root, ok, truncated, text, bomb, root / "missing.png", plain_file)


def _shape_msg(arg: str, got: str, what: str, after: str = "") -> str:
    return (
        f"Invalid value for argument `{arg}`: expected shape (batch, 16, 16, 3); got shape "
        f"{got}{after} ({what}). Resize or select your probes to the model's input shape."
    )


def _number_msg(arg: str, expected: str, received: str) -> str:
    return f"Invalid value for argument `{arg}`. Expected {expected}. Received: {arg}={received}"


_LAYERS = "['image', 'conv1', 'pool1', 'conv2', 'pool2', 'gap', 'head']"
_NAN = np.full((2, 16, 16, 3), np.nan, "float32")
_INF = np.where(np.arange(16)[None, :, None, None] == 3, np.inf, X[:2]).astype("float32")

CASES = [
    # probes --------------------------------------------------------------------------------
    Case("probes None", lambda f: {"probes": None}, "init", ValueError,
         "Invalid value for argument `probes`: received None. Expected a numpy array batch, a "
         "list of image paths or PIL images, or a dict for multi-input models."),
    Case("probes empty list", lambda f: {"probes": []}, "init", ValueError,
         "Invalid value for argument `probes`: the list is empty. Pass at least one image path, "
         "PIL image or array."),
    Case("probes empty batch", lambda f: {"probes": X[:0]}, "init", ValueError,
         "Invalid value for argument `probes`: it is empty (shape=(0, 16, 16, 3)). Pass at "
         "least one sample, for example x_val[:4]."),
    Case("probes 1-D", lambda f: {"probes": np.zeros(5)}, "init", ValueError,
         "Invalid value for argument `probes`: expected a batch with at least 2 dimensions "
         "(batch, ...). Received: shape=(5,). Pass a batch of samples, for example x_val[:4]."),
    Case("probes strings", lambda f: {"probes": np.array(["a", "b"])}, "init", TypeError,
         "Invalid value for argument `probes`: expected a numeric array. Received: dtype=<U1. "
         "For image files pass a list of paths (probes=list(paths)); convert numbers, e.g. "
         "probes=np.asarray(x, 'float32')."),
    Case("probes ragged", lambda f: {"probes": [[1.0, 2.0], [3.0]]}, "init", TypeError,
         re.compile(r"Invalid value for argument `probes`: could not convert it to a numpy "
                    r"array \(.*inhomogeneous.*\)\. Expected a numpy array of shape \(batch, "
                    r"height, width, channels\)\.")),
    Case("probes NaN", lambda f: {"probes": _NAN}, "init", ValueError,
         "Invalid value for argument `probes`: expected finite values. Received 1536 NaN or Inf "
         "value(s) in shape (2, 16, 16, 3). Check the data, or replace them with "
         "np.nan_to_num(x)."),
    Case("probes no batch axis", lambda f: {"probes": X[0]}, "fit", ValueError,
         "Invalid value for argument `probes`: expected shape (batch, 16, 16, 3); got shape "
         "(16, 16, 3). Did you forget the batch dimension? Use probes[None]."),
    Case("probes wrong channels", lambda f: {"probes": X[:2, ..., :1]}, "fit", ValueError,
         _shape_msg("probes", "(2, 16, 16, 1)", "channels differ")),
    Case("probes wrong size", lambda f: {"probes": np.zeros((2, 8, 8, 3), "float32")}, "fit",
         ValueError, _shape_msg("probes", "(2, 8, 8, 3)", "axis 1 differs")),
    Case("probes rank 5", lambda f: {"probes": X[:2, ..., None]}, "fit", ValueError,
         "Invalid value for argument `probes`: expected 4 dimensions (batch, 16, 16, 3); got "
         "shape (2, 16, 16, 3, 1). Reshape it to the model's input shape."),
    Case("probes mix paths and arrays", lambda f: {"probes": [str(f.ok), X[0]]}, "init",
         TypeError,
         "Invalid value for argument `probes`: a list mixing image paths or PIL images with "
         "other values. Pass only images, or one array per model input."),
    Case("probes empty dict", lambda f: {"probes": {}}, "init", ValueError,
         "Invalid value for argument `probes`: the dict is empty. Pass {input_name: array} with "
         "one entry per model input."),
    Case("probes dict wrong key", lambda f: {"probes": {"img": X[:2]}}, "fit", ValueError,
         "Invalid value for argument `probes`: the dict keys ['img'] do not match the model's "
         "inputs ['image'] (missing ['image'], unexpected ['img']). Key the dict by the "
         "model's input names."),
    Case("probes dict batch sizes", lambda f: {"probes": {"a": X[:2], "b": X[:3]}}, "init",
         ValueError,
         "Invalid value for argument `probes`: the inputs have different batch sizes [2, 3]. "
         "Give every input the same number of samples."),
    # image files ---------------------------------------------------------------------------
    Case("image missing", lambda f: {"probes": [f.missing]}, "init", ValueError,
         re.compile(r"Invalid value for argument `probes`: the image file '.*missing\.png' does "
                    r"not exist\. Pass paths to existing image files, PIL images, or a numpy "
                    r"array\.")),
    Case("image truncated", lambda f: {"probes": [f.ok, f.truncated]}, "init", ValueError,
         re.compile(r"Invalid value for argument `probes`: '.*truncated\.png' could not be read "
                    r"as an image \(OSError: image file is truncated.*\)\. Pass a PNG, JPEG or "
                    r"other file Pillow reads\.")),
    Case("image not an image", lambda f: {"probes": [f.text]}, "init", ValueError,
         re.compile(r"Invalid value for argument `probes`: '.*notes\.png' could not be read as "
                    r"an image \(UnidentifiedImageError: cannot identify image file "
                    r"'.*notes\.png'\)\. Pass a PNG, JPEG or other file Pillow reads\.")),
    Case("image decompression bomb", lambda f: {"probes": [f.bomb]}, "init", ValueError,
         re.compile(r"Invalid value for argument `probes`: '.*bomb\.png' is too large to decode "
                    r"safely \(Image size \(1600000000 pixels\) exceeds limit of \d+ pixels.*\)\. "
                    r"Resize the image or raise PIL\.Image\.MAX_IMAGE_PIXELS if you trust it\.")),
    Case("image directory", lambda f: {"probes": [f.root]}, "init", ValueError,
         re.compile(r"Invalid value for argument `probes`: '.*' could not be read as an image "
                    r"\(IsADirectoryError: .*\)\. Pass a PNG, JPEG or other file Pillow reads\.")),
    # stats_data ----------------------------------------------------------------------------
    Case("stats_data Inf", lambda f: {"stats_data": _INF}, "init", ValueError,
         "Invalid value for argument `stats_data`: expected finite values. Received 96 NaN or "
         "Inf value(s) in shape (2, 16, 16, 3). Check the data, or replace them with "
         "np.nan_to_num(x)."),
    Case("stats_data wrong size", lambda f: {"stats_data": np.zeros((4, 8, 8, 3), "f4")}, "fit",
         ValueError, _shape_msg("stats_data", "(4, 8, 8, 3)", "axis 1 differs")),
    Case("stats_data no batch axis", lambda f: {"stats_data": X[0]}, "fit", ValueError,
         "Invalid value for argument `stats_data`: expected shape (batch, 16, 16, 3); got shape "
         "(16, 16, 3). Did you forget the batch dimension? Use stats_data[None]."),
    Case("stats_data object", lambda f: {"stats_data": object()}, "init", TypeError,
         "Invalid value for argument `stats_data`: expected a numeric array. Received: an "
         "object of type object (dtype=object). Pass numbers, e.g. "
         "stats_data=np.asarray(x, 'float32')."),
    Case("stats_data generator", lambda f: {"stats_data": (b for b in [(X[:4], Y[:4])])},
         "init", TypeError,
         "Invalid value for argument `stats_data`: received a generator; expected one batch as "
         "a numpy array (or image paths). Take a batch from it: `x, y = next(it)` (the next "
         "batch it yields), with `x = ...` when it yields no labels; then pass "
         "stats_data=(np.asarray(x), np.asarray(y)), or stats_data=np.asarray(x) without "
         "labels."),
    Case("stats_data missing file", lambda f: {"stats_data": [f.missing]}, "init", ValueError,
         re.compile(r"Invalid value for argument `stats_data`: the image file '.*missing\.png' "
                    r"does not exist\. Pass paths to existing image files, PIL images, or a "
                    r"numpy array\.")),
    # layers --------------------------------------------------------------------------------
    Case("layers unknown name", lambda f: {"layers": "conv9"}, "fit", ValueError,
         "Invalid value for argument `layers`: no layer named 'conv9'. Did you mean ['conv2', "
         f"'conv1']? Layers of this model: {_LAYERS}."),
    Case("layers empty list", lambda f: {"layers": []}, "init", ValueError,
         "Invalid value for argument `layers`: the list is empty. Pass None to watch the "
         "default layers, or at least one layer name."),
    Case("layers int", lambda f: {"layers": 3}, "init", TypeError,
         "Invalid value for argument `layers`: expected None, a name, a regex, a Layer or a "
         "list of them. Received: layers=3."),
    Case("layers bad item", lambda f: {"layers": ["conv1", 3]}, "init", TypeError,
         "Invalid value for argument `layers`: expected layer names, regex patterns or Layer "
         "objects. Received an item of type int: 3."),
    Case("layers pattern matches none", lambda f: {"layers": re.compile("dense.*")}, "fit",
         ValueError,
         "Invalid value for argument `layers`: the pattern 'dense.*' matches no layer. "
         f"Available layers: {_LAYERS}."),
    Case("layers foreign Layer", lambda f: {"layers": keras.layers.Dense(2, name="stranger")},
         "fit", ValueError,
         "Invalid value for argument `layers`: layer 'stranger' (Dense) is not part of this "
         "model. Pass a layer of the model being trained, or its name."),
    # frequencies ---------------------------------------------------------------------------
    Case("every_n_epochs 0", lambda f: {"every_n_epochs": 0}, "init", ValueError,
         _number_msg("every_n_epochs", "a positive integer or None", "0")),
    Case("every_n_epochs float", lambda f: {"every_n_epochs": 1.5}, "init", ValueError,
         _number_msg("every_n_epochs", "a positive integer or None", "1.5")),
    Case("every_n_epochs bool", lambda f: {"every_n_epochs": True}, "init", ValueError,
         _number_msg("every_n_epochs", "a positive integer or None", "True")),
    Case("every_n_batches negative", lambda f: {"every_n_batches": -1}, "init", ValueError,
         _number_msg("every_n_batches", "a positive integer or None", "-1")),
    Case("both frequencies", lambda f: {"every_n_epochs": 1, "every_n_batches": 2}, "init",
         ValueError,
         "Invalid value for arguments `every_n_epochs` and `every_n_batches`: give one of them, "
         "not both. Received: every_n_epochs=1, every_n_batches=2"),
    # paths ---------------------------------------------------------------------------------
    Case("log_dir None", lambda f: {"log_dir": None}, "init", TypeError,
         "Invalid value for argument `log_dir`: expected a path (str or os.PathLike). "
         "Received: log_dir=None of type NoneType."),
    Case("log_dir empty", lambda f: {"log_dir": ""}, "init", ValueError,
         "Invalid value for argument `log_dir`: received an empty path. Pass a directory, for "
         "example log_dir='logs/run1'."),
    Case("log_dir is a file", lambda f: {"log_dir": f.plain_file}, "init", ValueError,
         re.compile(r"Invalid value for argument `log_dir`: '.*a_file' cannot be created or "
                    r"written \(File exists\)\. Pass a directory you can write to\.")),
    Case("log_dir under a file", lambda f: {"log_dir": f.plain_file / "run1"}, "init",
         ValueError,
         re.compile(r"Invalid value for argument `log_dir`: '.*a_file/run1' cannot be created "
                    r"or written \(Not a directory\)\. Pass a directory you can write to\.")),
    # hooks ---------------------------------------------------------------------------------
    Case("on_alert not callable", lambda f: {"on_alert": "print"}, "init", TypeError,
         "Invalid value for argument `on_alert`. Expected a callable taking an actwatch.Alert. "
         "Received: on_alert='print'"),
    Case("preprocess not callable", lambda f: {"preprocess": 3}, "init", TypeError,
         "Invalid value for argument `preprocess`. Expected a callable taking a numpy batch. "
         "Received: preprocess=3"),
    Case("preprocess changes the shape",
         lambda f: {"probes": [f.ok, f.ok], "preprocess": lambda a: a[:, :8]}, "fit",
         ValueError,
         _shape_msg("probes", "(2, 8, 16, 3)", "axis 1 differs", " after `preprocess`")),
    Case("preprocess with array probes", lambda f: {"preprocess": lambda a: a / 255.0}, "init",
         ValueError,
         "Invalid value for argument `preprocess`: it applies only to images loaded from files "
         "or PIL images, and `probes` is an array, which actwatch uses as given (in the model's "
         "input scale, like the data passed to `fit`). Apply it to the arrays yourself, e.g. "
         "probes=preprocess(x), and drop `preprocess=`."),
    Case("preprocess with array probes and stats_data",
         lambda f: {"stats_data": X[:2], "preprocess": lambda a: a / 255.0}, "init", ValueError,
         re.compile(r"Invalid value for argument `preprocess`: .* `probes` and `stats_data` are "
                    r"arrays, .*")),
    # thresholds and other numbers ----------------------------------------------------------
    Case("stop_on_dead_fraction 0", lambda f: {"stop_on_dead_fraction": 0}, "init", ValueError,
         _number_msg("stop_on_dead_fraction", "a number in (0, 1] or None", "0")),
    Case("stop_on_dead_fraction 1.5", lambda f: {"stop_on_dead_fraction": 1.5}, "init",
         ValueError, _number_msg("stop_on_dead_fraction", "a number in (0, 1] or None", "1.5")),
    Case("dead_alert_fraction str", lambda f: {"dead_alert_fraction": "0.5"}, "init",
         ValueError, _number_msg("dead_alert_fraction", "a number in (0, 1]", "'0.5'")),
    Case("dormant_threshold negative", lambda f: {"dormant_threshold": -0.1}, "init",
         ValueError, _number_msg("dormant_threshold", "a number in [0, 1]", "-0.1")),
    Case("dormant_threshold NaN", lambda f: {"dormant_threshold": float("nan")}, "init",
         ValueError, _number_msg("dormant_threshold", "a number in [0, 1]", "nan")),
    Case("patience 0", lambda f: {"patience": 0}, "init", ValueError,
         _number_msg("patience", "a positive integer", "0")),
    Case("max_filters True", lambda f: {"max_filters": True}, "init", ValueError,
         _number_msg("max_filters", "a positive integer", "True")),
    Case("draw_layers None", lambda f: {"draw_layers": None}, "init", ValueError,
         "Invalid value for argument `draw_layers`: received None. Pass 'auto' (the default), "
         "'all', or the layers to draw; images=False draws none."),
    Case("draw_layers int", lambda f: {"draw_layers": 3}, "init", TypeError,
         "Invalid value for argument `draw_layers`: expected None, a name, a regex, a Layer or "
         "a list of them. Received: draw_layers=3."),
    Case("draw_layers not watched", lambda f: {"layers": "conv1", "draw_layers": "conv2"}, "fit",
         ValueError,
         "Invalid value for argument `draw_layers`: ['conv2'] are not watched, so they cannot "
         "be drawn. Add them to `layers=`, or draw some of the watched layers: ['conv1']."),
    Case("images str", lambda f: {"images": "no"}, "init", TypeError,
         _number_msg("images", "True or False", "'no'")),
    Case("log_per_layer int", lambda f: {"log_per_layer": 1}, "init", TypeError,
         _number_msg("log_per_layer", "True or False", "1")),
    # signals ---------------------------------------------------------------------------------
    Case("histograms str", lambda f: {"histograms": "yes"}, "init", TypeError,
         _number_msg("histograms", "True or False", "'yes'")),
    Case("feature_rank int", lambda f: {"feature_rank": 1}, "init", TypeError,
         _number_msg("feature_rank", "True or False", "1")),
    Case("topk negative", lambda f: {"topk": -1}, "init", ValueError,
         _number_msg("topk", "a positive integer", "-1")),
    Case("topk float", lambda f: {"topk": 2.5}, "init", ValueError,
         _number_msg("topk", "a positive integer", "2.5")),
    Case("outlier_ratio below 1", lambda f: {"outlier_ratio": 0.5}, "init", ValueError,
         _number_msg("outlier_ratio", "a number > 1 (e.g. 1000, Sun et al. 2024) or None",
                     "0.5")),
    # learning rate ---------------------------------------------------------------------------
    Case("update_ratio_bounds reversed", lambda f: {"update_ratio_bounds": (0.1, 1e-5)}, "init",
         ValueError,
         "Invalid value for argument `update_ratio_bounds`. Expected None or (low, high) with "
         "0 <= low < high, e.g. (1e-5, 1e-1). Received: update_ratio_bounds=(0.1, 1e-05)"),
    Case("stats_data labels short", lambda f: {"stats_data": (X[:4], np.zeros(3, "i8"))}, "fit",
         ValueError,
         "Invalid value for argument `stats_data`: y has 3 samples but x has 4. Pass "
         "`stats_data=(x, y)` or `(x, y, sample_weight)` with one label (and weight) per "
         "sample of x."),
    Case("sharpness without labels", lambda f: {"sharpness": True, "stats_data": X[:4]}, "init",
         ValueError,
         "Invalid value for argument `sharpness`: it is the loss's curvature, so it needs "
         "labels. Pass `stats_data=(x, y)` (a few hundred labelled samples) with "
         "sharpness=True. Received: sharpness=True without labels in stats_data."),
    Case("sharpness not a flag", lambda f: {"sharpness": "yes"}, "init", TypeError,
         "Invalid value for argument `sharpness`. Expected True or False. "
         "Received: sharpness='yes'"),
    Case("storage_options not a dict", lambda f: {"storage_options": "x"}, "init", TypeError,
         "Invalid value for argument `storage_options`. Expected None or a dict of fsspec "
         "arguments, e.g. {'endpoint_url': 'http://127.0.0.1:9000'}. "
         "Received: storage_options='x'"),
    Case("upload_interval zero", lambda f: {"upload_interval": 0}, "init", ValueError,
         "Invalid value for argument `upload_interval`. Expected a number of seconds > 0. "
         "Received: upload_interval=0"),
    Case("upload_interval text", lambda f: {"upload_interval": "a"}, "init", TypeError,
         "Invalid value for argument `upload_interval`. Expected a number of seconds > 0. "
         "Received: upload_interval='a'"),
    Case("log_dir unknown protocol", lambda f: {"log_dir": "s3x://b/r"}, "init", ValueError,
         "Invalid value for argument `log_dir`: 's3x://b/r' has the protocol 's3x', which "
         "fsspec does not know. Pass a local directory or a URL such as 's3://bucket/run1' "
         "(pip install 'actwatch[s3]'), 'gs://...' (actwatch[gcs]), 'az://...' "
         "(actwatch[azure]) or 'memory://...'."),
    Case("hparams not a dict", lambda f: {"hparams": "x"}, "init", TypeError,
         "Invalid value for argument `hparams`. Expected a dict of name -> bool, int, float or "
         "str, e.g. {'dropout': 0.1}. Received: hparams='x'"),
    Case("hparams list value", lambda f: {"hparams": {"a": [1]}}, "init", TypeError,
         "Invalid value for argument `hparams`: hparams['a'] must be a bool, int, finite float "
         "or str (what TensorBoard's HParams tab shows). Received: [1] of type list. "
         "Pass str(value) to show it as text."),
    Case("hparams name not str", lambda f: {"hparams": {1: 2}}, "init", TypeError,
         "Invalid value for argument `hparams`: every name must be a non-empty str. "
         "Received the name 1 in hparams={1: 2}"),
    Case("revive bogus", lambda f: {"revive": "bogus"}, "init", ValueError,
         "Invalid value for argument `revive`. Expected None (no revival) or 'redo' (ReDo: "
         "re-initialise filters that stay dead). Received: revive='bogus'"),
    Case("revive unsupported layer", lambda f: {"revive": "redo", "layers": ["head"]}, "fit",
         ValueError,
         re.compile(r"Invalid value for argument `revive`: revive='redo' cannot revive the "
                    r"filters of watched layer\(s\) \['head'\] \('head': layer 'head' "
                    r"\(Dense\): its output is \(or reaches unchanged\) an output of the "
                    r"model\)\. Supported: .* or pass revive=None\.")),
]  # fmt: skip


class BatchCounter(keras.callbacks.Callback):
    """Counts the training batches that started."""

    def __init__(self) -> None:
        super().__init__()
        self.batches = 0

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.batches += 1


@pytest.fixture(scope="module")
def model() -> Iterator[keras.Model]:
    model = tiny_cnn()
    yield model
    # No row may have trained it: every one was refused before the first batch.
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0


def _named(case: Case) -> set[str]:
    """The arguments a case's message names ("argument `x`", "arguments `x` and `y`")."""
    text = case.message if isinstance(case.message, str) else case.message.pattern
    found = re.findall(r"arguments? `(\w+)`(?: and `(\w+)`)?", text)
    return {name for pair in found for name in pair if name}


#: Arguments that can only be checked against the model, in `on_train_begin`.
NEEDS_THE_MODEL = {"probes", "stats_data", "layers", "draw_layers", "revive"}


def test_every_argument_has_a_rejection_case(files: Files) -> None:
    """Each argument of ActivationMonitor has a row refusing it; each row's message names an
    argument the row passes; rows refused at fit time are about what needs the model; ids are
    distinct."""
    arguments = set(inspect.signature(actwatch.ActivationMonitor).parameters)
    named = {c.id: _named(c) for c in CASES}
    assert {name for names in named.values() for name in names} == arguments
    for case in CASES:
        assert named[case.id], case.id
        assert named[case.id] <= {"probes", "log_dir"} | set(case.kwargs(files)), case.id
        if case.stage == "fit":
            assert named[case.id] <= NEEDS_THE_MODEL, case.id
    assert {c.stage for c in CASES} == {"init", "fit"}
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rejected_before_first_batch(
    case: Case, files: Files, model: keras.Model, tmp_path: Path
) -> None:
    """Each wrong argument is refused in the constructor or `on_train_begin`, message pinned."""
    kwargs = {"probes": X[:2], "log_dir": str(tmp_path / "logs"), **case.kwargs(files)}
    if isinstance(case.message, re.Pattern):
        pattern = case.message.pattern
    else:
        pattern = re.escape(case.message)
    counter = BatchCounter()
    if case.stage == "init":
        with pytest.raises(case.error, match=f"^{pattern}$"):
            actwatch.ActivationMonitor(**kwargs)
        return
    monitor = actwatch.ActivationMonitor(**kwargs)
    with pytest.raises(case.error, match=f"^{pattern}$"):
        model.fit(X, Y, epochs=1, batch_size=4, verbose=0, callbacks=[monitor, counter])
    assert counter.batches == 0
    assert not list((tmp_path / "logs").glob("events.*")), "nothing is written for a bad run"


# Data pipelines ----------------------------------------------------------------------------
# Issue 19: a tf.data.Dataset as `stats_data` was told "Convert your probes with
# np.asarray(...)": the wrong argument, and no fix for a pipeline. Each kind is now named, with
# how to take one batch from it; each test then follows that advice, which the monitor accepts.


class _Batches(keras.utils.PyDataset):
    """A keras PyDataset of two batches of (x, y)."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return X[4 * index : 4 * index + 4], Y[4 * index : 4 * index + 4]


def _tf_dataset() -> Any:
    tf = pytest.importorskip("tensorflow", reason="TensorFlow is blocked in this run")
    return tf.data.Dataset.from_tensor_slices((X, Y)).batch(4)


def _torch_loader() -> Any:
    pytest.importorskip("torch")
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    return DataLoader(TensorDataset(torch.as_tensor(X), torch.as_tensor(Y)), batch_size=4)


def _taken(kind: str, pipeline: Any) -> tuple[np.ndarray, np.ndarray]:
    """One batch taken from `pipeline` as its error message says."""
    if kind == "tf.data":
        x, y = next(iter(pipeline.take(1)))
        return np.asarray(x), np.asarray(y)
    if kind == "PyDataset":
        x, y = pipeline[0]
        return np.asarray(x), np.asarray(y)
    x, y = next(iter(pipeline))  # the DataLoader
    return x.cpu().numpy(), y.cpu().numpy()


_TAIL = ", with `x = ...` when it yields no labels; then pass "
PIPELINES = {
    "tf.data": (
        _tf_dataset,
        "a tf.data.Dataset (_BatchDataset); expected one batch as a numpy array (or image "
        "paths). Take a batch from it: `x, y = next(iter(ds.take(1)))` (its first batch; 256 "
        "samples of a batched one: `next(iter(ds.unbatch().batch(256)))`)" + _TAIL,
        "np.asarray({})",
    ),
    "PyDataset": (
        _Batches,
        "a keras PyDataset (_Batches); expected one batch as a numpy array (or image paths). "
        "Take a batch from it: `x, y = ds[0]` (its first batch)" + _TAIL,
        "np.asarray({})",
    ),
    "DataLoader": (
        _torch_loader,
        "a torch DataLoader; expected one batch as a numpy array (or image paths). Take a "
        "batch from it: `x, y = next(iter(loader))` (its first batch)" + _TAIL,
        "{}.cpu().numpy()",
    ),
}


@pytest.mark.parametrize("kind", sorted(PIPELINES))
def test_a_data_pipeline_as_stats_data_says_how_to_take_a_batch(kind: str, tmp_path: Path) -> None:
    """`stats_data=<dataset or loader>` names it and says how to take a batch; done so, the
    monitor accepts the batch."""
    make, received, convert = PIPELINES[kind]
    pipeline = make()
    x, y = convert.format("x"), convert.format("y")
    message = (
        f"Invalid value for argument `stats_data`: received {received}stats_data=({x}, {y}), "
        f"or stats_data={x} without labels."
    )
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        actwatch.ActivationMonitor(X[:2], tmp_path, stats_data=pipeline)
    batch = _taken(kind, pipeline)
    assert batch[0].shape == (4, 16, 16, 3)
    actwatch.ActivationMonitor(X[:2], tmp_path, stats_data=batch)


@pytest.mark.parametrize("kind", sorted(PIPELINES))
def test_a_data_pipeline_as_probes_or_x_names_that_argument(kind: str, tmp_path: Path) -> None:
    """The same advice for `probes` (a few samples of the batch) and the notebook's `x`."""
    make, received, convert = PIPELINES[kind]
    pipeline = make()
    x = convert.format("x")
    message = f"Invalid value for argument `probes`: received {received}probes={x}[:4]."
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        actwatch.ActivationMonitor(pipeline, tmp_path)
    message = f"Invalid value for argument `x`: received {received}x={x}."
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        actwatch.get_activations(tiny_cnn(), pipeline)
    actwatch.ActivationMonitor(_taken(kind, pipeline)[0][:4], tmp_path)


def test_an_iterator_is_named_by_its_type() -> None:
    """Any other iterator (here `map`) gets the generator's advice, named by its type."""
    with pytest.raises(TypeError, match=r"^Invalid value for argument `x`: received an "
                       r"iterator \(map\); expected one batch as a numpy array"):  # fmt: skip
        actwatch.get_activations(tiny_cnn(), map(np.asarray, [X[:2]]))
