"""A transformer's alerts -- attention-logit growth, attention collapse, massive
activations -- and the memory across checks they need.

At learning rates that are too high, the largest attention logit `|q . k| / sqrt(d)` of a
transformer grows check after check, attention entropy collapses, then the loss diverges
(Dehghani et al. 2023, ViT-22B; Wortsman et al. 2023, "Small-scale proxies for large-scale
Transformer training instabilities", arXiv 2309.14322, who reproduce it in small models and
prevent it with QK-layernorm). Measured here (benchmarks/attention_logits.py, a 2-block
pre-LN LM): it stays near 10 at lr 1e-3 and reaches thousands at 3e-2.

`LogitWatch.update` raises, per layer, once until the condition clears:
- `"logit_growth"`: an attention layer whose `attention_logit_max` is above `LOGIT_LIMIT` and
  at least `LOGIT_GROWTH` times what it was at the previous check;
- `"attention_collapse"`: an attention layer whose lowest head's entropy
  (`attention_entropy_min`, in [0, 1]) fell below `COLLAPSE_ENTROPY` (the head puts nearly
  all its weight on one key; not for a layer already there at its first check), or whose
  mean entropy fell below `COLLAPSE_FALL` times what it was at the previous check (and below
  `COLLAPSE_BELOW`): entropy collapse (Zhai et al., ICML 2023), which follows logit growth;
- `"massive_activation"`: a block output where Sun et al.'s (2024) rule holds (`|a| > 100` and
  more than 1,000 times the median `|a|`: `massive_activation` 1), with the sample, token and
  channel where it sits (`LayerStats.peak_at`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actwatch.diagnose.alerts import Alert, _alert, _lr, when

__all__ = [
    "COLLAPSE_BELOW",
    "COLLAPSE_ENTROPY",
    "COLLAPSE_FALL",
    "LOGIT_GROWTH",
    "LOGIT_LIMIT",
    "LogitWatch",
    "attention_collapse",
    "logit_growth",
    "massive_activation",
]

#: Attention logits above this are large: Gemma 2 soft-caps them at 50 (tanh), and a
#: healthy small model stays near 10.
LOGIT_LIMIT = 50.0
#: ... and growing: at least this factor since the previous check.
LOGIT_GROWTH = 1.5

#: A head whose mean normalised entropy is below this puts nearly all its weight on one key
#: at every query: at 0.02, a head over 32 keys gives its top key about 0.99 of the weight.
#: A healthy 2-block LM learning a Markov chain (whose best attention is the previous token)
#: stays above 0.04 at lr 1e-2 (benchmarks/attention_logits.py). A layer whose lowest head is
#: already below it at its first check (a pretrained model's sink heads) is left to the fall.
COLLAPSE_ENTROPY = 0.02
#: ... or the layer's mean entropy fell below this fraction of the previous check's ...
COLLAPSE_FALL = 0.5
#: ... and is below this (a fall from 1.0, uniform attention at initialisation, to 0.3 is
#: learning, not collapse: a healthy LM's fastest fall in benchmarks/attention_logits.py).
COLLAPSE_BELOW = 0.1

_METRIC = "attention_logit_max"
_WHAT_TO_DO = (
    "Lower the learning rate or add warmup; normalise queries and keys (QK-layernorm) or add "
    "a z-loss; soft-capping the logits (Gemma 2 caps them at 50) also bounds them."
)


def logit_growth(
    layer: str,
    *,
    value: float,
    previous: float,
    step: int,
    epoch: int | None,
    learning_rate: float | None,
    limit: float = LOGIT_LIMIT,
) -> Alert:
    """`layer`'s largest attention logit passed `limit` and grew since the last check."""
    message = (
        f"{when(step, epoch)}: attention layer '{layer}': the largest attention logit "
        f"|q.k|/sqrt(d) grew from {previous:.4g} to {value:.4g} since the last check (above "
        f"{limit:g}){_lr(learning_rate)}. Growing attention logits come before attention "
        "entropy collapse and loss divergence when the learning rate is too high (Wortsman "
        f"et al. 2023, arXiv 2309.14322). {_WHAT_TO_DO}"
    )
    return _alert(
        "logit_growth",
        layer,
        message,
        count=round(value),
        total=1,
        fraction=value / previous if previous > 0 else 0.0,
        step=step,
        epoch=epoch,
        learning_rate=learning_rate,
    )


def attention_collapse(
    layer: str,
    *,
    lowest: float,
    mean: float,
    previous: float | None,
    step: int,
    epoch: int | None,
    learning_rate: float | None,
) -> Alert:
    """`layer`'s attention entropy collapsed: a head near 0, or a sharp fall since the last
    check (`previous` is the layer's mean entropy then)."""
    fell = f", down from {previous:.3g} at the previous check" if previous is not None else ""
    message = (
        f"{when(step, epoch)}: attention layer '{layer}': attention entropy collapsed: its "
        f"lowest head's is {lowest:.3g} and the heads' mean {mean:.3g}{fell} (1 is uniform "
        f"attention, 0 all weight on one key){_lr(learning_rate)}. A head whose entropy "
        "falls to 0 attends to a single key whatever the input; when it follows growing "
        "attention logits it comes before the loss diverges (entropy collapse, Zhai et al. "
        f"2023; Wortsman et al. 2023). {_WHAT_TO_DO}"
    )
    return _alert(
        "attention_collapse",
        layer,
        message,
        count=0,
        total=1,
        fraction=lowest,
        step=step,
        epoch=epoch,
        learning_rate=learning_rate,
    )


