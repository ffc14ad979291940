"""Power iteration for a top eigenvalue: one step on a symmetric operator given as a product.

Backend ops (`keras.ops`), run inside the caller's compiled call; the vectors are lists of
tensors (one per weight variable), taken as one long vector.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from keras import ops

__all__ = ["power_step"]


# A vector's norm below this is zero: the Hessian maps the vector to nothing.
_TINY = 1e-30


def _dot(a: Sequence[Any], b: Sequence[Any]) -> Any:
    return sum((ops.sum(p * q) for p, q in zip(a, b, strict=True)), ops.zeros((), "float32"))


def _unit(u: Sequence[Any]) -> list[Any]:
    norm = ops.maximum(ops.sqrt(_dot(u, u)), _TINY)
    return [a / norm for a in u]


def power_step(
    hvp: Callable[[list[Any]], list[Any]],
    vector: Sequence[Any],
    scale: Sequence[Any],
    dtypes: Sequence[str],
) -> tuple[Any, Any, list[Any]]:
    """One step of power iteration on `u -> S H S u` (`S` = diag(`scale`)) from `vector`:
    `(Rayleigh quotient, residual |S H S u - value u|, next unit vector)`, with `u` the unit
    vector along `vector`. Backend ops, inside the compiled call."""
    u = _unit(vector)
    tangent = [ops.cast(s * a, d) for s, a, d in zip(scale, u, dtypes, strict=True)]
    hu = [s * ops.cast(h, "float32") for s, h in zip(scale, hvp(tangent), strict=True)]
    value = _dot(u, hu)
    r = [h - value * a for h, a in zip(hu, u, strict=True)]
    return value, ops.sqrt(_dot(r, r)), _unit(hu)
