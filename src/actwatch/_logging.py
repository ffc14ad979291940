"""The `actwatch` logger, and the "warn once, then DEBUG" pattern for repeated failures."""

from __future__ import annotations

import logging
import threading

__all__ = ["WarnOnce", "logger"]

logger = logging.getLogger("actwatch")


class WarnOnce:
    """Log the first occurrence of a recurring problem at WARNING and later ones at DEBUG.

    A failure that repeats at every check (a full disk, a broken hook) should be said once,
    clearly, with its traceback, and not flood the training log. `message` is the text of the
    first warning and should tell the user that later occurrences go to DEBUG. Thread-safe.

    Args:
        debug_message: the short text of later occurrences (logged at DEBUG).
    """

    def __init__(self, debug_message: str) -> None:
        self.debug_message = debug_message
        self.count = 0
        self._lock = threading.Lock()

    def __call__(self, message: str, *args: object, exc: BaseException | None = None) -> None:
        """Log `message % args` at WARNING the first time, `debug_message` at DEBUG after."""
        with self._lock:
            self.count += 1
            first = self.count == 1
        if first:
            logger.warning(message, *args, exc_info=exc)
        else:
            logger.debug(self.debug_message, exc_info=exc)

    def reset(self) -> None:
        """Warn again at the next occurrence (a new training run)."""
        with self._lock:
            self.count = 0
