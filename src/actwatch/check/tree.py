"""Walking a model's layer tree: the path of every sublayer, through graphs and custom calls.

A graph model (Functional, Sequential) names its layers by their `name`; any other layer (a
subclassed model, a custom layer) by the attribute that holds them, with the index or key for
layers held in a list or dict (`blocks/0`). See `layers` for how paths are used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import keras

__all__ = ["descendants", "is_graph_model", "iter_layers", "walk"]


def _children(layer: Any) -> Iterator[tuple[str, Any]]:
    """`(name, child)` for the direct sublayers of `layer`, named as the module docstring
    says. Private attributes are skipped, and Keras' own layers (`TimeDistributed`,
    `Bidirectional`, ...) are leaves: what they wrap is not a layer of the model's forward
    pass of its own.
    """
    if is_graph_model(layer):
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


def walk(model: Any) -> list[tuple[str, Any, str | None]]:
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
        if inner is None and not is_graph_model(layer):
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
    for path, layer, _ in walk(model):
        yield f"{prefix}{path}", layer


def _held(value: Any) -> Iterator[Any]:
    """The layers an attribute value holds: itself, or the items of a list, tuple or dict."""
    if isinstance(value, keras.layers.Layer):
        yield value
    elif isinstance(value, (list, tuple)):
        yield from (item for item in value if isinstance(item, keras.layers.Layer))
    elif isinstance(value, dict):
        yield from (item for item in value.values() if isinstance(item, keras.layers.Layer))


def descendants(layer: Any) -> list[Any]:
    """Every layer that `layer` holds, at any depth, each once, `layer` itself left out.

    Unlike `walk`, which names the layers a user can watch, this finds every layer a call of
    `layer` may run: through graphs, attributes private as well as public, and Keras' own
    layers (`TimeDistributed`'s layer, an RNN's cell, the dropout inside attention).
    """
    seen = {id(layer)}
    found: list[Any] = []
    stack = [layer]
    while stack:
        current = stack.pop()
        values = list(vars(current).values())
        if is_graph_model(current):
            values.append(current.layers)
        if keras.backend.backend() == "torch":  # torch keeps sub-modules out of `__dict__`
            values.append(dict(current.named_children()))
        for value in values:
            for child in _held(value):
                if id(child) not in seen:
                    seen.add(id(child))
                    found.append(child)
                    stack.append(child)
    return found


def is_graph_model(model: Any) -> bool:
    """Functional and Sequential models have a graph of layer outputs; subclassed ones don't.

    Keras has no public predicate for "Functional", so we look for its node table.
    """
    return isinstance(model, keras.Sequential) or (
        isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth")
    )
