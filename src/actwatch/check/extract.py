"""Building one extractor: every watched output in one forward pass, compiled once.

`Extractor` reads every watched output (from `layers.resolve_layers`) in a single forward
pass, compiled once, with whatever reductions the caller adds, by the backend's compiler:
`tf.function`, `jax.jit` over `stateless_call`, or a plain call under `torch.no_grad()`;
with labels, the same call also takes the loss's gradients with respect to those outputs
(`gradients.LossGradients`).
The forward pass is the network as training sees it (`capture.TrainingView`): each
BatchNormalization that `fit` runs in training mode normalises with the checked batch's own
statistics, nothing random runs, and nothing is written (moving statistics, seed generators).
Where every watched layer sits in graph models, the extractor is one functional model of their
outputs (the fast path), with each nested model tapped once in its own graph. Layers inside a
custom layer's or a subclassed model's `call` are captured while it runs (`capture.Capture`).
A model whose `call` the compiler cannot trace (a tensor turned into a Python bool or number)
is checked eagerly, with one `ActwatchWarning`.
"""

from __future__ import annotations

import contextlib
import functools
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import keras

from actwatch._warnings import ActwatchWarning
from actwatch.check.attention import AttentionHooks
from actwatch.check.capture import Capture, TrainingView, inference, takes_training
from actwatch.check.gradients import LossGradients
from actwatch.check.layers import WatchedLayer
from actwatch.check.taps import root_outputs
from actwatch.check.transformers import full_walk
from actwatch.check.tree import is_graph_model, iter_layers

__all__ = ["Extractor"]

T = TypeVar("T")


def _as_list(outputs: Any) -> list[Any]:
    """A functional model with one output returns it bare; make it a list."""
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


