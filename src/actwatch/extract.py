"""Choosing the watched layers and building one extractor for them.

Layers are addressed by *path*, one segment per step down the layer tree:

- inside a Functional or Sequential model, a layer is named by its `name`
  (`backbone/conv1`, as `model.get_layer` would, nested models included);
- inside a subclassed model or a custom layer (anything without a graph of layer outputs),
  a sublayer is named by the attribute that holds it, with the index or key for layers held
  in a list or dict: `block/res_conv_a`, `blocks/0/conv`. Attributes starting with `_` are
  skipped, Keras' own layers are not entered (a `TimeDistributed` is watched whole), and a
  layer reachable twice is listed once, at its first path.

`resolve_layers` turns what the user passed into `WatchedLayer`s; `Extractor` reads every
watched output in a single inference-mode forward pass, compiled once (with whatever
reductions the caller adds) by the backend's compiler: `tf.function`, `jax.jit` over
`stateless_call`, or a plain call under `torch.no_grad()`.

Where every watched layer sits in graph models, the extractor is one functional model of
their outputs (the fast path). A layer inside a custom layer's or a subclassed model's
`call` has no tensor in any graph: its output is *captured*. For the duration of each of
actwatch's own calls (never during `fit`'s train step), `layer.call` is set on the instance
to a wrapper that keeps what the layer returns, inside the compiler's trace, and the
captured tensors are returned from the compiled function; the instance attribute is removed
afterwards, so the model is left exactly as it was (saving and loading are unaffected).
Captured layers are found, and their output shapes read, by one eager call of the model on
the probes. A layer called more than once in one forward pass (a shared layer, a block
applied twice) is watched at its first call, in graphs and in captures alike. A naming of a
layer that `call` never runs is an error listing the layers it does run. A model whose
`call` the compiler cannot trace (a tensor turned into a Python bool or number) is checked
eagerly, with one `ActwatchWarning`.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import keras
import numpy as np

from ._warnings import ActwatchWarning

__all__ = [
    "Extractor",
    "WatchedLayer",
    "check_layer_specs",
    "iter_layers",
    "resolve_drawn",
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


def _children(layer: Any) -> Iterator[tuple[str, Any]]:
    """`(name, child)` for the direct sublayers of `layer`.

    A graph model (Functional, Sequential) names its layers by their `name`; any other layer
    (a subclassed model, a custom layer) by the attribute that holds them, with the index or
    key for layers held in a list or dict (`blocks/0`). Private attributes are skipped, and
    Keras' own layers (`TimeDistributed`, `Bidirectional`, ...) are leaves: what they wrap is
    not a layer of the model's forward pass of its own.
    """
    if _is_graph_model(layer):
        for child in layer.layers:
            yield child.name, child
        return
    if type(layer).__module__.split(".")[0] == "keras":
        return
    attributes = dict(vars(layer))
    if keras.backend.backend() == "torch":  # torch keeps sub-modules out of `__dict__`
        attributes.update(layer.named_children())
    for attr, value in attributes.items():
        if attr.startswith("_"):
            continue
        if isinstance(value, keras.layers.Layer):
            yield attr, value
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if isinstance(item, keras.layers.Layer):
                    yield f"{attr}/{i}", item
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, keras.layers.Layer):
                    yield f"{attr}/{key}", item


def _walk(model: Any) -> list[tuple[str, Any, str | None]]:
    """`(path, layer, anchor)` for every sublayer of `model`, depth first, each layer once.

    `anchor` is None for a layer reachable through graph models only (its output is a tensor
    of a graph: the fast path); otherwise it is the path of the outermost layer without a
    graph on the way to it (`""` for a subclassed root model), whose call runs it, so its
    output is captured while that call runs.
    """
    seen = {id(model)}
    table: list[tuple[str, Any, str | None]] = []

    def visit(layer: Any, prefix: str, anchor: str | None) -> None:
        inner = anchor
        if inner is None and not _is_graph_model(layer):
            inner = prefix.rstrip("/")
        for name, child in _children(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}{name}"
            table.append((path, child, inner))
            visit(child, f"{path}/", inner)

    visit(model, "", None)
    return table


def iter_layers(model: keras.layers.Layer, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yield `(path, layer)` for every layer of `model`, depth first, sublayers included."""
    for path, layer, _ in _walk(model):
        yield f"{prefix}{path}", layer


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


def _watchable(
    path: str, layer: Any, inherited: str | None = None, output: Any = None
) -> WatchedLayer:
    if output is None:
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


_MISSING = object()


