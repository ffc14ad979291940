"""TensorBoard HParams data of a run, written without TensorFlow.

Each run's first event holds two HParams summaries, built by TensorBoard's own
`tensorboard.plugins.hparams.summary_v2` (`hparams_pb`, `hparams_config_pb`; not `hparams.api`,
which imports TensorFlow's Keras):

- `_hparams_/session_start_info`: the run's hyperparameters (optimizer, learning rate, batch
  size, epochs, model, parameter count and the user's `hparams={...}`);
- `_hparams_/experiment`: the experiment config, whose metrics are the network-level actwatch
  figures (`METRICS`), so TensorBoard's HParams tab lists and sorts the runs of a sweep by their
  final dead, zero and dormant fraction and update ratio.

TensorBoard's plugin takes the config of the first run it finds; every run writes the same
metrics and the names of its own hyperparameters (give every run of a sweep the same keys).
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2, summary_v2

from actwatch.events import tags

__all__ = ["METRICS", "HParamValue", "check_hparams", "summary_values"]

HParamValue = bool | int | float | str

#: The HParams tab's metrics: `(tag, display name)`, the network-level figures at the last check.
METRICS: tuple[tuple[str, str], ...] = (
    (tags.network_tag("dead_fraction"), "final dead fraction"),
    (tags.network_tag("zero_fraction"), "final zero fraction"),
    (tags.network_tag("dormant_fraction"), "final dormant fraction"),
    (tags.network_tag("update_ratio"), "final update ratio"),
)

_TYPES = {
    bool: api_pb2.DATA_TYPE_BOOL,
    int: api_pb2.DATA_TYPE_FLOAT64,
    float: api_pb2.DATA_TYPE_FLOAT64,
    str: api_pb2.DATA_TYPE_STRING,
}


def check_hparams(value: Any) -> dict[str, HParamValue]:
    """The `hparams` argument as `{name: bool | int | float | str}` (numpy scalars turned into
    Python ones); a TypeError or ValueError that says what is wrong otherwise."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(
            "Invalid value for argument `hparams`. Expected a dict of name -> bool, int, float "
            f"or str, e.g. {{'dropout': 0.1}}. Received: hparams={value!r}"
        )
    out: dict[str, HParamValue] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not name:
            raise TypeError(
                "Invalid value for argument `hparams`: every name must be a non-empty str. "
                f"Received the name {name!r} in hparams={value!r}"
            )
        if isinstance(item, np.generic):
            item = item.item()
        ok = isinstance(item, (bool, str)) or (
            isinstance(item, numbers.Real) and np.isfinite(float(item))
        )
        if not ok:
            raise TypeError(
                f"Invalid value for argument `hparams`: hparams[{name!r}] must be a bool, int, "
                f"finite float or str (what TensorBoard's HParams tab shows). Received: "
                f"{item!r} of type {type(item).__name__}. Pass str(value) to show it as text."
            )
        out[name] = item if isinstance(item, (bool, str)) else _number(item)
    return out


def _number(item: Any) -> int | float:
    return int(item) if isinstance(item, numbers.Integral) else float(item)


def summary_values(
    hparams: Mapping[str, HParamValue], *, start_time: float | None = None
) -> list[summary_pb2.Summary.Value]:
    """The session start info of one run (`hparams`; runs with equal hparams make one session
    group, as TensorBoard groups repeated trials) and the experiment config (those
    hyperparameters' names and types, `METRICS`), as summary values."""
    start = time.time() if start_time is None else start_time
    session = summary_v2.hparams_pb(dict(hparams), start_time_secs=start)
    columns = [summary_v2.HParam(name) for name in sorted(hparams)]
    metrics = [
        summary_v2.Metric(tag, display_name=display, description=tags.describe(tag.split("/")[1]))
        for tag, display in METRICS
    ]
    config = summary_v2.hparams_config_pb(columns, metrics, time_created_secs=start)
    # A type per column: TensorBoard then offers a numeric filter for numbers, not text.
    value = config.value[0]
    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    for info in data.experiment.hparam_infos:
        info.type = _TYPES[type(hparams[info.name])]
    value.metadata.CopyFrom(metadata.create_summary_metadata(data))
    return [*session.value, value]
