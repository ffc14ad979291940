"""actwatch's warning category, so users (and our tests) can filter its warnings."""

from __future__ import annotations

__all__ = ["ActwatchWarning"]


class ActwatchWarning(UserWarning):
    """A recoverable oddity actwatch noticed: monitoring goes on, but something needs a look."""
