"""The report's progress bar: one line on stderr, drawn at most 10 times a second."""

from __future__ import annotations

import time
from typing import TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """A one-line progress bar on stderr, drawn at most 10 times a second."""

    WIDTH = 30

    def __init__(self, total: float, label: str, unit: str, *, stream: TextIO) -> None:
        self.total = max(float(total), 1.0)
        self.label = label
        self.unit = unit
        self.stream = stream
        self.done = 0.0
        self._drawn_at = 0.0

    def advance(self, amount: float) -> None:
        self.done = min(self.total, self.done + amount)
        now = time.monotonic()
        if now - self._drawn_at >= 0.1 or self.done >= self.total:
            self._drawn_at = now
            self._draw()

    def close(self) -> None:
        if self.done < self.total or not self._drawn_at:
            self.done = self.total
            self._draw()
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self) -> None:
        share = self.done / self.total
        filled = round(share * self.WIDTH)
        if self.unit == "MB":
            count = f"{self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB"
        else:
            count = f"{self.done:.0f}/{self.total:.0f} {self.unit}"
        bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r{self.label} [{bar}] {share:4.0%} {count}")
        self.stream.flush()
