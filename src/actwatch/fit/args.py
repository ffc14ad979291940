"""The monitor's arguments checked before training, with Keras' messages ("Invalid value for
argument `x`. Expected ... Received: x=...")."""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from actwatch.check.layers import check_layer_specs
from actwatch.check.probes import ProbeSource, check_preprocess, read_probe_source
from actwatch.check.signals import check_outlier_ratio
from actwatch.check.text_probes import check_strings, read_text_probes, vocabulary_of
from actwatch.diagnose.alerts import Alert
from actwatch.diagnose.revive import check_revive
from actwatch.events.hparams import HParamValue, check_hparams
from actwatch.events.log_dir import check_log_dir
from actwatch.events.storage import DEFAULT_UPLOAD_INTERVAL

__all__ = [
    "ARGUMENTS",
    "Settings",
    "bounds",
    "flag",
    "fraction",
    "given",
    "labels",
    "positive_int",
    "revised",
    "settings",
]


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


@dataclass(frozen=True)
class Settings:
    """`ActivationMonitor`'s arguments, validated (see its docstring for each one)."""

    probe_source: ProbeSource
    stats_source: ProbeSource | None
    stats_labels: tuple[Any, Any] | None  # (y, sample_weight) of stats_data=(x, y[, w])
    log_dir: str
    layers: Any
    every_n_epochs: int | None
    every_n_batches: int | None
    on_alert: Callable[[Alert], Any] | None
    stop_on_dead_fraction: float | None
    dead_alert_fraction: float
    patience: int
    max_filters: int
    dormant_threshold: float
    preprocess: Callable[[np.ndarray], Any] | None
    images: bool
    draw_layers: Any
    log_per_layer: bool
    histograms: bool
    feature_rank: bool
    topk: int
    outlier_ratio: float | None
    update_ratio_bounds: tuple[float, float] | None
    revive: str | None
    sharpness: bool
    #: The arguments as given (by `settings`' keyword), to check again with one replaced.
    arguments: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    #: `id_to_token` of a tokenizer given as `preprocess`: the labels of text pictures.
    vocabulary: Callable[[int], str] | None = None
    #: The user's `hparams={...}` for TensorBoard's HParams tab, checked.
    hparams: Mapping[str, HParamValue] = field(default_factory=dict)
    #: fsspec's arguments for a `log_dir` on object storage, and seconds between uploads.
    storage_options: Mapping[str, Any] | None = None
    upload_interval: float = DEFAULT_UPLOAD_INTERVAL

    @property
    def storage(self) -> dict[str, Any]:
        """The `Sink` arguments of a `log_dir` on object storage."""
        return {"storage_options": self.storage_options, "upload_interval": self.upload_interval}


def settings(
    *,
    probes: Any,
    log_dir: Any,
    layers: Any,
    every_n_epochs: Any,
    every_n_batches: Any,
    stats_data: Any,
    on_alert: Any,
    stop_on_dead_fraction: Any,
    dead_alert_fraction: Any,
    patience: Any,
    max_filters: Any,
    dormant_threshold: Any,
    preprocess: Any,
    images: Any,
    draw_layers: Any,
    log_per_layer: Any,
    histograms: Any,
    feature_rank: Any,
    topk: Any,
    outlier_ratio: Any,
    update_ratio_bounds: Any,
    revive: Any,
    sharpness: Any = False,
    hparams: Any = None,
    storage_options: Any = None,
    upload_interval: Any = DEFAULT_UPLOAD_INTERVAL,
) -> Settings:
    """Every argument checked, in the constructor, before training: a ValueError or TypeError
    that names the argument, what it received and what it expects."""
    arguments = dict(locals())  # the parameters alone, as given
    vocabulary = vocabulary_of(preprocess)  # a tokenizer: text probes, labelled tokens
    probe_source = sources(probes, preprocess, "probes")
    stats_labels: tuple[Any, Any] | None = None
    if isinstance(stats_data, tuple) and len(stats_data) in (2, 3):  # (x, y[, weight])
        stats_data, *labels = stats_data
        stats_labels = (labels[0], labels[1] if len(labels) > 1 else None)
    stats_source = None if stats_data is None else sources(stats_data, preprocess, "stats_data")
    batches = positive_int("every_n_batches", every_n_batches)
    if batches is not None and every_n_epochs is not None:
        raise ValueError(
            "Invalid value for arguments `every_n_epochs` and `every_n_batches`: give one "
            "of them, not both. Received: every_n_epochs="
            f"{every_n_epochs!r}, every_n_batches={every_n_batches!r}"
        )
    epochs = positive_int("every_n_epochs", every_n_epochs)
    if on_alert is not None and not callable(on_alert):
        raise TypeError(
            "Invalid value for argument `on_alert`. Expected a callable taking an "
            f"actwatch.Alert. Received: on_alert={on_alert!r}"
        )
    if vocabulary is None:  # a tokenizer ran on the strings above; else images only
        check_preprocess(preprocess, [probe_source, stats_source])
    check_layer_specs(layers)
    if draw_layers is None:
        raise ValueError(
            "Invalid value for argument `draw_layers`: received None. Pass 'auto' (the "
            "default), 'all', or the layers to draw; images=False draws none."
        )
    if not (isinstance(draw_layers, str) and draw_layers in ("auto", "all")):
        check_layer_specs(draw_layers, argument="draw_layers")
    if flag("sharpness", sharpness) and stats_labels is None:
        raise ValueError(
            "Invalid value for argument `sharpness`: it is the loss's curvature, so it needs "
            "labels. Pass `stats_data=(x, y)` (a few hundred labelled samples) with "
            "sharpness=True. Received: sharpness=True without labels in stats_data."
        )
    no_topk = topk == 0 and not isinstance(topk, bool)
    return Settings(
        probe_source=probe_source,
        stats_source=stats_source,
        stats_labels=stats_labels,
        log_dir=check_log_dir(log_dir, check_storage_options(storage_options)),
        layers=layers,
        every_n_epochs=None if batches is not None else (epochs or 1),
        every_n_batches=batches,
        on_alert=on_alert,
        stop_on_dead_fraction=None
        if stop_on_dead_fraction is None
        else fraction("stop_on_dead_fraction", stop_on_dead_fraction, low_open=True, optional=True),
        dead_alert_fraction=fraction("dead_alert_fraction", dead_alert_fraction, low_open=True),
        patience=positive_int("patience", patience, allow_none=False) or 1,
        max_filters=positive_int("max_filters", max_filters, allow_none=False) or 64,
        dormant_threshold=fraction("dormant_threshold", dormant_threshold, low_open=False),
        preprocess=None if vocabulary is not None else preprocess,
        images=flag("images", images),
        draw_layers=draw_layers,
        log_per_layer=flag("log_per_layer", log_per_layer),
        histograms=flag("histograms", histograms),
        feature_rank=stats_source is not None
        if feature_rank is None
        else flag("feature_rank", feature_rank),
        topk=0 if no_topk else positive_int("topk", topk, allow_none=False) or 0,
        outlier_ratio=check_outlier_ratio(outlier_ratio),
        update_ratio_bounds=bounds(update_ratio_bounds),
        revive=check_revive(revive),
        sharpness=bool(sharpness),
        arguments=arguments,
        vocabulary=vocabulary,
        hparams=check_hparams(hparams),
        storage_options=storage_options,
        upload_interval=positive_float("upload_interval", upload_interval),
    )


