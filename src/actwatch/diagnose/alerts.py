"""Alerts: the one `Alert` type, and the words of every alert actwatch raises.

Each function here builds one kind of alert from what a check found; the decisions (memory
across checks, thresholds, the stop) are in `actwatch.diagnose.memory`,
`actwatch.diagnose.updates` and `actwatch.diagnose.revive`. A message says what was seen, what
it means and what to do about it, in plain text (logged at WARNING); `Alert.markdown` is the
same text for TensorBoard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

__all__ = ["Alert", "AlertKind", "Decision", "dead", "nonfinite", "outlier", "revived"]

AlertKind = Literal["dead", "nonfinite", "learning_rate", "revived", "outlier"]


@dataclass(frozen=True)
class Alert:
    """One event worth a human's attention.

    Attributes:
        kind: `"dead"` (filters newly confirmed dead), `"nonfinite"` (NaN/Inf outputs),
            `"learning_rate"` (update-to-weight ratios out of bounds: `count` layers of
            `total`, `layer` the worst one) or `"revived"` (`filters` of `layer` re-initialised
            by `revive="redo"`).
        layer: the layer's path.
        step: the TensorBoard step of the check.
        epoch: the epoch (0-based, as Keras counts) of the check, or None before training.
        filters: indices of the filters this alert is about (the newly dead ones).
        dead_filters: indices of all filters of the layer that are dead at this check.
        died_since_last_check: those of `filters` that were alive at the previous check.
        count: for "dead", how many filters are dead now; for "nonfinite", how many values.
        total: the layer's number of filters; for "nonfinite", of values looked at.
        fraction: `count / total`.
        learning_rate: the optimizer's learning rate at the check, when known.
        message: the plain-text message logged at WARNING.
    """

    kind: AlertKind
    layer: str
    step: int
    epoch: int | None
    filters: tuple[int, ...]
    dead_filters: tuple[int, ...]
    died_since_last_check: tuple[int, ...]
    count: int
    total: int
    fraction: float
    learning_rate: float | None
    message: str

    def markdown(self) -> str:
        """The message as Markdown, for TensorBoard's text dashboard."""
        return self.message.replace(f"'{self.layer}'", f"`{self.layer}`")


@dataclass(frozen=True)
class Decision:
    """What one check decided: its alerts, and whether to stop training (and why)."""

    alerts: tuple[Alert, ...]
    stop_reason: str | None
    revived: Mapping[str, tuple[int, ...]] = field(default_factory=dict)


def indices(mask: np.ndarray) -> tuple[int, ...]:
    """The indices where `mask` is true, as plain ints."""
    return tuple(int(i) for i in np.flatnonzero(mask))


def short(items: Sequence[int], limit: int = 16) -> str:
    """`[0, 1, ...]`: at most `limit` indices."""
    shown = ", ".join(str(i) for i in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}]"


def when(step: int, epoch: int | None) -> str:
    """The check an alert is about, as its message begins."""
    return f"Step {step} (before training)" if epoch is None else f"Epoch {epoch + 1} (step {step})"


def _lr(learning_rate: float | None) -> str:
    return f" (current learning rate: {learning_rate:.4g})" if learning_rate is not None else ""


def first_seen(epoch: int | None, initial_epoch: int, lead: str = "They") -> str:
    """What is known of when filters dead since a layer's first check died."""
    if epoch is None:
        return (
            f"{lead} were dead at the first check: before training, that points at the "
            "initialization or the scaling of the inputs rather than the learning rate."
        )
    if initial_epoch > 0:
        return (
            f"{lead} were already dead at the first check of this run, which resumed at "
            f"epoch {initial_epoch + 1} (initial_epoch={initial_epoch}) without "
            "a check before its first batch: when and why they died is not known from "
            "this run; the alerts of the run before it may tell."
        )
    return (
        f"{lead} were already dead at the first check of this layer that succeeded (the "
        "earlier ones failed): when they died is not known."
    )


