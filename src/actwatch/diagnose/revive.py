"""ReDo: re-initialising dead filters without changing the network's output (opt-in).

ReDo (Sokar, Agarwal, Castro, Evci, "The Dormant Neuron Phenomenon in Deep Reinforcement
Learning", ICML 2023): a filter that is dead (or tau-dormant, for activations that can be
negative) at `patience` checks in a row gets its incoming weights re-initialised with its
layer's own initializer and its bias zeroed, and its outgoing weights (the input channels of
the next Conv/Dense layers that it feeds) set to zero, so the network computes the same
function at that instant and the filter can learn again. The optimizer's slots for the
changed weights (Adam's momentums and velocities, SGD's momentum) are zeroed at the same
entries, and a BatchNormalization between the two layers gets that channel's parameters and
moving statistics reset.

Supported: a Conv1D/2D/3D or Dense layer of a Functional or Sequential model whose output
reaches its consuming Conv1D/2D/3D or Dense layers through channel-preserving layers only
(activations, dropout, pooling, global pooling, zero padding, BatchNormalization on the
channel axis, and Flatten with its index mapping), as in the classic conv-pool-...-flatten-dense
CNN. `plan` raises a ValueError, before training, for any watched layer outside such a chain.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from actwatch.check import kinds
from actwatch.check.layers import WatchedLayer
from actwatch.check.tree import is_graph_model

__all__ = ["REVIVE_MODES", "Reviver", "check_revive", "plan"]

REVIVE_MODES = (None, "redo")

_PRODUCERS = (*kinds.PLAIN_CONVOLUTIONS, keras.layers.Dense)
#: Channel-preserving layers between a producer and its consumers.
_PASS_THROUGH = (
    *kinds.ACTIVATIONS,
    *kinds.NOISE,
    *kinds.POOLING,
    *kinds.GLOBAL_POOLING,
    *kinds.PADDING,
    keras.layers.Identity,
)

SUPPORTED = (
    "Conv1D/Conv2D/Conv3D or Dense layers of a Functional or Sequential model whose outputs "
    "reach their consuming Conv/Dense layers only through activations, dropout, pooling, "
    "zero padding, BatchNormalization and Flatten"
)


def check_revive(revive: Any) -> str | None:
    if revive not in REVIVE_MODES:
        raise ValueError(
            "Invalid value for argument `revive`. Expected None (no revival) or 'redo' (ReDo: "
            f"re-initialise filters that stay dead). Received: revive={revive!r}"
        )
    return revive  # type: ignore[no-any-return]


def _is_plain(layer: Any) -> bool:
    return (
        isinstance(layer, _PRODUCERS)
        and not isinstance(layer, kinds.OTHER_CONVOLUTIONS)
        and int(getattr(layer, "groups", 1) or 1) == 1
        and getattr(layer, "kernel", None) is not None
    )


def _tensor(layer: Any, attribute: str) -> Any:
    try:
        return getattr(layer, attribute)
    except (AttributeError, ValueError, RuntimeError):  # not called, or called twice
        return None


def _flat(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


@dataclass
class Consumer:
    """A Conv/Dense layer fed by a producer: `index[c]` are its kernel's input rows
    (second-to-last axis) that carry the producer's channel `c`."""

    layer: Any
    index: list[np.ndarray]


@dataclass
class Target:
    """One revivable layer: the watched layer whose dead filters decide, its consumers, and
    the BatchNormalization layers between them."""

    path: str
    layer: Any
    source: str
    consumers: list[Consumer]
    norms: list[Any] = field(default_factory=list)


def _channel_ids(shape: Sequence[int], channels_first: bool) -> np.ndarray:
    """An array of `shape` (no batch axis) holding each element's channel."""
    axis = 0 if channels_first else len(shape) - 1
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return np.broadcast_to(np.arange(shape[axis]).reshape(view), tuple(shape))