def check_storage_options(value: Any) -> Mapping[str, Any] | None:
    """`storage_options`: None or a dict of fsspec arguments (endpoint, credentials)."""
    if value is not None and not isinstance(value, Mapping):
        raise TypeError(
            "Invalid value for argument `storage_options`. Expected None or a dict of fsspec "
            "arguments, e.g. {'endpoint_url': 'http://127.0.0.1:9000'}. Received: "
            f"storage_options={value!r}"
        )
    return value


def positive_float(name: str, value: Any) -> float:
    """`value` as a finite number > 0; a ValueError or TypeError otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"Invalid value for argument `{name}`. Expected a number of seconds > 0. "
            f"Received: {name}={value!r}"
        )
    if not 0 < float(value) < float("inf"):
        raise ValueError(
            f"Invalid value for argument `{name}`. Expected a number of seconds > 0. "
            f"Received: {name}={value!r}"
        )
    return float(value)


def sources(value: Any, preprocess: Any, argument: str) -> ProbeSource:
    """Probes or statistics samples read: strings tokenized by a tokenizer `preprocess`
    (`actwatch.check.text_probes`), anything else as `read_probe_source` reads it."""
    check_strings(value, preprocess, argument)
    text = read_text_probes(value, preprocess, argument)
    return text if text is not None else read_probe_source(value, argument)


#: The monitor's constructor arguments (`settings`' keywords): settable as its attributes.
ARGUMENTS = frozenset(inspect.signature(settings).parameters)


def given(values: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor's arguments out of its `locals()`, for `settings(**given(...))`."""
    return {name: values[name] for name in ARGUMENTS}


def revised(current: Settings, name: str, value: Any) -> Settings:
    """`current` with the argument `name` set to `value`, every argument checked again as
    the constructor checks them (the same ValueError or TypeError for a wrong value, or
    for a combination it refuses, e.g. `every_n_batches` while `every_n_epochs` is set)."""
    if name not in ARGUMENTS:
        raise AttributeError(f"{name!r} is not an argument of ActivationMonitor")
    return settings(**{**current.arguments, name: value})


def bounds(value: Any) -> tuple[float, float] | None:
    """`update_ratio_bounds`: None, or `(low, high)` with `0 <= low < high`."""
    if value is None:
        return None
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        low = high = float("nan")
    if not (0 <= low < high < float("inf")):
        raise ValueError(
            "Invalid value for argument `update_ratio_bounds`. Expected None or (low, high) "
            f"with 0 <= low < high, e.g. (1e-5, 1e-1). Received: update_ratio_bounds={value!r}"
        )
    return (low, high)


def labels(given: tuple[Any, Any], size: int) -> tuple[Any, Any]:
    """`(y, sample_weight)` of `stats_data=(x, y[, sample_weight])`, checked against x."""
    y, weight = given
    y = keras.tree.map_structure(np.asarray, y)
    for name, value in (("y", y), ("sample_weight", weight)):
        for leaf in keras.tree.flatten(value) if value is not None else []:
            length = np.shape(leaf)[0] if np.ndim(leaf) else None
            if length != size:
                raise ValueError(
                    f"Invalid value for argument `stats_data`: {name} has {length} samples "
                    f"but x has {size}. Pass `stats_data=(x, y)` or `(x, y, sample_weight)` "
                    "with one label (and weight) per sample of x."
                )
    return y, None if weight is None else np.asarray(weight)
