"""Constructor argument checks with Keras' messages: "Invalid value for argument `x`..."."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

__all__ = ["flag", "fraction", "positive_int"]


def positive_int(name: str, value: Any, allow_none: bool = True) -> int | None:
    """`value` as an int >= 1 (or None when `allow_none`); an error that says so otherwise."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a positive integer"
            f"{' or None' if allow_none else ''}. Received: {name}={value!r}"
        )
    return int(value)


def fraction(name: str, value: Any, *, low_open: bool, optional: bool = False) -> float:
    """`value` as a float in (0, 1] (`low_open`) or [0, 1]; an error that says so otherwise."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = (0.0 < v <= 1.0) if low_open else (0.0 <= v <= 1.0)
    if not ok:
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a number in {interval}"
            f"{' or None' if optional else ''}. Received: {name}={value!r}"
        )
    return float(value)


def flag(name: str, value: Any) -> bool:
    """`value` as a bool (Python's or numpy's); a TypeError otherwise."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"Invalid value for argument `{name}`. Expected True or False. "
            f"Received: {name}={value!r}"
        )
    return bool(value)
