"""The CPU priority of actwatch's background threads (Linux)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading

__all__ = ["PRIORITIES", "set_thread_priority"]

#: CPU priorities of the background thread on Linux: "idle" (SCHED_IDLE: it runs only when a
#: core would otherwise be idle, so it never slows training down), "nice" (niceness 10: a
#: small share of a busy core) or "normal".
PRIORITIES = ("idle", "nice", "normal")


def set_thread_priority(priority: str) -> None:
    """Set the calling thread's CPU priority to one of `PRIORITIES` (Linux only).

    Training threads of a CPU run keep every core busy and wait for their slowest shard: even
    a niced thread that takes a core for a few milliseconds stalls them. With SCHED_IDLE the
    writer gets a core only when nothing else wants it (between steps, while data loads),
    which is all a few images per check need; images wait in memory meanwhile. Elsewhere, or
    where the call is refused, the thread keeps the normal priority.
    """
    if not sys.platform.startswith("linux") or priority == "normal":
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError, AttributeError):
        if priority == "idle":
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        else:
            os.setpriority(os.PRIO_PROCESS, tid, 10)
