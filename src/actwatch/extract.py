"""Choosing the watched layers and building one extractor for them.

Layers are addressed by *path*: a layer's name, prefixed by the names of the nested models it
sits in (`backbone/conv1`). `resolve_layers` turns what the user passed into `WatchedLayer`s;
`Extractor` builds one functional model that returns every watched output in a single
inference-mode forward pass, and compiles it once (with whatever reductions the caller adds)
using the backend's compiler: `tf.function`, `jax.jit` over `stateless_call`, or a plain call
under `torch.no_grad()`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import keras

__all__ = [
    "Extractor",
    "WatchedLayer",
    "check_layer_specs",
    "iter_layers",
    "resolve_layers",
]

LayerSpec: TypeAlias = "str | re.Pattern[str] | keras.layers.Layer"
T = TypeVar("T")

_POOLING_TYPES: tuple[type[Any], ...] = (
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
)
_DEFAULT_TYPES: tuple[type[Any], ...] = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
    *_POOLING_TYPES,
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.PReLU,
    keras.layers.ELU,
)


@dataclass(frozen=True)
class WatchedLayer:
    """A layer to watch: its path, the layer, and how to read its output.

    `rank` is the output's rank including the batch axis: 2 (Dense), 3 (1-D), 4 (2-D) or
    5 (3-D). `channel_axis` is 1 or -1. `pooling` is True for pooling layers, which repeat
    the dead filters of their input and so raise no dead-filter alerts of their own.
    """

    path: str
    layer: keras.layers.Layer
    rank: int
    channel_axis: int
    channels: int
    pooling: bool


def iter_layers(model: keras.layers.Layer, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yield `(path, layer)` for every layer of `model`, depth first, nested models included."""
    for layer in getattr(model, "layers", []):
        path = f"{prefix}{layer.name}"
        yield path, layer
        if isinstance(layer, keras.Model):
            yield from iter_layers(layer, prefix=f"{path}/")


def _is_graph_model(model: Any) -> bool:
    """Functional and Sequential models have a graph of layer outputs; subclassed ones don't.

    Keras has no public predicate for "Functional", so we look for its node table.
    """
    return isinstance(model, keras.Sequential) or (
        isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth")
    )


def _channel_axis(layer: Any, rank: int, inherited: str | None = None) -> int:
    """1 or -1: the layer's own `data_format` or `axis`; else the format of the nearest
    earlier layer that has one (`inherited`, for ReLU/Activation after a channels_first
    convolution); else Keras' global `image_data_format`."""
    if rank <= 2:
        return -1
    data_format = getattr(layer, "data_format", None)
    if data_format is None:
        axis = getattr(layer, "axis", None)  # BatchNormalization and friends
        if isinstance(axis, int):
            return 1 if axis in (1, 1 - rank) else -1
        if isinstance(axis, (list, tuple)) and len(axis) == 1:
            return 1 if axis[0] in (1, 1 - rank) else -1
        data_format = inherited or keras.config.image_data_format()
    return 1 if data_format == "channels_first" else -1


def _output_of(layer: Any, path: str) -> Any:
    try:
        return layer.output
    except (AttributeError, ValueError, RuntimeError) as exc:
        raise ValueError(
            f"Invalid value for argument `layers`: layer {path!r} has no output to watch "
            f"({exc}). Only layers that were called in the model's graph can be watched."
        ) from None


