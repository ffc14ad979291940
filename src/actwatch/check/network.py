"""Whole-network figures of one check: the watched layers' statistics taken together."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from actwatch.check.stats import LayerStats

__all__ = ["NetworkStats"]


@dataclass(frozen=True)
class NetworkStats:
    """Whole-network figures over all watched layers.

    Fractions of filters are counted over all watched filters (a pooling layer counts its
    filters again), the dead ones over the filters of the layers that are ReLU-like at this
    check (0 when there is none); `zero_fraction`, `hoyer` and `mean` are plain means over
    layers.
    """

    zero_fraction: float
    dead_filters: int
    dead_fraction: float
    dormant_fraction: float
    hoyer: float
    mean: float
    nonfinite: int

    @classmethod
    def of(cls, layers: Mapping[str, LayerStats]) -> NetworkStats:
        items = list(layers.values())
        filters = max(sum(s.filters for s in items), 1)
        relu_like = [s for s in items if s.nonnegative]
        dead = sum(s.dead_count for s in relu_like)
        n = max(len(items), 1)
        return cls(
            zero_fraction=sum(s.zero_fraction for s in items) / n,
            dead_filters=dead,
            dead_fraction=dead / max(sum(s.filters for s in relu_like), 1),
            dormant_fraction=sum(int(s.dormant.sum()) for s in items) / filters,
            hoyer=sum(s.hoyer for s in items) / n,
            mean=sum(s.mean for s in items) / n,
            nonfinite=sum(s.nonfinite for s in items),
        )

    def scalars(self) -> dict[str, float]:
        return {
            "zero_fraction": self.zero_fraction,
            "dead_filters": float(self.dead_filters),
            "dead_fraction": self.dead_fraction,
            "dormant_fraction": self.dormant_fraction,
            "hoyer": self.hoyer,
            "mean": self.mean,
            "nonfinite": float(self.nonfinite),
        }
