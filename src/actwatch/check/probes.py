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

import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from actwatch.check.image_files import (
    describe_shape,
    display_pictures,
    is_image_like,
    open_image,
    resize_images,
)

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


_NUMPY = "np.asarray({})"
#: Data pipelines, told by the module and name of a class they derive from (neither TensorFlow
#: nor torch is imported): what they are, how to take a batch, how to make it numpy.
_PIPELINES = (
    ("tensorflow.", "Dataset", "a tf.data.Dataset", "`x, y = next(iter(ds.take(1)))` (its first "
     "batch; 256 samples of a batched one: `next(iter(ds.unbatch().batch(256)))`)", _NUMPY),
    ("keras.", "PyDataset", "a keras PyDataset", "`x, y = ds[0]` (its first batch)", _NUMPY),
    ("torch.utils.data", "DataLoader", "a torch DataLoader",
     "`x, y = next(iter(loader))` (its first batch)", "{}.cpu().numpy()"),
)  # fmt: skip


def _pipeline(value: Any) -> tuple[str, str, str] | None:
    """What, how to take a batch, how to convert it: for a pipeline (`_PIPELINES`) or an
    iterator such as a generator, which holds many batches; None for anything else."""
    for cls in type(value).__mro__:
        module = getattr(cls, "__module__", None) or ""
        for prefix, name, *found in _PIPELINES:
            if module.startswith(prefix) and name in cls.__name__:
                return found[0], found[1], found[2]
    if isinstance(value, Iterator):
        kind = "a generator" if inspect.isgenerator(value) else "an iterator"
        return kind, "`x, y = next(it)` (the next batch it yields)", _NUMPY
    return None


def _check_array(value: Any, argument: str) -> np.ndarray:
    pipeline = _pipeline(value)
    if pipeline is not None:
        kind, take, convert = pipeline
        x, y = convert.format("x"), convert.format("y")
        then = {
            "stats_data": f"stats_data=({x}, {y}), or stats_data={x} without labels",
            "probes": f"probes={x}[:4]",
        }.get(argument, f"{argument}={x}")
        if type(value).__name__ not in kind:
            kind += f" ({type(value).__name__})"
        raise TypeError(
            f"Invalid value for argument `{argument}`: received {kind}; expected one batch as "
            "a numpy array (or image paths). "
            f"Take a batch from it: {take}, with `x = ...` when it yields no labels; then pass "
            f"{then}."
        )
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
        if array.dtype.kind in "US":  # strings: image paths in an array?
            fix = f"For image files pass a list of paths ({argument}=list(paths)); convert numbers"
        else:
            fix = "Pass numbers"
        received = f"dtype={array.dtype}"
        if array.ndim == 0:  # an object numpy could not see into
            received = f"an object of type {type(value).__name__} ({received})"
        raise TypeError(
            f"Invalid value for argument `{argument}`: expected a numeric array. Received: "
            f"{received}. {fix}, e.g. {argument}=np.asarray(x, 'float32')."
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
        if all(is_image_like(v) for v in value):
            images = tuple(open_image(v, argument) for v in value)
            return ProbeSource(arrays=None, names=None, images=images, argument=argument)
        if any(is_image_like(v) for v in value):
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
    return ProbeBatch(inputs=checked, display=display_pictures(checked[0]))


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
        raw = resize_images(source.images, input_shapes[0], argument)
        arrays: tuple[np.ndarray, ...] = (raw,)
        display = display_pictures(raw)
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
        display = display_pictures(arrays[0])
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
        expected = describe_shape(shape)
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
