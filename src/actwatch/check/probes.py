"""Probes: turn what the user gives into a validated batch of the model's input.

Accepted forms:

- a numpy array (or anything `np.asarray` takes) of shape `(batch, *input_shape)`;
- a list or tuple of image file paths (`str` / `os.PathLike`) or PIL images, loaded with
  Pillow (decompression-bomb guard on), converted to RGB or grayscale to match the model's
  channels and resized to the model's input size;
- for a multi-input model, a dict `{input_name: array}` or a list/tuple of arrays in the
  order of `model.inputs`.

The rule for `preprocess=`: it applies to images loaded from files or PIL objects, and only
to them. Such images hold raw pixel values in `[0, 255]`; `preprocess` (for example
`lambda x: x / 255.0` or `keras.applications.resnet50.preprocess_input`) brings them to the
model's input scale. Arrays are used as given: they are assumed to be in the model's input
scale already, like the arrays passed to `fit`. A `preprocess` given where every source is an
array would never run, so it is refused (`check_preprocess`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

__all__ = [
    "ModelInputs",
    "ProbeBatch",
    "ProbeSource",
    "check_preprocess",
    "model_inputs",
    "prepare_probes",
    "read_probe_source",
]

#: Called with the first input's batch, or a list of batches for multi-input models.
Preprocess = Callable[[Any], Any]


@dataclass(frozen=True)
class ModelInputs:
    """What a model expects as input, read once from `model.inputs`.

    Empty for a subclassed model whose input shape Keras did not record (its `call` could
    not be traced symbolically): arrays are then used as given, and images refused.
    """

    shapes: tuple[tuple[int | None, ...], ...]
    names: tuple[str, ...]
    dtypes: tuple[str, ...]


def model_inputs(model: Any) -> ModelInputs:
    """The shapes, names and dtypes of `model`'s inputs; a clear error if it has none.

    A subclassed model has no `inputs`: its input shape is the one Keras built it with
    (`get_build_config()`, set by its first call, `build()` or `fit`), one input per tensor
    of its first `call` argument; empty when Keras did not record one.
    """
    inputs = getattr(model, "inputs", None) if getattr(model, "built", False) else None
    if inputs:
        return ModelInputs(
            shapes=tuple(tuple(t.shape) for t in inputs),
            names=tuple(t.name for t in inputs),
            dtypes=tuple(str(t.dtype) for t in inputs),
        )
    if not getattr(model, "built", False):
        raise ValueError(
            f"ActivationMonitor needs a built model with known inputs; model {model.name!r} "
            "has none. Build it with an `keras.Input(...)` first layer (Sequential) or the "
            "Functional API, or, for a subclassed model, call it once on a batch or call "
            "`model.build(input_shape)` first."
        )
    shapes = _build_shapes(model)
    if shapes is None:  # built by an eager call Keras could not trace: shape unknown
        return ModelInputs(shapes=(), names=(), dtypes=())
    dtype = str(getattr(model, "input_dtype", None) or "float32")
    names = ("input",) if len(shapes) == 1 else tuple(f"input_{i}" for i in range(len(shapes)))
    return ModelInputs(shapes=shapes, names=names, dtypes=(dtype,) * len(shapes))


def _is_shape(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(d is None or isinstance(d, int) for d in value)


def _build_shapes(model: Any) -> tuple[tuple[int | None, ...], ...] | None:
    """The input shapes a subclassed model was built with; None if Keras does not say."""
    try:
        config = model.get_build_config()
    except Exception:  # a user's get_build_config may fail: then the shape is unknown
        return None
    shape = config.get("input_shape") if isinstance(config, dict) else None
    if _is_shape(shape) and shape:
        return (tuple(shape),)
    if isinstance(shape, (list, tuple)) and shape and all(_is_shape(s) and s for s in shape):
        return tuple(tuple(s) for s in shape)
    return None


@dataclass(frozen=True)
class ProbeSource:
    """What the user passed, checked for what can be checked without the model."""

    arrays: tuple[np.ndarray, ...] | None  # one per model input, in order
    names: tuple[str, ...] | None  # input names when given as a dict
    images: tuple[Image.Image, ...] | None  # decoded images when given as files/PIL
    argument: str


@dataclass(frozen=True)
class ProbeBatch:
    """A batch ready for the model: one float array per input, plus a picture of each probe.

    `display` holds one uint8 RGB image `(height, width, 3)` per probe, used as the
    background of heatmaps; `None` when the first input is not an image.
    """

    inputs: tuple[np.ndarray, ...]
    display: np.ndarray | None

    @property
    def size(self) -> int:
        return int(self.inputs[0].shape[0])

    def feed(self) -> np.ndarray | list[np.ndarray]:
        """The value to pass to the model: an array, or a list for multi-input models."""
        return self.inputs[0] if len(self.inputs) == 1 else list(self.inputs)


def _is_image_like(item: object) -> bool:
    return isinstance(item, (str, os.PathLike, Image.Image))


def _open_image(item: str | os.PathLike[str] | Image.Image, argument: str) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    path = os.fspath(item)
    if not os.path.exists(path):
        raise ValueError(
            f"Invalid value for argument `{argument}`: the image file {path!r} does not "
            "exist. Pass paths to existing image files, PIL images, or a numpy array."
        )
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that: treat both
            # as an error, an untrusted file must not exhaust memory.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return image.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(
            f"Invalid value for argument `{argument}`: {path!r} is too large to decode safely "
            f"({exc}). Resize the image or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it."
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(
            f"Invalid value for argument `{argument}`: {path!r} could not be read as an "
            f"image ({type(exc).__name__}: {exc}). Pass a PNG, JPEG or other file Pillow reads."
        ) from None


def _check_array(value: Any, argument: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except Exception as exc:  # ragged lists and other oddities
        raise TypeError(
            f"Invalid value for argument `{argument}`: could not convert it to a numpy array "
            f"({exc}). Expected a numpy array of shape (batch, height, width, channels)."
        ) from None
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.bool_)
    ):
        raise TypeError(
            f"Invalid value for argument `{argument}`: expected a numeric array. "
            f"Received: dtype={array.dtype}. Convert your probes with np.asarray(x, 'float32')."
        )
    if array.ndim < 2:
        raise ValueError(
            f"Invalid value for argument `{argument}`: expected a batch with at least 2 "
            f"dimensions (batch, ...). Received: shape={array.shape}. Pass a batch of "
            "samples, for example x_val[:4]."
        )
    if array.shape[0] == 0:
        raise ValueError(
            f"Invalid value for argument `{argument}`: it is empty (shape={array.shape}). "
            "Pass at least one sample, for example x_val[:4]."
        )
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        raise ValueError(
            f"Invalid value for argument `{argument}`: expected finite values. Received "
            f"{bad} NaN or Inf value(s) in shape {array.shape}. Check the data, or replace "
            "them with np.nan_to_num(x)."
        )
    return array


def read_probe_source(value: Any, argument: str = "probes") -> ProbeSource:
    """Check `value` as far as possible without a model; decode image files."""
    if value is None:
        raise ValueError(
            f"Invalid value for argument `{argument}`: received None. Expected a numpy array "
            "batch, a list of image paths or PIL images, or a dict for multi-input models."
        )
    if isinstance(value, Mapping):
        if not value:
            raise ValueError(
                f"Invalid value for argument `{argument}`: the dict is empty. Pass "
                "{input_name: array} with one entry per model input."
            )
        names = tuple(str(k) for k in value)
        arrays = tuple(_check_array(v, f"{argument}[{k!r}]") for k, v in value.items())
        _check_same_batch(arrays, argument)
        return ProbeSource(arrays=arrays, names=names, images=None, argument=argument)
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            raise ValueError(
                f"Invalid value for argument `{argument}`: the list is empty. Pass at least one "
                "image path, PIL image or array."
            )
        if all(_is_image_like(v) for v in value):
            images = tuple(_open_image(v, argument) for v in value)
            return ProbeSource(arrays=None, names=None, images=images, argument=argument)
        if any(_is_image_like(v) for v in value):
            raise TypeError(
                f"Invalid value for argument `{argument}`: a list mixing image paths or PIL "
                "images with other values. Pass only images, or one array per model input."
            )
        if all(isinstance(v, np.ndarray) and v.ndim >= 2 for v in value) and len(value) > 1:
            # One array per model input. A list of equal-shape arrays could also be a
            # batch written as a list: that case is resolved against the model later.
            arrays = tuple(_check_array(v, f"{argument}[{i}]") for i, v in enumerate(value))
            return ProbeSource(arrays=arrays, names=None, images=None, argument=argument)
    array = _check_array(value, argument)
    return ProbeSource(arrays=(array,), names=None, images=None, argument=argument)


def _check_same_batch(arrays: Sequence[np.ndarray], argument: str) -> None:
    sizes = {a.shape[0] for a in arrays}
    if len(sizes) > 1:
        raise ValueError(
            f"Invalid value for argument `{argument}`: the inputs have different batch sizes "
            f"{sorted(sizes)}. Give every input the same number of samples."
        )


def _display_from_array(batch: np.ndarray) -> np.ndarray | None:
    """A uint8 RGB picture of each probe, scaled per probe to its own range."""
    if batch.ndim != 4:
        return None
    x = batch.astype(np.float32)
    if x.shape[-1] not in (1, 3) and x.shape[1] in (1, 3):  # channels_first
        x = np.moveaxis(x, 1, -1)
    if x.shape[-1] not in (1, 3):
        return None
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    hi = x.max(axis=(1, 2, 3), keepdims=True)
    x = (x - lo) / np.where(hi > lo, hi - lo, 1.0)
    out: np.ndarray = np.round(x * 255.0).astype(np.uint8)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return out


def _describe_shape(shape: Sequence[int | None]) -> str:
    return "(" + ", ".join("batch" if i == 0 else str(d) for i, d in enumerate(shape)) + ")"


def _resize_images(
    images: Sequence[Image.Image], input_shape: Sequence[int | None], argument: str
) -> np.ndarray:
    if len(input_shape) != 4:
        raise ValueError(
            f"Invalid value for argument `{argument}`: images were given, but the model's "
            f"input has shape {_describe_shape(input_shape)}, not (batch, height, width, "
            "channels). Pass a numpy array instead."
        )
    channels_first = input_shape[1] in (1, 3) and input_shape[3] not in (1, 3)
    h, w, c = (
        (input_shape[2], input_shape[3], input_shape[1])
        if channels_first
        else (input_shape[1], input_shape[2], input_shape[3])
    )
    if h is None or w is None or c not in (1, 3):
        raise ValueError(
            f"Invalid value for argument `{argument}`: images were given, but the model's "
            f"input shape {_describe_shape(input_shape)} has no fixed size with 1 or 3 "
            "channels to resize them to. Resize them yourself and pass a numpy array."
        )
    mode = "L" if c == 1 else "RGB"
    arrays = []
    for image in images:
        resized = image.convert(mode).resize((int(w), int(h)), Image.Resampling.BILINEAR)
        pixels = np.asarray(resized, dtype=np.float32)
        arrays.append(pixels[..., None] if c == 1 else pixels)
    batch = np.stack(arrays)
    return np.moveaxis(batch, -1, 1) if channels_first else batch


def check_preprocess(preprocess: Any, sources: Sequence[ProbeSource | None]) -> None:
    """Refuse a `preprocess` that is not callable, or that would never run.

    `preprocess` applies only to images loaded from files or PIL objects (see the module
    docstring); when every source is an array it would be silently ignored.
    """
    if preprocess is None:
        return
    if not callable(preprocess):
        raise TypeError(
            "Invalid value for argument `preprocess`. Expected a callable taking a numpy "
            f"batch. Received: preprocess={preprocess!r}"
        )
    given = [s for s in sources if s is not None]
    if given and all(s.images is None for s in given):
        names = " and ".join(f"`{s.argument}`" for s in given)
        raise ValueError(
            f"Invalid value for argument `preprocess`: it applies only to images loaded from "
            f"files or PIL images, and {names} {'is an array' if len(given) == 1 else 'are arrays'}"
            ", which actwatch uses as given (in the model's input scale, like the data passed "
            "to `fit`). Apply it to the arrays yourself, e.g. probes=preprocess(x), and drop "
            "`preprocess=`."
        )


def _as_given(source: ProbeSource) -> ProbeBatch:
    """Arrays for a model whose input shape is unknown: used as given, floats as float32."""
    if source.arrays is None:
        raise ValueError(
            f"Invalid value for argument `{source.argument}`: images were given, but the "
            "model's input size is unknown (a subclassed model whose input shape Keras did "
            "not record), so they cannot be resized to it. Pass a numpy array of the model's "
            "input, or call `model.build(input_shape)` first."
        )
    arrays = source.arrays
    _check_same_batch(arrays, source.argument)
    checked = tuple(
        np.ascontiguousarray(a, dtype=np.float32 if a.dtype.kind == "f" else a.dtype)
        for a in arrays
    )
    return ProbeBatch(inputs=checked, display=_display_from_array(checked[0]))


def prepare_probes(
    source: ProbeSource,
    inputs: ModelInputs,
    preprocess: Preprocess | None = None,
) -> ProbeBatch:
    """Resolve `source` against the model's inputs; raise a clear error on any mismatch.

    `preprocess` is applied to images loaded from files or PIL objects only.
    """
    input_shapes, input_names, input_dtypes = inputs.shapes, inputs.names, inputs.dtypes
    argument = source.argument
    if not input_shapes:
        return _as_given(source)
    if source.images is not None:
        raw = _resize_images(source.images, input_shapes[0], argument)
        arrays: tuple[np.ndarray, ...] = (raw,)
        display = _display_from_array(raw)
    else:
        assert source.arrays is not None
        arrays = source.arrays
        if source.names is not None:
            missing = sorted(set(input_names) - set(source.names))
            extra = sorted(set(source.names) - set(input_names))
            if missing or extra:
                raise ValueError(
                    f"Invalid value for argument `{argument}`: the dict keys "
                    f"{list(source.names)} do not match the model's inputs "
                    f"{list(input_names)} (missing {missing}, unexpected {extra}). Key the "
                    "dict by the model's input names."
                )
            by_name = dict(zip(source.names, arrays, strict=True))
            arrays = tuple(by_name[name] for name in input_names)
        if len(arrays) != len(input_shapes):
            if len(input_shapes) == 1 and len(arrays) > 1:
                arrays = (_check_array(np.stack(arrays), argument),)
            else:
                raise ValueError(
                    f"Invalid value for argument `{argument}`: the model has "
                    f"{len(input_shapes)} inputs {list(input_names)} but {len(arrays)} "
                    "arrays were given. Pass one array per input, as a list in order or "
                    "a dict keyed by input name."
                )
        _check_same_batch(arrays, argument)
        display = _display_from_array(arrays[0])
        preprocess = None  # arrays are used as given
    if preprocess is not None:
        processed = preprocess(arrays[0] if len(arrays) == 1 else list(arrays))
        if isinstance(processed, (list, tuple)):
            arrays = tuple(np.asarray(p) for p in processed)
        else:
            arrays = (np.asarray(processed),)
    checked = []
    # A shape that `preprocess` changed is its fault, not the probes': say so.
    after = " after `preprocess`" if preprocess is not None else ""
    for i, (array, shape, dtype) in enumerate(zip(arrays, input_shapes, input_dtypes, strict=True)):
        name = argument if len(arrays) == 1 else f"{argument}[{input_names[i]!r}]"
        expected = _describe_shape(shape)
        if array.ndim == len(shape) - 1 and all(
            e is None or e == g for e, g in zip(shape[1:], array.shape, strict=True)
        ):
            raise ValueError(
                f"Invalid value for argument `{name}`: expected shape {expected}; got shape "
                f"{array.shape}{after}. Did you forget the batch dimension? Use {name}[None]."
            )
        if array.ndim != len(shape):
            raise ValueError(
                f"Invalid value for argument `{name}`: expected {len(shape)} dimensions "
                f"{expected}; got shape {array.shape}{after}. Reshape it to the model's "
                "input shape."
            )
        for axis, (want, got) in enumerate(zip(shape[1:], array.shape[1:], strict=True), 1):
            if want is not None and want != got:
                what = "channels differ" if axis == len(shape) - 1 else f"axis {axis} differs"
                raise ValueError(
                    f"Invalid value for argument `{name}`: expected shape {expected}; got "
                    f"shape {array.shape}{after} ({what}). Resize or select your probes to "
                    "the model's input shape."
                )
        target = np.dtype(dtype) if np.dtype(dtype).kind in "fiub" else np.dtype("float32")
        checked.append(np.ascontiguousarray(array, dtype=target))
    return ProbeBatch(inputs=tuple(checked), display=display)
