"""actwatch: watch a CNN's activations while it trains.

`ActivationMonitor` is a Keras callback that writes filter grids, heatmaps, sparsity and
dead-filter statistics to TensorBoard and alerts when filters die. The notebook functions
(`get_activations`, `activation_stats`, `plot_filters`, `plot_heatmaps`) give one-off looks at
any model with the same code. `actwatch.report.write_report` writes the offline HTML report
from the event files.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actwatch import report as report  # the documented `actwatch.report.write_report`
    from actwatch._warnings import ActwatchWarning
    from actwatch.check.stats import LayerStats
    from actwatch.diagnose.alerts import Alert
    from actwatch.fit.callback import ActivationMonitor
    from actwatch.notebook import (
        activation_stats,
        get_activations,
        get_gradients,
        plot_filters,
        plot_heatmaps,
    )

# The public names load on first use (PEP 562), so `import actwatch` does not import Keras and
# its backend: the `actwatch` command (cli.py) quiets TensorFlow's C++ start-up log before
# Keras loads TensorFlow. `from actwatch import ActivationMonitor` works as usual.
_HOMES = {
    "ActivationMonitor": ".fit.callback",
    "ActwatchWarning": "._warnings",
    "Alert": ".diagnose.alerts",
    "LayerStats": ".check.stats",
    "activation_stats": ".notebook",
    "get_activations": ".notebook",
    "get_gradients": ".notebook",
    "plot_filters": ".notebook",
    "plot_heatmaps": ".notebook",
}


def __getattr__(name: str) -> Any:
    if name == "report":
        return importlib.import_module(".report", __name__)
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES, "report"})


__version__ = "0.2.0"

__all__ = [
    "ActivationMonitor",
    "ActwatchWarning",
    "Alert",
    "LayerStats",
    "__version__",
    "activation_stats",
    "get_activations",
    "get_gradients",
    "plot_filters",
    "plot_heatmaps",
]