def plan(model: keras.Model, watched: Sequence[WatchedLayer]) -> list[Target]:
    """The revivable layers behind `watched`; a ValueError for any watched layer outside
    a supported chain (see the module docstring), saying what was found and how to fix it."""
    if not is_graph_model(model):
        raise ValueError(
            "Invalid value for argument `revive`: revive='redo' needs a Functional or "
            f"Sequential model, to know which layers consume each filter; model {model.name!r} "
            f"is a {type(model).__name__}. Supported: {SUPPORTED}. Pass revive=None."
        )
    layers = list(model.layers)
    consumers: dict[int, list[Any]] = {}
    shared = []
    for layer in layers:
        inputs = _tensor(layer, "input")
        if inputs is None and not isinstance(layer, keras.layers.InputLayer):
            shared.append(layer.name)  # called more than once: its inputs are not one tensor
        for t in _flat(inputs):
            if t is not None:
                consumers.setdefault(id(t), []).append(layer)
    if shared:
        raise ValueError(
            "Invalid value for argument `revive`: revive='redo' needs each layer of the graph "
            f"called once, to know which layers consume each filter; {shared} are called more "
            f"than once (shared layers). Supported: {SUPPORTED}. Pass revive=None."
        )
    outputs = {id(t) for t in model.outputs}
    watched_by_layer = {id(w.layer): w for w in watched}
    targets: list[Target] = []
    covered: set[str] = set()
    problems: dict[str, str] = {}
    unreached: list[str] = []  # problems of chains that reached no watched layer
    for producer in layers:
        if not _is_plain(producer):
            continue
        out = _tensor(producer, "output")
        if out is None:
            continue
        channels_first = getattr(producer, "data_format", None) == "channels_first"
        chain: list[Any] = [producer]
        flattened: set[int] = set()  # chain layers after a Flatten: positions and channels mixed
        found: list[Consumer] = []
        norms: list[Any] = []
        problem = None
        # (tensor, per-channel index arrays of its flattened non-batch positions or None)
        stack: list[tuple[Any, Any]] = [(out, None)]
        seen: set[int] = set()
        while stack and problem is None:
            tensor, ids = stack.pop()
            if id(tensor) in seen:
                continue
            seen.add(id(tensor))
            if id(tensor) in outputs:
                problem = "its output is (or reaches unchanged) an output of the model"
                break
            for nxt in consumers.get(id(tensor), []):
                if (
                    isinstance(nxt, keras.layers.Dense)
                    and ids is None
                    and channels_first
                    and len(tensor.shape) > 2
                ):
                    problem = f"Dense '{nxt.name}' takes its channels_first output on the last axis"
                    break
                if _is_plain(nxt) and ids is None:
                    c = int(out.shape[1 if channels_first and len(out.shape) > 2 else -1])
                    found.append(Consumer(nxt, [np.array([i]) for i in range(c)]))
                elif isinstance(nxt, keras.layers.Dense) and _is_plain(nxt):
                    found.append(Consumer(nxt, ids))
                elif isinstance(nxt, keras.layers.Flatten) and ids is None:
                    shape = [int(d) for d in nxt.input.shape[1:]]
                    grid = _channel_ids(shape, channels_first)
                    if getattr(nxt, "data_format", "channels_last") == "channels_first" and (
                        len(shape) > 1
                    ):
                        grid = np.moveaxis(grid, 0, -1)
                    flat = grid.reshape(-1)
                    c = int(flat.max()) + 1
                    chain.append(nxt)
                    flattened.add(id(nxt))
                    stack.append((nxt.output, [np.flatnonzero(flat == k) for k in range(c)]))
                elif isinstance(nxt, _PASS_THROUGH) or (
                    isinstance(nxt, keras.layers.BatchNormalization) and ids is None
                ):
                    if isinstance(nxt, keras.layers.BatchNormalization):
                        rank = len(tensor.shape)
                        channel = 1 if channels_first and rank > 2 else rank - 1
                        if int(nxt.axis) % rank != channel:
                            problem = (
                                f"BatchNormalization '{nxt.name}' normalizes axis {nxt.axis}, "
                                f"not the channel axis {channel}"
                            )
                            break
                        norms.append(nxt)
                    chain.append(nxt)
                    if ids is not None:
                        flattened.add(id(nxt))
                    if ids is not None and not isinstance(
                        nxt, (keras.layers.Activation, keras.layers.ReLU, keras.layers.Dropout)
                    ):
                        problem = f"it reaches {type(nxt).__name__} '{nxt.name}' after a Flatten"
                        break
                    stack.append((nxt.output, ids))
                else:
                    problem = f"its output reaches {type(nxt).__name__} '{nxt.name}'"
                    break
        watched_here = [watched_by_layer[id(lyr)] for lyr in chain if id(lyr) in watched_by_layer]
        if not watched_here:
            if problem is not None and (len(chain) > 1 or id(out) not in outputs):
                # Its watched successors were not reached: say why, for them.
                unreached.append(f"layer '{producer.name}': {problem}")
            continue
        # The dead filters are read where the producer's channels are still channels.
        sources = [w for w in watched_here if id(w.layer) not in flattened]
        if problem is None and found and not sources:
            problem = (
                "it is watched only after a Flatten, where its filters are mixed with "
                "positions; watch a layer before the Flatten"
            )
        if problem is not None or not found:
            problem = problem or "no Conv/Dense layer consumes its output"
            for w in watched_here:
                problems[w.path] = f"layer '{producer.name}' ({type(producer).__name__}): {problem}"
            continue
        targets.append(Target(producer.name, producer, sources[0].path, found, norms))
        covered.update(w.path for w in watched_here)
    for w in watched:
        if w.path not in covered and w.path not in problems:
            problems[w.path] = (
                "no Conv/Dense layer of the model's top-level graph produces its filters "
                "through channel-preserving layers"
                + (f" ({', '.join(unreached)})" if unreached else "")
            )
    if problems:
        listed = "; ".join(f"'{p}': {why}" for p, why in problems.items())
        raise ValueError(
            f"Invalid value for argument `revive`: revive='redo' cannot revive the filters of "
            f"watched layer(s) {list(problems)} ({listed}). Supported: {SUPPORTED}. Watch only "
            "such layers with `layers=[...]`, or pass revive=None."
        )
    return targets