def _watchable(path: str, layer: Any, inherited: str | None = None) -> WatchedLayer:
    output = _output_of(layer, path)
    if not isinstance(output, keras.KerasTensor):
        raise ValueError(
            f"Invalid value for argument `layers`: layer {path!r} returns "
            f"{type(output).__name__}, not a single tensor. Watch the layers that produce "
            "its parts instead."
        )
    rank = len(output.shape)
    dtype = str(output.dtype)
    if rank < 2 or rank > 5 or not ("float" in dtype or "int" in dtype):
        raise ValueError(
            f"Invalid value for argument `layers`: layer {path!r} outputs shape "
            f"{tuple(output.shape)} of dtype {dtype}; expected a numeric tensor of rank 2 to "
            "5 (batch, ..., channels). Choose a convolution, pooling, activation or Dense "
            "layer."
        )
    axis = _channel_axis(layer, rank, inherited)
    channels = output.shape[axis]
    if channels is None:
        raise ValueError(
            f"Invalid value for argument `layers`: layer {path!r} has an unknown number of "
            f"channels (output shape {tuple(output.shape)}). Give the model a fixed channel "
            "count."
        )
    return WatchedLayer(
        path=path,
        layer=layer,
        rank=rank,
        channel_axis=axis,
        channels=int(channels),
        pooling=isinstance(layer, _POOLING_TYPES),
    )


def _subclassed_error(model: Any) -> ValueError:
    return ValueError(
        f"Model {model.name!r} is a subclassed model ({type(model).__name__}): actwatch reads "
        "layer outputs from a model's graph of layers, which subclassed models do not have. "
        "Build the model, or the part you want to watch, with the Functional API "
        "(`outputs = ...(keras.Input(...))`, `keras.Model(inputs, outputs)`) or as a "
        "`keras.Sequential`; Functional sub-models can be watched by path, e.g. "
        "'backbone/conv1'."
    )


def check_layer_specs(layers: Any, argument: str = "layers") -> list[LayerSpec] | None:
    """Validate the `layers` argument without a model: None, or a non-empty list of specs.

    The one place that checks the argument's form; `resolve_layers` matches the specs against
    a model. Raises TypeError or ValueError saying what was received and what is expected.
    """
    if layers is None:
        return None
    if isinstance(layers, (str, re.Pattern, keras.layers.Layer)):
        return [layers]
    if not isinstance(layers, Sequence) or isinstance(layers, (bytes, bytearray)):
        raise TypeError(
            f"Invalid value for argument `{argument}`: expected None, a name, a regex, a Layer "
            f"or a list of them. Received: {argument}={layers!r}."
        )
    if len(layers) == 0:
        raise ValueError(
            f"Invalid value for argument `{argument}`: the list is empty. Pass "
            f"{'None to watch' if argument == 'layers' else repr('auto') + ' to draw'} the "
            "default layers, or at least one layer name."
        )
    for item in layers:
        if not isinstance(item, (str, re.Pattern, keras.layers.Layer)):
            raise TypeError(
                f"Invalid value for argument `{argument}`: expected layer names, regex patterns "
                f"or Layer objects. Received an item of type {type(item).__name__}: {item!r}."
            )
    return list(layers)


def resolve_layers(
    model: keras.Model, layers: LayerSpec | Sequence[LayerSpec] | None
) -> list[WatchedLayer]:
    """Resolve `layers` against `model` into an ordered, de-duplicated list.

    `None` selects every convolution, pooling and activation layer with a channel axis (in
    nested models too). Otherwise each item is a path (`"conv1"`, `"backbone/conv1"`), a
    regular expression matched in full against paths (a `str` that names no layer, or a
    compiled pattern), or a `keras.layers.Layer` of the model.
    """
    if not _is_graph_model(model):
        raise _subclassed_error(model)
    table = list(iter_layers(model))
    paths = [p for p, _ in table]
    by_path = dict(table)
    chosen: list[str] = []
    if layers is None:
        for path, layer in table:
            if isinstance(layer, _DEFAULT_TYPES) and not isinstance(layer, keras.Model):
                try:
                    output = layer.output
                except (AttributeError, ValueError, RuntimeError):
                    continue
                if isinstance(output, keras.KerasTensor) and 3 <= len(output.shape) <= 5:
                    chosen.append(path)
        if not chosen:
            raise ValueError(
                f"Model {model.name!r} has no convolution, pooling or activation layer to watch "
                "by default. Pass `layers=[...]` with the names of the layers to watch "
                f"(available: {paths[:20]})."
            )
    else:
        for spec in check_layer_specs(layers) or ():
            chosen.extend(_match(spec, table, by_path, paths))
    unique = list(dict.fromkeys(chosen))
    formats: dict[str, str | None] = {}
    last: str | None = None
    for path, layer in table:  # model order is topological
        last = getattr(layer, "data_format", None) or last
        formats[path] = last
    return [_watchable(path, by_path[path], formats[path]) for path in unique]


