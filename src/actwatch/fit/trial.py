"""The hyperparameters of one fit, for TensorBoard's HParams tab (`actwatch.events.hparams`)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping
from typing import Any

import keras

from actwatch._logging import logger
from actwatch.events import hparams
from actwatch.events.hparams import HParamValue

__all__ = ["fit_hparams", "run_head"]


def run_head(model: keras.Model, given: Mapping[str, HParamValue]) -> list[Any]:
    """The HParams summaries of the fit of `model` now starting (`fit_hparams`), for the
    head of the run's events files; none when reading them fails (logged: training goes on)."""
    try:
        return hparams.summary_values(fit_hparams(model, given))
    except Exception as exc:
        logger.warning("actwatch: no HParams data for this run (%s: %s).", type(exc).__name__, exc)
        return []


def fit_hparams(model: keras.Model, given: Mapping[str, HParamValue]) -> dict[str, HParamValue]:
    """What a fit ran with: the optimizer's class and initial learning rate (for a schedule,
    its class as `lr_schedule` and its rate at step 0), fit's `batch_size` (32 when fit got
    arrays without one; absent for a dataset: pass it in `hparams`) and `epochs`, the model's
    name and parameter count; then `given` (the user's, which win)."""
    out: dict[str, HParamValue] = {"model": str(model.name)}
    with contextlib.suppress(Exception):  # an unbuilt model counts nothing yet
        out["parameters"] = int(model.count_params())
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        out["optimizer"] = type(optimizer).__name__
        rate = getattr(optimizer, "_learning_rate", None)
        out["lr_schedule"] = "constant"
        if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
            out["lr_schedule"] = type(rate).__name__
            rate = rate(0)
        elif callable(rate):
            out["lr_schedule"] = getattr(rate, "__name__", type(rate).__name__)
            rate = rate()
        with contextlib.suppress(Exception):  # unreadable: the column stays empty for this run
            # float32 digits: 0.1, not 0.10000000149011612
            out["learning_rate"] = float(f"{float(keras.ops.convert_to_numpy(rate)):.7g}")
    out.update(_fit_arguments(model))
    out.update(given)
    return out


def _fit_arguments(model: keras.Model) -> dict[str, HParamValue]:
    """`batch_size` and `epochs` of the `fit` call running on `model`, read from the nearest
    frame of a function named `fit` whose `self` is the model; {} when there is none."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "fit" and frame.f_locals.get("self") is model:
            found, x = dict(frame.f_locals), frame.f_locals.get("x")
            if found.get("batch_size") is None and hasattr(x, "shape") and hasattr(x, "__len__"):
                found["batch_size"] = 32  # Keras' default for arrays
            return {
                name: int(found[name])
                for name in ("batch_size", "epochs")
                if isinstance(found.get(name), int) and not isinstance(found.get(name), bool)
            }
        frame = frame.f_back  # type: ignore[assignment]
    return {}