def massive_activation(
    layer: str,
    *,
    max_abs: float | None,
    ratio: float | None,
    where: tuple[int, int, int] | None,
    step: int,
    epoch: int | None,
    learning_rate: float | None,
) -> Alert:
    """`layer` (a block's output) holds a massive activation (Sun et al. 2024's rule)."""
    value = f" |a| = {max_abs:.4g}" if max_abs is not None else " one"
    times = f", {ratio:.0f}x the median |a|" if ratio else ""
    place = (
        f" at token {where[1]}, channel {where[2]} (sample {where[0]})" if where is not None else ""
    )
    message = (
        f"{when(step, epoch)}: block '{layer}' has a massive activation:{value}{place}{times} "
        f"(above 100 and 1000x the median){_lr(learning_rate)}. A few huge values in one "
        "channel of one token (often the first) act as a fixed bias that attention sinks "
        "onto (Sun et al. 2024); growing ones destabilise training and low-precision "
        f"inference. {_WHAT_TO_DO}"
    )
    return _alert(
        "massive_activation",
        layer,
        message,
        count=round(max_abs or 0.0),
        total=1,
        fraction=0.0,
        step=step,
        epoch=epoch,
        learning_rate=learning_rate,
    )


class LogitWatch:
    """A transformer's figures across checks and their alerts (module docstring).

    Args:
        limit: logits above this are large. Defaults to `LOGIT_LIMIT`.
        growth: the factor since the previous check that counts as growing. Defaults to
            `LOGIT_GROWTH`.
        collapse: a head's entropy below this is collapsed. Defaults to `COLLAPSE_ENTROPY`.
    """

    def __init__(
        self,
        limit: float = LOGIT_LIMIT,
        growth: float = LOGIT_GROWTH,
        collapse: float = COLLAPSE_ENTROPY,
    ) -> None:
        self.limit = limit
        self.growth = growth
        self.collapse = collapse
        self._last: dict[str, float] = {}
        self._alerted: set[str] = set()
        self._entropy: dict[str, float] = {}
        self._collapsed: set[str] = set()
        self._sharp_at_start: set[str] = set()  # lowest head already collapsed at 1st check
        self._massive: set[str] = set()

    def update(
        self,
        stats: Mapping[str, Any],
        *,
        step: int,
        epoch: int | None,
        learning_rate: float | None,
    ) -> tuple[Alert, ...]:
        """One check's `LayerStats` by path; the alerts it raises."""
        at = {"step": step, "epoch": epoch, "learning_rate": learning_rate}
        alerts = []
        for path, s in stats.items():
            figures = getattr(s, "transformer", None) or {}
            alerts.extend(self._collapse(path, figures, at))
            alerts.extend(self._massive_activation(path, s, figures, at))
            if _METRIC not in figures:
                continue
            value = float(figures[_METRIC])
            previous = self._last.get(path)
            self._last[path] = value
            if not value > self.limit:  # NaN counts as not above: the nonfinite alert says it
                self._alerted.discard(path)
                continue
            if previous is None or path in self._alerted or value < self.growth * previous:
                continue
            self._alerted.add(path)
            alerts.append(
                logit_growth(
                    path,
                    value=value,
                    previous=previous,
                    step=step,
                    epoch=epoch,
                    learning_rate=learning_rate,
                    limit=self.limit,
                )
            )
        return tuple(alerts)

    def _collapse(self, path: str, figures: Mapping[str, float], at: Any) -> list[Alert]:
        if "attention_entropy_min" not in figures or "attention_entropy" not in figures:
            return []
        lowest = float(figures["attention_entropy_min"])
        mean = float(figures["attention_entropy"])
        previous = self._entropy.get(path)
        self._entropy[path] = mean
        if previous is None and lowest < self.collapse:
            self._sharp_at_start.add(path)
        head = lowest < self.collapse and path not in self._sharp_at_start
        fell = previous is not None and mean < COLLAPSE_FALL * previous and mean < COLLAPSE_BELOW
        if not (head or fell):  # NaN: not collapsed (the nonfinite alert)
            self._collapsed.discard(path)
            return []
        if path in self._collapsed:
            return []
        self._collapsed.add(path)
        shown = previous if fell else None
        return [attention_collapse(path, lowest=lowest, mean=mean, previous=shown, **at)]

    def _massive_activation(
        self, path: str, s: Any, figures: Mapping[str, float], at: Any
    ) -> list[Alert]:
        if not figures.get("massive_activation", 0.0) > 0.5:
            self._massive.discard(path)
            return []
        if path in self._massive:
            return []
        self._massive.add(path)
        where = getattr(s, "peak_at", None)
        max_abs = getattr(s, "max_abs", None)
        ratio = getattr(s, "outlier_ratio", None)
        return [massive_activation(path, max_abs=max_abs, ratio=ratio, where=where, **at)]