def _match(
    spec: Any, table: list[tuple[str, Any]], by_path: dict[str, Any], paths: list[str]
) -> list[str]:
    if isinstance(spec, keras.layers.Layer):
        found = [p for p, layer in table if layer is spec]
        if not found:
            raise ValueError(
                f"Invalid value for argument `layers`: layer {spec.name!r} "
                f"({type(spec).__name__}) is not part of this model. Pass a layer of the "
                "model being trained, or its name."
            )
        return found[:1]
    if isinstance(spec, re.Pattern):
        found = [p for p in paths if spec.fullmatch(p)]
        if not found:
            raise ValueError(
                f"Invalid value for argument `layers`: the pattern {spec.pattern!r} matches no "
                f"layer. Available layers: {paths[:30]}."
            )
        return found
    if spec in by_path:
        return [spec]
    try:
        pattern = re.compile(spec)
    except re.error:
        pattern = None
    found = [p for p in paths if pattern.fullmatch(p)] if pattern is not None else []
    if found:
        return found
    close = difflib.get_close_matches(spec, paths, n=5, cutoff=0.4)
    hint = f" Did you mean {close}?" if close else ""
    raise ValueError(
        f"Invalid value for argument `layers`: no layer named {spec!r}.{hint} Layers of "
        f"this model: {paths[:30]}{' ...' if len(paths) > 30 else ''}."
    )


def _feeding_tensors(container: Any, path: str) -> list[Any]:
    """The tensors of the enclosing graph that feed the nested model `container`.

    Read from the nested model's first inbound node: Keras has no public API for it, and this
    is the only place actwatch touches a private Keras attribute.
    """
    nodes = getattr(container, "_inbound_nodes", None)
    if not nodes:
        raise ValueError(
            f"Invalid value for argument `layers`: the nested model {path!r} is not "
            "called in the model's graph, so its layers cannot be watched."
        )
    return list(nodes[0].input_tensors)


def _container(model: keras.Model, path: str) -> Any:
    container = next(lyr for p, lyr in iter_layers(model) if p == path)
    if not _is_graph_model(container):
        raise _subclassed_error(container)
    return container


def _call(model: keras.Model, tensors: Sequence[Any]) -> list[Any]:
    return _as_list(model(tensors[0] if len(tensors) == 1 else list(tensors)))


def _root_outputs(model: keras.Model, watched: Sequence[WatchedLayer]) -> list[Any]:
    """The watched layers' outputs as tensors of `model`'s own graph, in order.

    A layer inside a nested model lives in that model's graph. For each nested model that
    holds watched layers (or holds nested models that do), one tap model is built in that
    model's own graph, from its inputs to all the outputs needed there (the watched layers'
    outputs and the tensors feeding deeper nested models), and called once on the tensors
    that feed it one level up. Taps compose from the root down, so the extractor stays one
    graph from the outer inputs and each nested network runs once per check: building one
    sub-model per watched output would re-run the network's prefix for each of them (8.8 s
    instead of 0.30 s per call for ResNet50's 103 layers, measured).
    """
    own: dict[str, list[int]] = {}
    for index, w in enumerate(watched):
        own.setdefault(w.path.rpartition("/")[0], []).append(index)
    needed: set[str] = set()
    for container_path in own:
        while container_path:
            needed.add(container_path)
            container_path = container_path.rpartition("/")[0]
    outputs: list[Any] = [None] * len(watched)
    for index in own.get("", []):
        outputs[index] = watched[index].layer.output

    def tap(path: str, feed: list[Any]) -> None:
        container = _container(model, path)
        children = sorted(c for c in needed if c.rpartition("/")[0] == path)
        feeds = [_feeding_tensors(_container(model, c), c) for c in children]
        mine = own.get(path, [])
        wanted = [watched[i].layer.output for i in mine] + [t for f in feeds for t in f]
        name = f"actwatch_tap_{path.replace('/', '_')}"
        got = _call(keras.Model(container.inputs, wanted, name=name), feed)
        for k, index in enumerate(mine):
            outputs[index] = got[k]
        start = len(mine)
        for child, child_feed in zip(children, feeds, strict=True):
            tap(child, got[start : start + len(child_feed)])
            start += len(child_feed)

    for top in sorted(c for c in needed if "/" not in c):
        tap(top, _feeding_tensors(_container(model, top), top))
    return outputs


