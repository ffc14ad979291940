"""Choosing the watched layers: paths through the layer tree, defaults, names and patterns.

Layers are addressed by *path*, one segment per step down the layer tree:

- inside a Functional or Sequential model, a layer is named by its `name`
  (`backbone/conv1`, as `model.get_layer` would, nested models included);
- inside a subclassed model or a custom layer (anything without a graph of layer outputs),
  a sublayer is named by the attribute that holds it, with the index or key for layers held
  in a list or dict: `block/res_conv_a`, `blocks/0/conv`. Attributes starting with `_` are
  skipped, Keras' own layers are not entered (a `TimeDistributed` is watched whole), and a
  layer reachable twice is listed once, at its first path.

`resolve_layers` turns what the user passed into `WatchedLayer`s. Layers inside a custom
layer's or a subclassed model's `call` have no tensor in any graph: which of them `call` runs,
and their output shapes, come from one eager call of the model on the probes (`capture.trace`).
A layer called more than once in one forward pass is watched at its first call. Naming a layer
that `call` never runs is an error listing the layers it does run.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import keras

from actwatch.check import kinds
from actwatch.check.capture import trace
from actwatch.check.transformers import full_walk, roles
from actwatch.check.tree import walk

__all__ = [
    "LayerSpec",
    "WatchedLayer",
    "check_layer_specs",
    "resolve_drawn",
    "resolve_layers",
    "weight_sources",
]

LayerSpec: TypeAlias = "str | re.Pattern[str] | keras.layers.Layer"

#: The layers watched by default: convolutions, pooling and activations.
_DEFAULT_TYPES = (*kinds.CONVOLUTIONS, *kinds.POOLING, *kinds.ACTIVATIONS)


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
    #: In a transformer: "attention", "block" (the residual stream) or "mlp"; else "".
    role: str = ""


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
    path: str, layer: Any, inherited: str | None = None, output: Any = None, role: str = ""
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
    axis = -1 if role else _channel_axis(layer, rank, inherited)
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
        pooling=isinstance(layer, kinds.POOLING),
        role=role,
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
    table = full_walk(model)
    paths = [p for p, _, _ in table]
    by_path = {p: layer for p, layer, _ in table}
    anchors = {p: anchor for p, _, anchor in table}
    parts = roles(table)  # a transformer's attention layers, blocks and MLPs
    if layers is None:  # private sublayers (not in `walk`) only as a transformer's parts
        skipped = _linear_before_activation([(p, by_path[p]) for p in paths if anchors[p] is None])
        kept = [p for p, layer, _ in walk(model) if isinstance(layer, _DEFAULT_TYPES)]
        plain = {p for p in kept if not isinstance(by_path[p], keras.Model) and p not in skipped}
        candidates = [p for p in paths if p in plain or p in parts]
    else:
        pairs = [(p, by_path[p]) for p in paths]
        candidates = []
        for spec in check_layer_specs(layers) or ():
            candidates.extend(_match(spec, pairs, by_path, paths))
    traced: dict[int, Any] = {}
    if any(anchors[p] is not None for p in candidates):
        traced = trace(model, [by_path[p] for p in paths if anchors[p] is not None], sample)
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
                f"Model {model.name!r} has no convolution, pooling, activation or attention "
                "layer to watch by default. Pass `layers=[...]` with the names of the layers "
                f"to watch (available: {paths[:20]})."
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

    return [
        _watchable(p, by_path[p], formats[p], outputs[p], parts.get(p, ""))
        for p in sorted(outputs, key=order)
    ]


def _tensor(layer: Any, attribute: str) -> Any:
    try:
        return getattr(layer, attribute)
    except (AttributeError, ValueError, RuntimeError):  # not called, or called twice
        return None


def _linear_feeders(table: Sequence[tuple[str, Any]]) -> dict[int, list[tuple[str, Any]]]:
    """Per activation layer of a graph (by `id`), the linear convolutions (no activation of
    their own) whose output goes into it, directly or through normalization layers and
    additions: conv -> BN -> ReLU, and a residual block's last and shortcut convs -> BN ->
    Add -> ReLU. Only public tensors are compared (`layer.output` of one layer is
    `layer.input` of the next)."""
    producers = {}
    order = {path: i for i, (path, _) in enumerate(table)}  # network order
    for path, layer in table:
        output = _tensor(layer, "output")
        if output is not None:
            producers[id(output)] = (path, layer)
    feeders: dict[int, list[tuple[str, Any]]] = {}
    for _, layer in table:
        if not isinstance(layer, kinds.ACTIVATIONS):
            continue
        found: list[tuple[str, Any]] = []
        stack, seen = [_tensor(layer, "input")], set()
        while stack:  # back through normalizations and additions
            t = stack.pop()
            if t is None or id(t) in seen or id(t) not in producers:
                continue
            seen.add(id(t))
            path, producer = producers[id(t)]
            if isinstance(producer, (*kinds.NORMALIZATION, keras.layers.Add)):
                inputs = _tensor(producer, "input")
                stack.extend(inputs if isinstance(inputs, (list, tuple)) else [inputs])
            elif (
                isinstance(producer, _DEFAULT_TYPES)
                and not isinstance(producer, (*kinds.POOLING, *kinds.ACTIVATIONS))
                and getattr(getattr(producer, "activation", None), "__name__", None) == "linear"
            ):
                found.append((path, producer))
        if found:
            feeders[id(layer)] = sorted(found, key=lambda item: order[item[0]])
    return feeders


def _linear_before_activation(table: Sequence[tuple[str, Any]]) -> set[str]:
    """Paths of linear convolutions whose output goes into an activation (`_linear_feeders`).

    The default selection leaves them out: the activation after them carries the signal, and
    watching both doubles the cost of a check on a ResNet-style network for figures that say
    little ("dead" means nothing on a linear output). A linear convolution whose output
    reaches no activation (a linear bottleneck: MobileNetV2's and EfficientNet's projections
    go into an addition and on to the next block's convolution) stays watched; one that feeds
    an activation and something else is left out too. Named explicitly, any is watched.
    """
    return {path for found in _linear_feeders(table).values() for path, _ in found}


def weight_sources(model: keras.Model, watched: Sequence[WatchedLayer]) -> dict[str, list[Any]]:
    """Per watched activation, the linear convolutions that make its filters and are not
    watched themselves (`_linear_feeders`: conv -> BN -> ReLU, residual convs -> BN -> Add
    -> ReLU): the weights its update-to-weight ratio is measured on."""
    table = [(path, layer) for path, layer, anchor in walk(model) if anchor is None]
    feeders = _linear_feeders(table)
    own = {id(w.layer) for w in watched}
    sources = {}
    for w in watched:
        found = [layer for _, layer in feeders.get(id(w.layer), []) if id(layer) not in own]
        if found:
            sources[w.path] = found
    return sources


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


def resolve_drawn(model: keras.Model, watched: Sequence[WatchedLayer], spec: Any) -> list[str]:
    """The paths of the watched layers that `spec` (a `draw_layers` value other than "auto"
    and "all": names, paths, regular expressions, Layers) names, in network order.

    Raises ValueError when it names a layer that is not watched. Only names are matched
    (no call of the model), so captured layers cost nothing more here.
    """
    table = [(path, layer) for path, layer, _ in full_walk(model)]
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
