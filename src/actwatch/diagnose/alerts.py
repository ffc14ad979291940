"""Alerts: the one `Alert` type, and the words of every alert actwatch raises.

Each function here builds one kind of alert from what a check found; the decisions (memory
across checks, thresholds, the stop) are in `actwatch.diagnose.memory`,
`actwatch.diagnose.verdicts` and `actwatch.diagnose.revive`. A message says what was seen, what
it means and what to do about it, in plain text (logged at WARNING); `Alert.markdown` is the
same text for TensorBoard.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from actwatch.diagnose.evidence import LossTrend
    from actwatch.diagnose.verdicts import RateFacts

__all__ = [
    "Alert",
    "AlertKind",
    "Decision",
    "dead",
    "learning_rate",
    "nonfinite",
    "outlier",
    "revived",
]

_Transformer = Literal["logit_growth", "attention_collapse", "massive_activation"]
AlertKind = Literal["dead", "nonfinite", "learning_rate", "revived", "outlier", _Transformer]


@dataclass(frozen=True)
class Alert:
    """One event worth a human's attention.

    Attributes:
        kind: `"dead"` (filters newly confirmed dead), `"nonfinite"` (NaN/Inf outputs),
            `"learning_rate"` (update-to-weight ratios out of bounds: `count` layers of
            `total`, `layer` the worst one) or `"revived"` (`filters` of `layer` re-initialised
            by `revive="redo"`); transformers' kinds: `actwatch.diagnose.attention`.
        layer: the layer's path.
        step: the TensorBoard step of the check.
        epoch: the epoch (0-based, as Keras counts) of the check, or None before training.
        filters: indices of the filters this alert is about (the newly dead ones).
        dead_filters: indices of all filters of the layer that are dead at this check.
        died_since_last_check: those of `filters` that were alive at the previous check.
        count: for "dead", how many filters are dead now; for "nonfinite", how many values.
        total: the layer's number of filters; for "nonfinite", of values looked at.
        fraction: `count / total`.
        learning_rate: the learning rate at the check (for "learning_rate", of the step measured).
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


def _loss(loss: LossTrend | None) -> str:
    if loss is None:
        return "the loss is not known"
    if loss.at_chance:
        return f"the loss {loss.latest:.4g} is no better than chance ({loss.chance:.4g})"
    return f"the loss went only from {loss.previous:.4g} to {loss.latest:.4g}"


def _move(facts: RateFacts, verb: str) -> str:
    """`raise it 10x, to about 0.01`, with what the family usually trains at, or why not."""
    lr, target, usual = facts.learning_rate, facts.target, facts.usual
    if lr is None or target is None:
        if verb == "raise" and lr and usual:
            return f"do not raise it: it is at the top of the usual range of {usual[0]}"
        return f"{verb} the learning rate"
    note = ""
    if usual is not None and (not usual[1] <= target < usual[2] or lr > usual[2]):
        note = f" ({usual[0]} usually trains at {usual[1]:g} to {usual[2]:g})"
    times = target / lr if verb == "raise" else lr / target
    return f"{verb} it {times:.2g}x, to about {target:g}{note}, then check again"


def learning_rate(
    verdict: Literal["high", "dead", "stuck", "low", "cut"],
    out: Mapping[str, float],
    facts: RateFacts,
    *,
    step: int,
    epoch: int | None,
) -> Alert:
    """The `learning_rate` alert for layers whose update ratios stayed `out` of bounds."""
    typical = sorted(out.values())[len(out) // 2]
    names = ", ".join(f"'{p}' {r:.3g}" for p, r in list(out.items())[:8]) + ", ..." * (len(out) > 8)
    lr = f"{facts.learning_rate:.4g}" if facts.learning_rate is not None else "unknown"
    after = f" (measured at step {facts.measured_step})" if facts.measured_step is not None else ""
    size = f"{typical:.0%}" if typical >= 0.01 else f"{typical * 100:.1g}%"
    bound = f"above {facts.high:g}" if verdict == "high" else f"below {facts.low:g}"
    layers = f"{len(out)} of {facts.measured} layers with weights"
    moved = f"moved the weights of {layers} by about {size} of their size"
    moved = moved if math.isfinite(typical) else f"made the weights of {layers} NaN or Inf"
    seen = (
        f"one training step{after} {moved if typical else f'left {layers} unchanged'} (update-"
        f"to-weight ratio ||dW||/||W|| {bound}: {names}; about {facts.healthy:.2g} is healthy)"
    )
    if verdict == "high":
        text = (
            f"the learning rate is too high (current: {lr}): {seen}. Steps this large overshoot, "
            f"kill ReLU units and make the loss jump: {_move(facts, 'lower')}."
        )
    elif verdict == "dead":
        why = [f"{facts.dead[1]:.0%} of '{facts.dead[0]}' dead"] if facts.dead else []
        if facts.largest is not None:
            why.append(f"a ratio of {facts.largest[0]:.3g} at step {facts.largest[1]}")
        if facts.loss is not None and facts.loss.at_chance:
            why.append(f"the loss {facts.loss.latest:.4g} is at chance")
        text = (
            f"the learning rate was too high (current: {lr}) and the units died: {seen}. They "
            f"stopped after steps that were too large ({'; '.join(why) or 'no gradient'}). A "
            "higher learning rate will not revive them: restart from before the jump, or from "
            f"scratch, with a lower one: {_move(facts, 'lower')}."
        )
    elif verdict == "stuck":
        text = f"{seen}, although the learning rate is {lr}, and {_loss(facts.loss)}. No gradient "
        text += "reaches these layers (dead units, stop_gradient): the rate is not the cause."
    else:
        if verdict == "cut":
            lead = f"the learning rate is now {lr}, below the {facts.top_rate or 0:g} of earlier "
            lead += "in this fit (a schedule or a callback lowered it)"
            what = "If that was on purpose (to anneal or to freeze the weights), this is what it "
            what += f"does; if not, {_move(facts, 'raise')}."
        else:
            lead = f"the learning rate is too low (current: {lr})"
            bears = f"the sharpness is at {facts.edge or 0:.0%} of what the rate bears: "
            edge = bears if facts.edge is not None else ""
            smaller = f"{facts.healthy / typical:.0f}x smaller" if typical > 0 else "smaller"
            what = f"Steps {smaller} than healthy ones hold back "
            what += f"training: {edge}{_move(facts, 'raise')}."
        text = f"{lead}: {seen}, and {_loss(facts.loss)}. {what}"
    return _alert(
        "learning_rate",
        max(out, key=out.__getitem__) if verdict == "high" else min(out, key=out.__getitem__),
        f"{when(step, epoch)}: {text}",
        count=len(out),
        total=facts.measured,
        step=step,
        epoch=epoch,
        learning_rate=facts.learning_rate,
    )
