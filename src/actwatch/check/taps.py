"""Taps: the outputs of layers inside nested graph models as tensors of the root model's graph.

Moved out of `extract` (which builds the extractor from them): see `root_outputs`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import keras

from actwatch.check.tree import iter_layers

__all__ = ["root_outputs"]


# Keras internals. Keras has no public API for the two things below; these two functions
# are the only place actwatch touches private Keras attributes (`_inbound_nodes`,
# `_keras_history`, `_outbound_nodes`).


def _feeding_tensors(container: Any, path: str) -> list[Any]:
    """The tensors of the enclosing graph that feed the nested model `container`, read from
    the nested model's first inbound node."""
    nodes = getattr(container, "_inbound_nodes", None)
    if not nodes:
        raise ValueError(
            f"Invalid value for argument `layers`: the nested model {path!r} is not "
            "called in the model's graph, so its layers cannot be watched."
        )
    return list(nodes[0].input_tensors)


@contextlib.contextmanager
def _graph_left_as_is(tensors: Sequence[Any]) -> Iterator[None]:
    """Undo what calling a tap model on `tensors` records in the user's graph.

    Calling a model on symbolic tensors makes Keras append a node to the `_outbound_nodes` of
    the layers that produced them. Left there, each extractor built (every `fit`, every
    notebook call) would add one to the user's model for good: memory that grows, and a model
    that is not as it was. The nodes appended inside the block are removed on exit; the
    extractor keeps its own references to them.
    """
    lists = []
    for tensor in tensors:
        producer = getattr(getattr(tensor, "_keras_history", None), "operation", None)
        nodes = getattr(producer, "_outbound_nodes", None)
        if isinstance(nodes, list):
            lists.append((nodes, len(nodes)))
    try:
        yield
    finally:
        for nodes, length in lists:
            del nodes[length:]


def _container(model: keras.Model, path: str) -> Any:
    return next(lyr for p, lyr in iter_layers(model) if p == path)


def _call(model: keras.Model, tensors: Sequence[Any]) -> list[Any]:
    return _as_list(model(tensors[0] if len(tensors) == 1 else list(tensors)))


def root_outputs(model: keras.Model, watched: Sequence[tuple[str, Any]]) -> list[Any]:
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
        with _graph_left_as_is(feed):
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