def dead(
    layer: str,
    filters: int,
    *,
    dead: tuple[int, ...],
    new: tuple[int, ...],
    died_now: tuple[int, ...],
    earlier_steps: Sequence[int],
    earlier_count: int,
    at_first: int,
    first_epoch: int | None,
    initial_epoch: int,
    step: int,
    epoch: int | None,
    learning_rate: float | None,
) -> Alert:
    """`new` filters of `layer` (of `filters`) newly confirmed dead; `dead` are all its dead
    ones. Of `new`, `died_now` died since the last check, `earlier_count` at the checks
    `earlier_steps`, `at_first` were dead at the layer's first check."""
    parts = []
    if died_now:
        parts.append(f"{len(died_now)} of them died since the last check")
    if earlier_count:
        shown = ", ".join(str(x) for x in earlier_steps[:4])
        more = ", ..." if len(earlier_steps) > 4 else ""
        parts.append(f"{earlier_count} had been dead since an earlier check (step {shown}{more})")
    sentences = []
    if parts:
        sentences.append(
            ", ".join(parts)
            + f". The usual cause is a learning rate that is too high{_lr(learning_rate)}."
        )
    if at_first:
        lead = "They" if not parts else f"The other {at_first}"
        sentences.append(first_seen(first_epoch, initial_epoch, lead))
    history = " ".join(sentences)
    history = history[0].upper() + history[1:]
    fraction = len(dead) / max(filters, 1)
    message = (
        f"{when(step, epoch)}: {len(new)} filter(s) of layer '{layer}' are dead: "
        f"{short(new)}. The layer now has {len(dead)} of {filters} filters dead "
        f"({fraction:.1%}). A dead filter outputs <= 0 for every sample, so it gets no "
        f"gradient and stops learning. {history}"
    )
    return _alert(
        "dead",
        layer,
        message,
        count=len(dead),
        total=filters,
        step=step,
        epoch=epoch,
        learning_rate=learning_rate,
        filters=new,
        dead=dead,
        died=died_now,
    )


def _alert(
    kind: AlertKind,
    layer: str,
    message: str,
    *,
    count: int,
    total: int,
    step: int,
    epoch: int | None,
    learning_rate: float | None,
    filters: tuple[int, ...] = (),
    dead: tuple[int, ...] = (),
    died: tuple[int, ...] = (),
    fraction: float | None = None,
) -> Alert:
    """An `Alert`; `fraction` is `count / total` unless given."""
    return Alert(
        kind=kind,
        layer=layer,
        step=step,
        epoch=epoch,
        filters=filters,
        dead_filters=dead,
        died_since_last_check=died,
        count=count,
        total=total,
        fraction=count / max(total, 1) if fraction is None else fraction,
        learning_rate=learning_rate,
        message=message,
    )


def outlier(
    layer: str,
    *,
    max_abs: float,
    ratio: float,
    limit: float,
    dead: tuple[int, ...],
    step: int,
    epoch: int | None,
    learning_rate: float | None,
) -> Alert:
    """`layer`'s `max |a| / median |a|` passed `outlier_ratio=limit` (Sun et al. 2024)."""
    message = (
        f"{when(step, epoch)}: layer '{layer}' has a massive activation: max |a| = "
        f"{max_abs:.4g} is {ratio:.0f}x its median |a| (outlier_ratio={limit:g}). "
        "Massive activations (Sun et al. 2024) act as fixed biases and can destabilise "
        "training; look for a learning rate that is too high or unnormalised inputs."
    )
    return _alert(
        "outlier",
        layer,
        message,
        dead=dead,
        count=round(ratio),
        total=1,
        fraction=0.0,
        step=step,
        epoch=epoch,
        learning_rate=learning_rate,
    )


def nonfinite(
    layer: str,
    *,
    count: int,
    values: int,
    later_layers: int,
    dead: tuple[int, ...],
    step: int,
    epoch: int | None,
    learning_rate: float | None,
) -> Alert:
    """`layer` (the first watched one, `later_layers` more) produced `count` NaN/Inf."""
    also = f"; {later_layers} later watched layers too" if later_layers else ""
    message = (
        f"{when(step, epoch)}: layer '{layer}' produced {count} non-finite (NaN or Inf) "
        f"values{also}. Training has probably diverged: lower the learning "
        f"rate{_lr(learning_rate)} or check the inputs."
    )
    return _alert(
        "nonfinite",
        layer,
        message,
        dead=dead,
        count=count,
        total=values,
        step=step,
        epoch=epoch,
        learning_rate=learning_rate,
    )


def revived(
    revived_filters: Mapping[str, tuple[int, ...]],
    totals: Mapping[str, int],
    *,
    patience: int,
    step: int,
    epoch: int | None,
    learning_rate: float | None,
) -> tuple[Alert, ...]:
    """One alert per layer whose filters `revive="redo"` re-initialised (`totals`: filters
    of each layer)."""
    return tuple(
        _alert(
            "revived",
            path,
            f"{when(step, epoch)}: revive='redo' re-initialised {len(filters)} filter(s) of "
            f"layer '{path}' that stayed dead for {patience} check(s): {short(filters)}. Their "
            "incoming weights are fresh, their bias and outgoing weights zero, so the network's "
            "output is unchanged now.",
            count=len(filters),
            total=int(totals[path]),
            step=step,
            epoch=epoch,
            learning_rate=learning_rate,
            filters=filters,
            dead=filters,
        )
        for path, filters in revived_filters.items()
    )
