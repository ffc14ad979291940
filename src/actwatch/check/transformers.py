"""Finding the parts of a transformer: attention layers, blocks (the residual stream), MLPs.

A transformer is a model with at least one *attention layer*: a `keras.layers.MultiHeadAttention`
(KerasHub's ViT, DINOv2 and BERT use it or a subclass), or a custom layer that holds a
`keras.layers.Softmax` itself (KerasHub's Gemma and Llama attention). Its default watched
layers are, beside the convolution, pooling and activation layers a CNN gets:

- every attention layer (`role="attention"`: its output, and the attention statistics of
  `actwatch.check.attention`);
- every block's output, the residual stream (`role="block"`): a custom layer holding exactly
  one attention layer and a Dense or EinsumDense layer beside it (ViTEncoderBlock,
  DINOV2Layer, TransformerEncoder, GemmaDecoderBlock, LlamaTransformerDecoder, a user's
  block); in a Functional graph without block layers, the last `Add` before the next
  attention layer (the last `Add` of the model for the last block);
- every MLP activation (`role="mlp"`): a Dense or EinsumDense layer with a non-linear
  activation, or an activation layer, inside a block (or anywhere in a Functional
  transformer); in a block with neither, a gated MLP whose activation is a function inside
  `call` (Gemma's `gelu(gate(x)) * up(x)`, Llama's SiLU): its hidden units, the input of its
  down projection (`hidden.watch_input`), watched at that Dense's path
  (`decoder_block_0/ffw_linear`): the last linear Dense or EinsumDense of the block outside
  its attention, preferring one named `down`, `out`, `linear` or `proj`.

KerasHub keeps some sublayers in private attributes (`TransformerEncoder._self_attention_layer`);
`full_walk` lists them too, with the leading underscores dropped from the path segment when
that path is free (`transformer_layer_0/self_attention_layer`).
"""

from __future__ import annotations

from typing import Any

import keras

from actwatch.check import kinds
from actwatch.check.hidden import watch_input
from actwatch.check.tree import is_graph_model, walk

__all__ = ["ROLES", "attention_layers", "full_walk", "is_attention", "roles"]

#: The roles a watched layer of a transformer can have.
ROLES = ("attention", "block", "mlp")

_DENSE = (keras.layers.Dense, keras.layers.EinsumDense)


def _native(layer: Any) -> bool:
    return type(layer).__module__.split(".")[0] == "keras"


def _own_layers(layer: Any) -> list[tuple[str, Any]]:
    """`(attribute, layer)` for the layers `layer` holds directly, private attributes too."""
    values: dict[str, Any] = dict(vars(layer))
    if keras.backend.backend() == "torch":
        values.update(layer.named_children())
    found = [(a, value) for a, value in values.items() if isinstance(value, keras.layers.Layer)]
    for attr, value in values.items():  # lists after named layers; Keras' own `_layers` never
        if isinstance(value, (list, tuple)) and attr not in _TRACKERS:
            found.extend(
                (f"{attr}/{i}", item)
                for i, item in enumerate(value)
                if isinstance(item, keras.layers.Layer)
            )
    return found


#: Keras' own lists of every sublayer (not a name a user gave).
_TRACKERS = frozenset({"_layers", "_tracker"})


def is_attention(layer: Any) -> bool:
    """A MultiHeadAttention (or subclass), or a custom layer holding a Softmax layer itself
    beside at least two projections (Dense or EinsumDense: queries and keys). A classifier or
    segmentation head that holds a Softmax and one Dense is no attention layer."""
    if isinstance(layer, keras.layers.MultiHeadAttention):
        return True
    if _native(layer) or is_graph_model(layer):
        return False
    children = [child for _, child in _own_layers(layer)]
    projections = sum(
        isinstance(child, (keras.layers.Dense, keras.layers.EinsumDense)) for child in children
    )
    return projections >= 2 and any(isinstance(c, keras.layers.Softmax) for c in children)


def full_walk(model: Any) -> list[tuple[str, Any, str | None]]:
    """`tree.walk(model)` plus the layers held in private attributes of custom layers (and
    below them), each once: `(path, layer, anchor)` as `walk` gives them.

    A private layer's path segment is its attribute without leading underscores, or with
    them when that path is taken; its anchor is its custom layer's (or the custom layer
    itself when that sits in a graph). Keras' own layers are not entered.
    """
    table = walk(model)
    seen = {id(model), *(id(layer) for _, layer, _ in table)}
    taken = {path for path, _, _ in table}
    extra: list[tuple[str, Any, str | None]] = []

    def visit(path: str, layer: Any, anchor: str | None) -> None:
        if _native(layer) or is_graph_model(layer):
            return
        inner = path if anchor is None else anchor
        for attr, child in _own_layers(layer):
            if not attr.startswith("_") or id(child) in seen:
                continue
            seen.add(id(child))
            name = f"{path}/{attr.lstrip('_')}"
            if name in taken:
                name = f"{path}/{attr}"
            taken.add(name)
            extra.append((name, child, inner))
            visit(name, child, inner)
            for sub_path, sub, _ in walk(child) if not _native(child) else ():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    taken.add(f"{name}/{sub_path}")
                    extra.append((f"{name}/{sub_path}", sub, inner))
                    visit(f"{name}/{sub_path}", sub, inner)

    for path, layer, anchor in list(table):
        visit(path, layer, anchor)
    return table + extra  # captured layers are ordered by their calls anyway


