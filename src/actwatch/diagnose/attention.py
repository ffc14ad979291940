"""Attention-logit growth: the alert, and the memory across checks it needs.

At learning rates that are too high, the largest attention logit `|q . k| / sqrt(d)` of a
transformer grows check after check, attention entropy collapses, then the loss diverges
(Dehghani et al. 2023, ViT-22B; Wortsman et al. 2023, "Small-scale proxies for large-scale
Transformer training instabilities", arXiv 2309.14322, who reproduce it in small models and
prevent it with QK-layernorm). Measured here (benchmarks/attention_logits.py, a 2-block
pre-LN LM): it stays near 10 at lr 1e-3 and reaches thousands at 3e-2.

`LogitWatch.update` raises a `"logit_growth"` alert for an attention layer whose
`attention_logit_max` is above `LOGIT_LIMIT` and at least `LOGIT_GROWTH` times what it was at
the previous check; once per layer until it falls back to or below the limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actwatch.diagnose.alerts import Alert, _alert, _lr, when

__all__ = ["LOGIT_GROWTH", "LOGIT_LIMIT", "LogitWatch", "logit_growth"]

#: Attention logits above this are large: Gemma 2 soft-caps them at 50 (tanh), and a
#: healthy small model stays near 10.
LOGIT_LIMIT = 50.0
#: ... and growing: at least this factor since the previous check.
LOGIT_GROWTH = 1.5

_METRIC = "attention_logit_max"


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
        "et al. 2023, arXiv 2309.14322). Lower the learning rate or add warmup; normalise "
        "queries and keys (QK-layernorm) or add a z-loss; soft-capping the logits (Gemma 2 "
        "caps them at 50) also bounds them."
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


class LogitWatch:
    """The largest attention logit of each attention layer across checks (module docstring).

    Args:
        limit: logits above this are large. Defaults to `LOGIT_LIMIT`.
        growth: the factor since the previous check that counts as growing. Defaults to
            `LOGIT_GROWTH`.
    """

    def __init__(self, limit: float = LOGIT_LIMIT, growth: float = LOGIT_GROWTH) -> None:
        self.limit = limit
        self.growth = growth
        self._last: dict[str, float] = {}
        self._alerted: set[str] = set()

    def update(
        self,
        stats: Mapping[str, Any],
        *,
        step: int,
        epoch: int | None,
        learning_rate: float | None,
    ) -> tuple[Alert, ...]:
        """One check's `LayerStats` by path; the alerts of the layers whose logits grew."""
        alerts = []
        for path, s in stats.items():
            figures = getattr(s, "transformer", None) or {}
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