def _as_list(outputs: Any) -> list[Any]:
    """A functional model with one output returns it bare; make it a list."""
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


class Extractor:
    """One functional model returning every watched output, compiled once with a reduction.

    Args:
        model: the (Functional or Sequential) model being watched.
        watched: the layers to read, from `resolve_layers`.
    """

    def __init__(self, model: keras.Model, watched: Sequence[WatchedLayer]) -> None:
        outputs = _root_outputs(model, watched)
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        self.model = keras.Model(inputs, outputs, name="actwatch_extractor")

    def make_runner(self, reduce: Callable[[list[Any]], T]) -> Callable[[Any], T]:
        """Return `run(inputs)`: `reduce(outputs)` compiled once, with numpy leaves.

        `reduce` takes the watched outputs in order and returns any nested structure of
        tensors (lists, dicts); `run` returns the same structure with numpy arrays, after one
        inference-mode forward pass compiled by the backend's compiler.
        """
        backend = keras.backend.backend()
        model = self.model

        if backend == "jax":
            import jax

            def pure(trainable: Any, non_trainable: Any, x: Any) -> Any:
                outputs, _ = model.stateless_call(trainable, non_trainable, x, training=False)
                return reduce(_as_list(outputs))

            jitted = jax.jit(pure)

            def run_device(x: Any) -> Any:
                return jitted(
                    [v.value for v in model.trainable_variables],
                    [v.value for v in model.non_trainable_variables],
                    x,
                )

        elif backend == "tensorflow":
            import tensorflow as tf

            def call(x: Any) -> Any:
                return reduce(_as_list(model(x, training=False)))

            run_device = tf.function(call, reduce_retracing=True)

        elif backend == "torch":
            import torch

            def run_device(x: Any) -> Any:
                with torch.no_grad():
                    return reduce(_as_list(model(x, training=False)))

        else:  # pragma: no cover - numpy and future backends: eager.

            def run_device(x: Any) -> Any:
                return reduce(_as_list(model(x, training=False)))

        def run(x: Any) -> T:
            result = run_device(x)
            return keras.tree.map_structure(keras.ops.convert_to_numpy, result)  # type: ignore[no-any-return]

        return run


def resolve_drawn(model: keras.Model, watched: Sequence[WatchedLayer], spec: Any) -> list[str]:
    """The paths of the watched layers that `spec` (a `draw_layers` value other than "auto"
    and "all": names, paths, regular expressions, Layers) names, in network order.

    Raises ValueError when it names a layer that is not watched.
    """
    named = [w.path for w in resolve_layers(model, spec)]
    paths = [w.path for w in watched]
    missing = [p for p in named if p not in paths]
    if missing:
        raise ValueError(
            f"Invalid value for argument `draw_layers`: {missing} are not watched, so they "
            "cannot be drawn. Add them to `layers=`, or draw some of the watched layers: "
            f"{paths[:30]}{' ...' if len(paths) > 30 else ''}."
        )
    return [p for p in paths if p in named]