class Extractor:
    """One call returning every watched output, compiled once with a reduction.

    Where every watched layer sits in graph models (Functional, Sequential, nested ones
    included) this is one functional model of their outputs (the fast path). Layers inside a
    custom layer's or a subclassed model's `call` are captured while that call runs (see
    `Capture`): in a graph model, the extractor also outputs each such custom layer, so that
    it runs; for a subclassed model, the model itself is called.

    With `gradients`, the model itself is called, every watched output captured (and
    perturbed, `gradients.LossGradients`), so that the same call also gives the prediction
    the loss is differentiated from: `make_gradient_runner` then brings back the loss's
    gradients with the outputs. (A tap model of a nested model runs it a second time beside
    the prediction's path, so the taps cannot serve the gradients.)

    The forward pass is the training view (`TrainingView`): BatchNormalization on the
    statistics of the batch, over its `batch_rows` leading samples.

    Args:
        model: the model being watched.
        watched: the layers to read, from `resolve_layers`.
        gradients: also the loss's gradients with respect to the watched outputs; the
            model must have a compiled loss (`ValueError` otherwise). Defaults to False.
        batch_rows: how many leading samples of each call are the batch whose mean and
            variance the BatchNormalizations use (the statistics samples, before the
            probes); 0 means every sample. Defaults to 0.
        inference: the inference view instead (`model.predict`'s: moving statistics), for
            measurements only; its dead filters are not the training pass's. Defaults to
            False.
        attention: `(path, layer)` of the attention layers whose softmax is seen
            (`attention.AttentionHooks`): while `reduce` runs, `extras[path]` holds
            `attention.reduce_attention`'s tensors for each one that ran.
    """

    def __init__(
        self,
        model: keras.Model,
        watched: Sequence[WatchedLayer],
        *,
        gradients: bool = False,
        batch_rows: int = 0,
        inference: bool = False,
        attention: Sequence[tuple[str, Any]] = (),
    ) -> None:
        #: The attention layers' softmaxes, seen during each call (`attention.AttentionHooks`);
        #: their figures are in `extras` while `reduce` runs (inside the trace).
        self.hooks = AttentionHooks(attention, rows=batch_rows, model=model)
        self.extras: dict[str, Any] = {}
        anchors = {path: anchor for path, _, anchor in full_walk(model)}
        self.watched = list(watched)
        self._name = model.name
        self._view = (
            None if inference else TrainingView(model, rows=batch_rows, gradients=gradients)
        )
        self._gradients = LossGradients(model, watched) if gradients else None
        if self._gradients is not None:
            self._graph: list[int] = []
            self._captured = list(range(len(watched)))
            self._capture: Capture = self._gradients.perturb
            self.model = model
            return
        self._graph = [i for i, w in enumerate(watched) if anchors.get(w.path) is None]
        self._captured = [i for i, w in enumerate(watched) if anchors.get(w.path) is not None]
        self._capture = Capture([watched[i].layer for i in self._captured])
        if not is_graph_model(model):
            self.model = model
            return
        tops = dict.fromkeys(str(anchors[watched[i].path]) for i in self._captured)
        by_path = dict(iter_layers(model))
        targets = [(watched[i].path, watched[i].layer) for i in self._graph]
        targets += [(top, by_path[top]) for top in tops]
        outputs = root_outputs(model, targets)
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        self.model = keras.Model(inputs, outputs, name="actwatch_extractor")

    def _assemble(self, outputs: list[Any], captured: dict[int, Any]) -> list[Any]:
        """The watched outputs in order: the graph's, then the captured ones in place."""
        result: list[Any] = [None] * len(self.watched)
        for k, index in enumerate(self._graph):
            result[index] = outputs[k]
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
        forward pass (the training view) compiled by the backend's compiler. A model whose `call`
        the compiler cannot trace (a tensor turned into a Python bool or number) is run
        eagerly instead, with one `ActwatchWarning`.
        """
        return self._runner(lambda outputs, _: reduce(outputs), None)

    def make_gradient_runner(
        self, reduce: Callable[[list[Any], list[Any]], T]
    ) -> Callable[[Any, Any, Any], T]:
        """Return `run(inputs, y, sample_weight)`: `reduce(outputs, gradients)` compiled once,
        with numpy leaves (an extractor built with `gradients` only).

        As `make_runner`, and the same forward pass is differentiated: `gradients` are the
        compiled loss's gradients with respect to the watched outputs, in order, each of its
        layer's output shape cut to the labelled rows. `y` (and `sample_weight`, or None)
        label the leading samples of `inputs`; the loss is computed on those alone.
        """
        if self._gradients is None:
            raise ValueError("make_gradient_runner needs an Extractor built with gradients=True")
        return self._runner(reduce, self._gradients)

    def prepare(self, x: Any, y: Any, sample_weight: Any) -> None:
        """The gradients' eager work before the first compiled call (`LossGradients.prepare`):
        a `ValueError` when the labels do not fit the loss or a watched layer is not called.
        The first run does it anyway; call it to fail before training instead."""
        if self._gradients is not None:
            self._gradients.prepare(x, y, sample_weight)

    def _runner(
        self, reduce: Callable[[list[Any], Any], T], gradients: LossGradients | None
    ) -> Callable[..., T]:
        """`run(x, *labels)`: one forward pass (and with `gradients`, its backward pass),
        compiled by the backend's compiler, then `reduce(outputs, gradients or None)`."""
        backend = keras.backend.backend()
        model = self.model
        capture = self._capture
        assemble = self._assemble
        view = self._view
        hooks = self.hooks

        def extras(captured: dict[int, Any]) -> None:
            self.extras = hooks.unpack(captured)

        def forward(
            call: Callable[[Any], Any],
            x: Any,
            *labels: Any,
            state: Sequence[tuple[Any, Any]] | None = None,
        ) -> Any:
            capture.outputs.clear()
            hooks.begin(x)  # the batch's padding, read inside the trace
            if gradients is None:
                outputs = assemble(_as_list(call(x)), capture.outputs)
                extras(capture.outputs)
                return reduce(outputs, None)
            captured, grads = gradients.forward(call, x, *labels, state=state)
            extras(captured)
            return reduce(assemble([], captured), grads)

        def flags(training: bool) -> dict[str, bool]:
            """How `fit` passes `training` to the model: on JAX (`stateless_call`, which
            passes keyword arguments to `call` as they are) only to a `call` that takes it;
            elsewhere always (`Layer.__call__` hands it to the layers inside)."""
            if backend == "jax" and not takes_training(model):
                return {}
            return {"training": training}

        def eager(training: bool, *data: Any) -> Any:
            with inference():
                return forward(lambda x: model(x, **flags(training)), *data)

        def build(training: bool) -> Callable[..., Any] | None:
            """The compiled call, traced with `training`; None where there is no compiler
            (torch, numpy and future backends: the eager call under torch.no_grad(), the
            gradients' forward and backward pass under torch.enable_grad())."""
            if backend == "jax":
                import jax

                kwargs = flags(training)

                def pure(trainable: Any, non_trainable: Any, *data: Any) -> Any:
                    def stateless(x: Any) -> Any:
                        return model.stateless_call(trainable, non_trainable, x, **kwargs)[0]

                    state = list(zip(model.trainable_variables, trainable, strict=True))
                    return forward(stateless, *data, state=state)

                jitted = jax.jit(pure)

                def compiled(*data: Any) -> Any:
                    return jitted(
                        [v.value for v in model.trainable_variables],
                        [v.value for v in model.non_trainable_variables],
                        *data,
                    )

                return compiled
            if backend == "tensorflow":
                import tensorflow as tf

                def call(x: Any) -> Any:
                    return model(x, training=training)

                traced: Callable[..., Any] = tf.function(
                    functools.partial(forward, call), reduce_retracing=True
                )
                return traced
            return None

        compiler = {"jax": "jax.jit", "tensorflow": "tf.function"}.get(backend, "")
        compiled: dict[tuple[bool, ...], Callable[..., Any] | None] = {}  # by the view's key
        traceable = True

        def run(*data: Any) -> T:
            nonlocal traceable
            if gradients is not None:
                gradients.prepare(*data)
            key = () if view is None else view.key()
            training = view is not None and view.training
            if traceable and key not in compiled:
                compiled[key] = build(training)
            function = compiled[key] if traceable else None
            try:
                with (
                    contextlib.nullcontext() if view is None else view.installed(),
                    capture.installed(),
                    hooks.installed(capture.outputs),
                ):
                    if function is None:
                        result = eager(training, *data)
                    else:
                        try:
                            result = function(*data)
                        # What a trace raises on a tensor turned into a Python value:
                        # jax's Tracer*ConversionError / ConcretizationTypeError and
                        # tf.function's OperatorNotAllowedInGraphError are TypeErrors,
                        # np.asarray of a graph tensor a NotImplementedError. Anything else
                        # (out of memory, say) is a failed check, not a reason to go eager.
                        except (TypeError, NotImplementedError) as exc:
                            result = eager(training, *data)  # a real error raises here again
                            traceable = False
                            compiled.clear()
                            warnings.warn(
                                f"actwatch: {compiler} cannot trace the `call` of model "
                                f"{self._name!r} ({type(exc).__name__}: {_reason(exc)}); "
                                "its checks run eagerly instead, which is slower.",
                                ActwatchWarning,
                                stacklevel=2,
                            )
            finally:
                self.extras = {}
                capture.outputs.clear()
                if gradients is not None:
                    gradients.perturb.deltas.clear()
            return keras.tree.map_structure(keras.ops.convert_to_numpy, result)  # type: ignore[no-any-return]

        return run


def _reason(exc: BaseException) -> str:
    """The sentence of an error that says what went wrong, at most 200 characters.

    tf.function's errors start with "in user code:" and a traceback before `SomeError:
    message`; Keras wraps a layer's error as "Exception encountered when calling X.call()."
    with the message on the next line (in terminal bold) and the arguments after it.
    """
    text = _ANSI.sub("", str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = lines[0] if lines else ""
    if lines and lines[0].startswith("in user code"):
        said = [m.group(1) for line in lines if (m := _ERROR_LINE.match(line))]
        reason = said[-1] if said else reason
    if reason.startswith("Exception encountered when calling"):
        at = next(i for i, line in enumerate(lines) if line.endswith(reason))
        reason = lines[at + 1] if at + 1 < len(lines) else reason
    return reason if len(reason) <= 200 else reason[:199] + "…"


_ERROR_LINE = re.compile(r"^[\w.]*(?:Error|Exception)\w*: (.+)$")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