class _Capture:
    """Capturing wrappers on layers' `call`, set on the instances only while a call runs.

    `installed()` sets `layer.call` on each instance to a wrapper that keeps the layer's
    output of its first call in `outputs` (keyed by `id(layer)`: layers without weights may
    have no `path`), and restores the instance as it was on exit, whatever happened. Inside
    a trace (`tf.function`, `jax.jit`) the outputs are the trace's tensors, to be returned
    from it. A wrapper set after Keras compiled its own train step captures nothing, which
    is why the wrappers live only around actwatch's own calls.
    """

    def __init__(self, layers: Sequence[Any]) -> None:
        self.layers = list({id(layer): layer for layer in layers}.values())
        self.outputs: dict[int, Any] = {}

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        saved: list[tuple[Any, Any]] = []
        try:
            for layer in self.layers:
                saved.append((layer, vars(layer).get("call", _MISSING)))
                layer.call = self._wrapper(id(layer), layer.call)
            yield
        finally:
            for layer, previous in reversed(saved):
                if previous is _MISSING:
                    del layer.call
                else:
                    layer.call = previous

    def _wrapper(self, key: int, original: Callable[..., Any]) -> Callable[..., Any]:
        outputs = self.outputs

        @functools.wraps(original)
        def call(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            if key not in outputs:  # a layer called twice is watched at its first call
                outputs[key] = out
            return out

        return call


@contextlib.contextmanager
def _inference() -> Iterator[None]:
    """No autograd bookkeeping for an eager call on PyTorch; nothing elsewhere."""
    if keras.backend.backend() == "torch":
        import torch

        with torch.no_grad():
            yield
    else:
        yield


def _takes_training(model: Any) -> bool:
    """Whether `model.call` accepts `training=` (by name or through `**kwargs`)."""
    parameters = inspect.signature(model.call).parameters.values()
    return any(p.name == "training" or p.kind is p.VAR_KEYWORD for p in parameters)


def _spec(value: Any) -> Any:
    """A captured tensor as a `KerasTensor` of its shape and dtype; anything else as is."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        shape = tuple(None if d is None else int(d) for d in value.shape)
        return keras.KerasTensor(shape, dtype=keras.backend.standardize_dtype(value.dtype))
    return value


def _trace(model: keras.Model, layers: Sequence[Any], sample: Any = None) -> dict[int, Any]:
    """Run `model` once, eagerly, on `sample` (or a zero sample) with `layers` captured.

    Returns `{id(layer): KerasTensor spec of its first output}` for the layers that were
    called, in the order their calls returned. Without `sample`, the input is one zero
    sample of the shape in `model.inputs` or, for a subclassed model, of the shape Keras
    built it with (unknown sizes other than the batch are 32).
    """
    if sample is None:
        from .probes import model_inputs

        try:
            inputs = model_inputs(model)
        except ValueError:
            inputs = None
        if inputs is None or not inputs.shapes:
            raise ValueError(
                f"Model {model.name!r} ({type(model).__name__}) has not been built with a "
                "known input shape, so actwatch cannot find which layers its `call` runs. "
                "Call `model.build(input_shape)` first, or pass probes as arrays."
            )
        feed = [
            np.zeros((1, *(32 if d is None else d for d in shape[1:])), dtype=dtype)
            for shape, dtype in zip(inputs.shapes, inputs.dtypes, strict=True)
        ]
        sample = feed[0] if len(feed) == 1 else feed
    capture = _Capture(layers)
    with capture.installed(), _inference():
        model(sample, training=False)
    return {key: _spec(value) for key, value in capture.outputs.items()}


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
    model: keras.Model,
    layers: LayerSpec | Sequence[LayerSpec] | None,
    sample: Any = None,
) -> list[WatchedLayer]:
    """Resolve `layers` against `model` into an ordered, de-duplicated list.

    `None` selects every convolution, pooling and activation layer with a channel axis (in
    nested models and custom layers too). Otherwise each item is a path (`"conv1"`,
    `"backbone/conv1"`, `"block/res_conv_a"`), a regular expression matched in full against
    paths (a `str` that names no layer, or a compiled pattern), or a `keras.layers.Layer` of
    the model. Layers reached through a subclassed model or a custom layer are found by
    running the model once, eagerly, on `sample` (the probes, as fed to the model) or else
    on one zero sample of the model's input shape; that call also tells their output shapes.
    """
    table = _walk(model)
    paths = [p for p, _, _ in table]
    by_path = {p: layer for p, layer, _ in table}
    anchors = {p: anchor for p, _, anchor in table}
    if layers is None:
        candidates = [
            p
            for p in paths
            if isinstance(by_path[p], _DEFAULT_TYPES) and not isinstance(by_path[p], keras.Model)
        ]
    else:
        pairs = [(p, by_path[p]) for p in paths]
        candidates = []
        for spec in check_layer_specs(layers) or ():
            candidates.extend(_match(spec, pairs, by_path, paths))
    traced: dict[int, Any] = {}
    if any(anchors[p] is not None for p in candidates):
        traced = _trace(model, [by_path[p] for p in paths if anchors[p] is not None], sample)
    outputs: dict[str, Any] = {}
    for path in dict.fromkeys(candidates):
        layer = by_path[path]
        if anchors[path] is None:
            try:
                outputs[path] = layer.output
            except (AttributeError, ValueError, RuntimeError):
                if layers is not None:
                    outputs[path] = _output_of(layer, path)  # raises the clear error
        elif id(layer) in traced:
            outputs[path] = traced[id(layer)]
        elif layers is not None:
            raise _never_called(model, path, anchors[path], by_path, traced)
    if layers is None:
        outputs = {
            p: out
            for p, out in outputs.items()
            if isinstance(out, keras.KerasTensor) and 3 <= len(out.shape) <= 5
        }
        if not outputs:
            raise ValueError(
                f"Model {model.name!r} has no convolution, pooling or activation layer to "
                "watch by default. Pass `layers=[...]` with the names of the layers to watch "
                f"(available: {paths[:20]})."
            )
    formats: dict[str, str | None] = {}
    last: str | None = None
    for path in paths:  # model order is topological (attribute order in custom layers)
        last = getattr(by_path[path], "data_format", None) or last
        formats[path] = last
    position = {p: i for i, p in enumerate(paths)}
    called = {key: i for i, key in enumerate(traced)}

    def order(path: str) -> tuple[int, int]:
        """Graph layers in model order; captured ones where their custom layer (or the
        subclassed model) is, in the order their calls returned."""
        anchor = anchors[path]
        if anchor is None:
            return (position[path], -1)
        return (position[anchor] if anchor else -1, called[id(by_path[path])])

    return [_watchable(p, by_path[p], formats[p], outputs[p]) for p in sorted(outputs, key=order)]


def _never_called(
    model: Any, path: str, anchor: str | None, by_path: dict[str, Any], traced: dict[int, Any]
) -> ValueError:
    owner = by_path[anchor] if anchor else model
    order = {key: index for index, key in enumerate(traced)}
    called = sorted(
        (p for p, layer in by_path.items() if id(layer) in order),
        key=lambda p: order[id(by_path[p])],
    )
    more = " ..." if len(called) > 30 else ""
    return ValueError(
        f"Invalid value for argument `layers`: layer {path!r} is never called by "
        f"`{type(owner).__name__}.call` (in one run of the model), so it has no output to "
        f"watch. Layers that are called: {called[:30]}{more}."
    )


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
    return next(lyr for p, lyr in iter_layers(model) if p == path)


def _call(model: keras.Model, tensors: Sequence[Any]) -> list[Any]:
    return _as_list(model(tensors[0] if len(tensors) == 1 else list(tensors)))


def _root_outputs(model: keras.Model, watched: Sequence[tuple[str, Any]]) -> list[Any]:
    """The outputs of `(path, layer)` pairs as tensors of `model`'s own graph, in order.

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
    for index, (path, _) in enumerate(watched):
        own.setdefault(path.rpartition("/")[0], []).append(index)
    needed: set[str] = set()
    for container_path in own:
        while container_path:
            needed.add(container_path)
            container_path = container_path.rpartition("/")[0]
    outputs: list[Any] = [None] * len(watched)
    for index in own.get("", []):
        outputs[index] = watched[index][1].output

    def tap(path: str, feed: list[Any]) -> None:
        container = _container(model, path)
        children = sorted(c for c in needed if c.rpartition("/")[0] == path)
        feeds = [_feeding_tensors(_container(model, c), c) for c in children]
        mine = own.get(path, [])
        wanted = [watched[i][1].output for i in mine] + [t for f in feeds for t in f]
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
    """One call returning every watched output, compiled once with a reduction.

    Where every watched layer sits in graph models (Functional, Sequential, nested ones
    included) this is one functional model of their outputs (the fast path). Layers inside a
    custom layer's or a subclassed model's `call` are captured while that call runs (see
    `_Capture`): in a graph model, the extractor also outputs each such custom layer, so that
    it runs; for a subclassed model, the model itself is called.

    Args:
        model: the model being watched.
        watched: the layers to read, from `resolve_layers`.
    """

    def __init__(self, model: keras.Model, watched: Sequence[WatchedLayer]) -> None:
        anchors = {path: anchor for path, _, anchor in _walk(model)}
        self.watched = list(watched)
        self._name = model.name
        self._graph = [i for i, w in enumerate(watched) if anchors.get(w.path) is None]
        self._captured = [i for i, w in enumerate(watched) if anchors.get(w.path) is not None]
        self._capture = _Capture([watched[i].layer for i in self._captured])
        if not _is_graph_model(model):
            self.model = model
            return
        tops = dict.fromkeys(str(anchors[watched[i].path]) for i in self._captured)
        by_path = dict(iter_layers(model))
        targets = [(watched[i].path, watched[i].layer) for i in self._graph]
        targets += [(top, by_path[top]) for top in tops]
        outputs = _root_outputs(model, targets)
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        self.model = keras.Model(inputs, outputs, name="actwatch_extractor")

    def _assemble(self, outputs: list[Any]) -> list[Any]:
        """The watched outputs in order: the graph's, then the captured ones in place."""
        result: list[Any] = [None] * len(self.watched)
        for k, index in enumerate(self._graph):
            result[index] = outputs[k]
        captured = self._capture.outputs
        for index in self._captured:
            layer = self.watched[index]
            if id(layer.layer) not in captured:
                raise ValueError(
                    f"Layer {layer.path!r} of model {self._name!r} was not called on this "
                    "batch, so it has no output to watch: its model's `call` skips it for "
                    "these inputs. Watch layers that every call runs."
                )
            result[index] = captured[id(layer.layer)]
        return result

    def make_runner(self, reduce: Callable[[list[Any]], T]) -> Callable[[Any], T]:
        """Return `run(inputs)`: `reduce(outputs)` compiled once, with numpy leaves.

        `reduce` takes the watched outputs in order and returns any nested structure of
        tensors (lists, dicts); `run` returns the same structure with numpy arrays, after one
        inference-mode forward pass compiled by the backend's compiler. A model whose `call`
        the compiler cannot trace (a tensor turned into a Python bool or number) is run
        eagerly instead, with one `ActwatchWarning`.
        """
        backend = keras.backend.backend()
        model = self.model
        capture = self._capture
        assemble = self._assemble

        def eager(x: Any) -> Any:
            capture.outputs.clear()
            with _inference():
                return reduce(assemble(_as_list(model(x, training=False))))

        compiled: Callable[[Any], Any] | None = None
        compiler = ""
        if backend == "jax":
            import jax

            def pure(trainable: Any, non_trainable: Any, x: Any) -> Any:
                capture.outputs.clear()
                outputs, _ = model.stateless_call(trainable, non_trainable, x, **flags)
                return reduce(assemble(_as_list(outputs)))

            # `stateless_call` passes keyword arguments to `call` as they are.
            flags = {"training": False} if _takes_training(model) else {}
            jitted = jax.jit(pure)
            compiler = "jax.jit"

            def compiled(x: Any) -> Any:
                return jitted(
                    [v.value for v in model.trainable_variables],
                    [v.value for v in model.non_trainable_variables],
                    x,
                )

        elif backend == "tensorflow":
            import tensorflow as tf

            def call(x: Any) -> Any:
                capture.outputs.clear()
                return reduce(assemble(_as_list(model(x, training=False))))

            compiled = tf.function(call, reduce_retracing=True)
            compiler = "tf.function"

        # torch (and numpy, future backends): the eager call under torch.no_grad().

        def run(x: Any) -> T:
            nonlocal compiled
            try:
                with capture.installed():
                    if compiled is None:
                        result = eager(x)
                    else:
                        try:
                            result = compiled(x)
                        except Exception as exc:  # retried eagerly below
                            result = eager(x)  # a real error raises here again
                            compiled = None
                            warnings.warn(
                                f"actwatch: {compiler} cannot trace the `call` of model "
                                f"{self._name!r} ({type(exc).__name__}: "
                                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                                "); its checks run eagerly instead, which is slower.",
                                ActwatchWarning,
                                stacklevel=2,
                            )
            finally:
                capture.outputs.clear()
            return keras.tree.map_structure(keras.ops.convert_to_numpy, result)  # type: ignore[no-any-return]

        return run


def resolve_drawn(model: keras.Model, watched: Sequence[WatchedLayer], spec: Any) -> list[str]:
    """The paths of the watched layers that `spec` (a `draw_layers` value other than "auto"
    and "all": names, paths, regular expressions, Layers) names, in network order.

    Raises ValueError when it names a layer that is not watched. Only names are matched
    (no call of the model), so captured layers cost nothing more here.
    """
    table = [(path, layer) for path, layer, _ in _walk(model)]
    by_path = dict(table)
    all_paths = [p for p, _ in table]
    named: list[str] = []
    for item in check_layer_specs(spec, argument="draw_layers") or ():
        named.extend(_match(item, table, by_path, all_paths))
    paths = [w.path for w in watched]
    missing = [p for p in dict.fromkeys(named) if p not in paths]
    if missing:
        raise ValueError(
            f"Invalid value for argument `draw_layers`: {missing} are not watched, so they "
            "cannot be drawn. Add them to `layers=`, or draw some of the watched layers: "
            f"{paths[:30]}{' ...' if len(paths) > 30 else ''}."
        )
    return [p for p in paths if p in named]