def attention_layers(table: list[tuple[str, Any, str | None]]) -> list[tuple[str, Any]]:
    """`(path, layer)` of every attention layer of a `full_walk` table, outermost first (a
    MultiHeadAttention inside a custom attention wrapper: the MultiHeadAttention)."""
    return [(path, layer) for path, layer, _ in table if is_attention(layer)]


def _within(path: str, ancestor: str) -> bool:
    return path.startswith(f"{ancestor}/")


def _activation_name(layer: Any) -> str:
    activation = getattr(layer, "activation", None)
    return str(getattr(activation, "__name__", "linear"))


def roles(table: list[tuple[str, Any, str | None]]) -> dict[str, str]:
    """`{path: role}` for the default transformer layers of a `full_walk` table (see the
    module docstring); empty when the model has no attention layer."""
    attention = [path for path, _ in attention_layers(table)]
    if not attention:
        return {}
    found: dict[str, str] = {path: "attention" for path in attention}
    dense = [p for p, layer, _ in table if isinstance(layer, _DENSE)]
    blocks: list[str] = []
    for path, layer, _ in table:
        if _native(layer) or is_graph_model(layer) or path in found:
            continue
        inside = [a for a in attention if _within(a, path)]
        if len(inside) != 1:
            continue
        beside = [d for d in dense if _within(d, path) and not _within(d, inside[0])]
        if beside:
            blocks.append(path)
    # A block inside a block (a wrapper around the real one): keep the outermost.
    blocks = [b for b in blocks if not any(_within(b, other) for other in blocks)]
    found.update({b: "block" for b in blocks})
    graph = [(p, layer) for p, layer, anchor in table if anchor is None]
    if not blocks:  # a Functional transformer: the residual additions
        order = [p for p, _ in graph]
        adds = [p for p, layer in graph if isinstance(layer, keras.layers.Add)]
        starts = [order.index(a) for a in attention if a in order]
        for i, start in enumerate(starts):
            end = starts[i + 1] if i + 1 < len(starts) else len(order)
            inside_adds = [a for a in adds if start < order.index(a) < end]
            if inside_adds:
                found[inside_adds[-1]] = "block"
    for path, layer, _ in table:
        if path in found:
            continue
        in_block = any(_within(path, b) for b in blocks) or not blocks
        if not in_block or any(_within(path, a) for a in attention):
            continue
        nonlinear = isinstance(layer, _DENSE) and _activation_name(layer) not in ("linear", "None")
        if nonlinear or isinstance(layer, kinds.ACTIVATIONS):
            found[path] = "mlp"
    by_path = {path: layer for path, layer, _ in table}
    for block in blocks:
        down = _down_projection(block, table, attention, found)
        if down is not None:
            watch_input(by_path[down])
            found[down] = "mlp"
    return found


#: Names of a gated MLP's down projection (Gemma `ffw_linear`, Llama `feedforward_output`).
_DOWN_NAMES = ("down", "out", "linear", "proj", "fc2", "wo")


def _down_projection(
    block: str,
    table: list[tuple[str, Any, str | None]],
    attention: list[str],
    found: dict[str, str],
) -> str | None:
    """The down projection of `block`'s gated MLP (module docstring), or None: when the block
    has an MLP activation layer already, or fewer than three Dense layers beside attention
    (gate, up, down) but for two whose first makes gate and up at once (`_fused_gate`)."""
    if any(_within(p, block) and role == "mlp" for p, role in found.items()):
        return None
    layers = {path: layer for path, layer, _ in table}
    dense = [
        path
        for path, layer, _ in table
        if isinstance(layer, _DENSE)
        and _within(path, block)
        and not any(_within(path, a) for a in attention)
    ]
    if len(dense) == 2 and _fused_gate(*(layers[p] for p in dense)):
        return dense[-1]
    if len(dense) < 3:
        return None
    named = [p for p in dense if any(n in p.rsplit("/", 1)[-1].lower() for n in _DOWN_NAMES)]
    return (named or dense)[-1]


def _fused_gate(first: Any, last: Any) -> bool:
    """Whether `first` projects to gate and up at once for `last` (DINOv2's SwiGLU FFN:
    `weights_in` to 2F, `silu(x1) * x2`, `weights_out` from F): twice as many outputs as
    `last` takes inputs."""
    try:
        outputs = int(first.kernel.shape[-1])
        inputs = int(last.kernel.shape[0])
    except (AttributeError, TypeError, ValueError, IndexError):
        return False
    return outputs == 2 * inputs