def _slots(optimizer: Any, variable: Any) -> list[Any]:
    """The optimizer's per-weight slots for `variable` (momentums, velocities, ...), found by
    the name Keras gives them (`{variable.path with _}_{slot}`) and their shape."""
    if optimizer is None:
        return []
    prefix = variable.path.replace("/", "_") + "_"
    return [
        v
        for v in getattr(optimizer, "variables", [])
        if str(v.name).startswith(prefix) and tuple(v.shape) == tuple(variable.shape)
    ]


def _assign(variable: Any, optimizer: Any, edit: Any, value: Any = 0.0) -> None:
    """Set `variable[edit]` to `value` (an array or a number) and its optimizer slots'
    entries there to zero; the moving average of the weights (`use_ema=True`, slot
    `{path}_average`) gets the new weights there instead."""
    array = np.array(keras.ops.convert_to_numpy(variable.value))
    array[edit] = value if np.isscalar(value) else value[edit]
    variable.assign(array)
    for slot in _slots(optimizer, variable):
        values = np.array(keras.ops.convert_to_numpy(slot.value))
        values[edit] = array[edit] if str(slot.name).endswith("_average") else 0
        slot.assign(values)


class Reviver:
    """Streaks of dead filters per target; re-initialises those dead `patience` checks in a row.

    Args:
        model: the model (its optimizer's slots are reset too, when it has one).
        targets: from `plan`.
        patience: checks in a row a filter must be dead before it is revived.
        seed: seeds the fresh initializers (a Keras initializer called twice with its own
            seed returns the same values: those a never-trained dead filter already has).
    """

    def __init__(
        self, model: keras.Model, targets: Sequence[Target], *, patience: int, seed: int = 0
    ) -> None:
        self.model = model
        self.targets = list(targets)
        self.patience = patience
        self._streak: dict[str, np.ndarray] = {}
        self.total = 0
        self._seeds = np.random.default_rng(seed)

    def source(self, path: str) -> str:
        """The watched layer whose dead filters decide for the revivable layer `path`."""
        return next(t.source for t in self.targets if t.path == path)

    def update(self, dead: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        """Take each source's dead (or dormant) mask; revive; return `{layer path: filters}`."""
        revived: dict[str, tuple[int, ...]] = {}
        for target in self.targets:
            mask = dead.get(target.source)
            if mask is None:
                continue
            streak = self._streak.get(target.path)
            if streak is None or streak.shape != mask.shape:
                streak = np.zeros(mask.shape, dtype=np.int64)
            streak = np.where(mask, streak + 1, 0)
            due = np.flatnonzero(streak >= self.patience)
            if due.size:
                self.revive(target, due)
                streak[due] = 0
                revived[target.path] = tuple(int(i) for i in due)
                self.total += int(due.size)
            self._streak[target.path] = streak
        return revived

    def revive(self, target: Target, filters: np.ndarray) -> None:
        """ReDo on `filters` of `target`: fresh incoming weights, zero bias and outgoing
        weights, reset BatchNormalization channels, zeroed optimizer slots."""
        optimizer = getattr(self.model, "optimizer", None)
        layer = target.layer
        kernel = layer.kernel
        initializer = layer.kernel_initializer
        config = initializer.get_config()
        if "seed" in config:  # the same kind of initializer, with a new seed
            config["seed"] = int(self._seeds.integers(2**31 - 1))
            initializer = type(initializer).from_config(config)
        fresh = np.asarray(
            keras.ops.convert_to_numpy(initializer(tuple(kernel.shape), dtype=kernel.dtype))
        )
        _assign(kernel, optimizer, (..., filters), fresh)
        if getattr(layer, "bias", None) is not None:
            _assign(layer.bias, optimizer, filters)
        for norm in target.norms:
            for name, value in (
                ("gamma", 1.0),
                ("beta", 0.0),
                ("moving_mean", 0.0),
                ("moving_variance", 1.0),
            ):
                variable = getattr(norm, name, None)
                if variable is not None:
                    _assign(variable, optimizer, filters, value)
        for consumer in target.consumers:
            rows = np.concatenate([consumer.index[int(c)] for c in filters])
            _assign(consumer.layer.kernel, optimizer, (..., rows, slice(None)))
